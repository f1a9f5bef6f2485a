"""What `python -m jaxchar.export` takes, each option defined once; the model comes from the
checkpoint."""

import dataclasses
import os
from pathlib import Path

from jaxchar.choices import CheckpointChoice
from jaxchar.errors import UserError
from jaxchar.options import check_choices, option

FORMATS = ("html", "json")


@dataclasses.dataclass(frozen=True)
class ExportConfig(CheckpointChoice):
  """Which checkpoint to export, where and how."""

  out: str = option("model.html", "The file to write: one self-contained HTML page, or with "
                    "--format=json the model's JSON (the JavaScript module is written beside "
                    "it as jaxchar-model.js).")
  format: str = option("html", "html = a page that writes in the browser, offline; json = the "
                       "weights, vocabulary and description as JSON plus the JavaScript module, "
                       "for embedding in another page.", choices=FORMATS)
  float16: bool = option(False, "Store the weights as float16: half the size; log-probabilities "
                         "then differ from JAX's by up to about 1e-2 instead of 1e-4.")

  def validate(self) -> "ExportConfig":
    """Raises UserError for an output path that cannot be written; returns self."""
    check_choices(self)
    out = Path(self.out)
    if out.is_dir():
      raise UserError(f"--out={self.out} is a folder; give a file name inside it, e.g. "
                      f"--out={out / ('model.' + self.format)}.")
    folder = out.parent
    if not folder.is_dir():
      raise UserError(f"--out={self.out}: the folder {folder} does not exist; create it, or "
                      "write the file elsewhere.")
    if not os.access(folder, os.W_OK):
      raise UserError(f"--out={self.out}: the folder {folder} is not writable; choose another "
                      "--out.")
    return self
