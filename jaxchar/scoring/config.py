"""What `python -m jaxchar.score` takes, each option defined once; the model comes from the
checkpoint."""

import dataclasses
from pathlib import Path

from jaxchar.choices import CheckpointChoice, CompilationCacheChoice
from jaxchar.errors import UserError
from jaxchar.options import option


@dataclasses.dataclass(frozen=True)
class ScoreConfig(CheckpointChoice, CompilationCacheChoice):
  """Which model scores which text, and how the figures are written."""

  data: str = option("", "UTF-8 text to score (lowercased first if the model was trained so).")
  from_start: bool = option(False, "Also score the first characters, with the shorter contexts "
                            "before them (every character but the first). Default: only "
                            "characters with a full window before them, as validation does.")
  as_json: bool = option(False, "Print the figures as one JSON object instead of text.",
                         flag="json")
  per_char: str = option("", "Also write each scored character's position (its 0-based "
                         "offset in the text, in characters), character and log-probability "
                         "(nats) to this TSV file, to find the surprising parts of a text.")
  batch_size: int = option(1024, "Characters scored per batch over all local devices (rounded "
                           "up to a multiple of the device count).")

  def validate(self) -> "ScoreConfig":
    """Raises UserError for values that are wrong whatever the checkpoint; returns self."""
    if not self.data:
      raise UserError("--data is required: the UTF-8 text file to score, e.g. "
                      "--data=data/my_text.txt.")
    if self.batch_size < 1:
      raise UserError(f"--batch_size={self.batch_size} must be at least 1.")
    if self.per_char:
      folder = Path(self.per_char).parent
      if not folder.is_dir():
        raise UserError(f"--per_char={self.per_char}: the folder {folder} does not exist; "
                        "create it or write the file elsewhere.")
      if Path(self.per_char).is_dir():
        raise UserError(f"--per_char={self.per_char} is a folder; give a file name inside it, "
                        "e.g. --per_char=scores.tsv.")
    return self
