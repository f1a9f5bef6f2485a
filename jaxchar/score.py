"""Scores a text under a trained model: `python -m jaxchar.score --workdir=ckpt/moe --data=FILE`.

Mean nats and bits per character and perplexity, by default over the characters with a full
window before them (the validation metric: a run's own validation text gives its validation
loss); needs no training flags. The file is read and scored in pieces: any size, bounded memory.
"""

import collections
import sys
from pathlib import Path

from absl import flags

from jaxchar import host, options
from jaxchar.cli import entry_point, run
from jaxchar.core import atomic
from jaxchar.core.restore import checkpoint_header, restore
from jaxchar.core.terminal import json_line, shown
from jaxchar.errors import UserError
from jaxchar.scoring import stream
from jaxchar.scoring.config import ScoreConfig

options.define_flags(ScoreConfig)
FLAGS = flags.FLAGS


def config_from_flags() -> ScoreConfig:
  """The frozen, validated ScoreConfig described by the parsed flags."""
  return options.from_flags(ScoreConfig, FLAGS).validate()


def excluded_warning(excluded: dict[str, int], data: str) -> str:
  """One line naming the characters left out, most frequent first."""
  listed = ", ".join(f"{c!r} x{n:,}" for c, n in list(excluded.items())[:20])
  more = f" and {len(excluded) - 20} more" if len(excluded) > 20 else ""
  return (f"warning: {sum(excluded.values()):,} character(s) of {data} are not in the model's "
          f"vocabulary and were left out (neither scored nor used as context): {listed}{more}.")


def report(figures: dict, restored, config: ScoreConfig) -> str:
  """The figures as a person reads them."""
  which = (f"every one but the first, the first {figures['maxlen'] - 1} with shorter contexts"
           if figures["from_start"] else
           f"those with a full {figures['maxlen']}-character window before them, as validation "
           "scores; --from_start adds the first ones")
  return "\n".join([
      f"{checkpoint_header(restored)} in {config.workdir}",
      f"{config.data}: {figures['scored']:,} of {figures['characters']:,} characters scored "
      f"({which})",
      f"{figures['nats_per_char']:.4f} nats per character | {figures['bits_per_char']:.4f} bits "
      f"per character | perplexity {figures['perplexity']:.3f}"])


def check_readable(data: str) -> None:
  """UserError unless `data` is a non-empty file (its bytes are checked as they are read)."""
  path = Path(data)
  if not path.exists():
    raise UserError(f"--data={data}: no such file. Pass the path of a UTF-8 text file.")
  if not path.is_file():
    raise UserError(f"--data={data} is not a file; pass the path of a UTF-8 text file.")
  if not path.stat().st_size:
    raise UserError(f"--data={data} is empty; pass a file with some text to score.")


@entry_point
def main() -> None:
  config = config_from_flags()
  # No host.keep_freed_memory(): scoring's per-call temporaries are small, and a heap that
  # keeps every freed page grew RSS about 1 MB per piece scored (BENCHMARKS.md).
  host.use_cpu_devices(0, config.batch_size)  # scoring batches split over every core
  check_readable(config.data)
  restored = restore(config.workdir, config.step)
  totals = stream.Totals(restored.maxlen, config.from_start)
  pieces = stream.score_pieces(restored, config.data, totals, config.batch_size,
                               show_progress=True)  # the file streamed: any size
  if config.per_char:
    atomic.write_text(config.per_char, stream.per_char_lines(pieces, restored.vocab.chars),
                      "the per-character scores")
  else:
    collections.deque(pieces, maxlen=0)
  if totals.excluded:
    print(shown(excluded_warning(dict(totals.excluded.most_common()), config.data)),
          file=sys.stderr, flush=True)
  figures = totals.figures()
  if config.as_json:
    print(json_line({"workdir": config.workdir, "step": restored.step, "data": config.data,
                     **figures}))
  else:
    print(shown(report(figures, restored, config)))
    if config.per_char:
      print(f"wrote {figures['scored']:,} per-character log-probabilities to {config.per_char}")


if __name__ == "__main__":
  run(main)
