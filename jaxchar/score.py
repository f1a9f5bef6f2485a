"""Scores a text under a trained model: `python -m jaxchar.score --workdir=ckpt/moe --data=FILE`.

Mean nats and bits per character and perplexity, by default over the characters with a full
window before them (the validation metric: a run's own validation text gives its validation
loss); needs no training flags.
"""

import sys

from absl import flags

from jaxchar import host, options
from jaxchar.cli import entry_point, run
from jaxchar.core import atomic, corpus
from jaxchar.core.terminal import json_line, shown
from jaxchar.sampling.sampler import checkpoint_header, load_sampler
from jaxchar.scoring import scorer
from jaxchar.scoring.config import ScoreConfig

options.define_flags(ScoreConfig)
FLAGS = flags.FLAGS


def config_from_flags() -> ScoreConfig:
  """The frozen, validated ScoreConfig described by the parsed flags."""
  return options.from_flags(ScoreConfig, FLAGS).validate()


def excluded_warning(excluded: dict[str, int], data: str) -> str:
  """One line naming the characters left out, most frequent first."""
  shown = ", ".join(f"{c!r} x{n:,}" for c, n in list(excluded.items())[:20])
  more = f" and {len(excluded) - 20} more" if len(excluded) > 20 else ""
  return (f"warning: {sum(excluded.values()):,} character(s) of {data} are not in the model's "
          f"vocabulary and were left out (neither scored nor used as context): {shown}{more}.")


def report(figures: dict, sampler, config: ScoreConfig) -> str:
  """The figures as a person reads them."""
  which = (f"every one but the first, the first {figures['maxlen'] - 1} with shorter contexts"
           if figures["from_start"] else
           f"those with a full {figures['maxlen']}-character window before them, as validation "
           "scores; --from_start adds the first ones")
  return "\n".join([
      f"{checkpoint_header(sampler)} in {config.workdir}",
      f"{config.data}: {figures['scored']:,} of {figures['characters']:,} characters scored "
      f"({which})",
      f"{figures['nats_per_char']:.4f} nats per character | {figures['bits_per_char']:.4f} bits "
      f"per character | perplexity {figures['perplexity']:.3f}"])


@entry_point
def main() -> None:
  config = config_from_flags()
  host.keep_freed_memory()
  host.use_cpu_devices(0, config.batch_size)  # scoring batches split over every core
  text = corpus.read_text(config.data)
  sampler = load_sampler(config.workdir, config.step)
  prepared = scorer.prepare(text, sampler.vocab, sampler.lowercase)
  del text
  scorer.check_scorable(prepared, sampler.maxlen, config.from_start, f"--data={config.data}")
  if prepared.excluded:
    print(shown(excluded_warning(prepared.excluded, config.data)), file=sys.stderr, flush=True)
  result = scorer.score(sampler, prepared, config.from_start, config.batch_size,
                        show_progress=True)
  if config.per_char:
    atomic.write_text(config.per_char, scorer.per_char_lines(result), "the per-character scores")
  figures = result.figures()
  if config.as_json:
    print(json_line({"workdir": config.workdir, "step": sampler.step, "data": config.data,
                     **figures}))
  else:
    print(shown(report(figures, sampler, config)))
    if config.per_char:
      print(f"wrote {figures['scored']:,} per-character log-probabilities to {config.per_char}")


if __name__ == "__main__":
  run(main)
