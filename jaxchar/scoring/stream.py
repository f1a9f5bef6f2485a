"""A file scored as it is read: its text in pieces, each scored with the model's last `maxlen`
known characters before it as context, so a file of any size is scored in bounded memory and
gives the figures the whole text would."""

import collections
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxchar.core import textstream
from jaxchar.scoring import scorer
from jaxchar.core.progress import ValidationProgress

PIECE_BYTES = 1 << 20  # bytes of text scored per piece: host memory stays a few hundred MB


@dataclasses.dataclass
class Totals:
  """What the pieces scored so far add up to."""

  maxlen: int
  from_start: bool
  characters: int = 0
  scored: int = 0
  nats_sum: float = 0.0
  excluded: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def figures(self) -> dict:
    """The summary, with the keys of scorer.Score.figures."""
    nats = self.nats_sum / self.scored
    return {"characters": self.characters, "scored": self.scored,
            "excluded": dict(self.excluded.most_common()), "from_start": self.from_start,
            "maxlen": self.maxlen, "nats_per_char": nats, "bits_per_char": nats / math.log(2),
            "perplexity": math.exp(nats)}


@dataclasses.dataclass(frozen=True)
class Piece:
  """One call's scored characters: position in the text, vocabulary id, log-probability."""

  positions: np.ndarray
  ids: np.ndarray
  log_probs: np.ndarray


def _scored(restored, ids: np.ndarray, positions: np.ndarray, from_start: bool,
            batch_size: int) -> Piece:
  capacity = -(-(len(ids) + restored.maxlen) // PIECE_BYTES) * PIECE_BYTES  # few shapes: few
  result = scorer.score(restored, scorer.Prepared("", ids, positions, {}), from_start,  # compiles
                        batch_size, capacity=capacity)
  targets = scorer.target_indices(len(ids), restored.maxlen, from_start)
  return Piece(result.positions, ids[targets], result.log_probs)


def score_pieces(restored, path: str | Path, totals: Totals, batch_size: int = 1024,
                 show_progress: bool = False) -> Iterator[Piece]:
  """Scores the file piece by piece, adding each to `totals`; UserError (scorer.check_scorable)
  when the whole file has nothing to score."""
  maxlen, from_start = restored.maxlen, totals.from_start
  context_ids, context_positions = np.zeros(0, np.int32), np.zeros(0, np.int64)
  started, offset = False, 0
  size = Path(path).stat().st_size
  with ValidationProgress(-(-size // PIECE_BYTES), size, label="scoring",
                          noun="bytes", enabled=show_progress) as bar:
    for done, text in enumerate(textstream.file_pieces(path, PIECE_BYTES), 1):
      prepared = scorer.prepare(text, restored.vocab, restored.lowercase)
      totals.characters += len(prepared.text)
      totals.excluded.update(prepared.excluded)
      ids = np.concatenate([context_ids, prepared.ids.astype(np.int32)])
      positions = np.concatenate([context_positions, prepared.positions + offset])
      offset += len(prepared.text)
      if len(ids) > maxlen:  # later calls have exactly maxlen of context: only new ids scored
        piece = _scored(restored, ids, positions, from_start and not started, batch_size)
        totals.scored += len(piece.log_probs)
        totals.nats_sum -= float(np.sum(piece.log_probs, dtype=np.float64))
        started = True
        yield piece
        ids, positions = ids[-maxlen:], positions[-maxlen:]
      context_ids, context_positions = ids, positions
      bar.update(min(done, bar.total))
  if not started:  # the whole file has at most maxlen known characters
    scorer.check_scorable(scorer.Prepared(" " * totals.characters, context_ids,
                                          context_positions, dict(totals.excluded)),
                          maxlen, from_start, f"--data={path}")
    piece = _scored(restored, context_ids, context_positions, from_start, batch_size)
    totals.scored += len(piece.log_probs)
    totals.nats_sum -= float(np.sum(piece.log_probs, dtype=np.float64))
    yield piece


def per_char_lines(pieces: Iterator[Piece], chars: str) -> Iterator[str]:
  """The TSV of `--per_char` (as scorer.per_char_lines writes it), piece by piece."""
  yield "position\tcharacter\tlog_prob_nats\n"
  for piece in pieces:
    for position, i, log_prob in zip(piece.positions.tolist(), piece.ids.tolist(),
                                     piece.log_probs.tolist()):
      yield f"{position}\t{scorer.tsv_char(chars[i])}\t{log_prob:.6f}\n"
