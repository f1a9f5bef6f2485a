"""Scoring a file as `python -m jaxchar.score` does: the file checked, streamed through the model
in pieces, and the figures reported (as text or one JSON line) with the characters left out."""

import collections
import sys
from pathlib import Path

from jaxchar.core import atomic
from jaxchar.core.restore import checkpoint_header, restore
from jaxchar.core.terminal import json_line, shown
from jaxchar.errors import UserError
from jaxchar.scoring import stream
from jaxchar.scoring.config import ScoreConfig


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


def run_scoring(config: ScoreConfig) -> None:
  """Scores config.data under the chosen checkpoint and prints the report."""
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

