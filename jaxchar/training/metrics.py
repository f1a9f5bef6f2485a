"""What a run records: metrics.jsonl, TensorBoard events and samples.md in its workdir.

On resume from step S, records after S (written after the checkpoint, before the stop) are
dropped, so the resumed run rewrites them once: no step is duplicated or lost.

A run in a bucket (gs://) writes its records into a private local folder, downloaded from the
bucket as it starts, and uploads each changed file whole (one object write, never a partial
one) with every checkpoint, when it ends, and at most every UPLOAD_EVERY_S in between.
"""

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from jaxchar.core import storage
from jaxchar.core.storage import writing

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.md"
TENSORBOARD_DIR = "tensorboard"
UPLOAD_EVERY_S = 60.0


def read_metrics(workdir: Any) -> list[dict]:
  """All records of <workdir>/metrics.jsonl, in order; a last line cut short by a crash or a
  full disk is left out."""
  path = storage.location(workdir) / METRICS_FILE
  with storage.requests_to(workdir, "read the metrics of"):
    if not storage.exists(path):
      return []
    text = storage.read_text(path)
  if not text.endswith("\n"):
    text = text[:text.rfind("\n") + 1]
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def _rewrite(path: Path, text: str) -> None:
  partial = path.with_suffix(path.suffix + ".partial")
  partial.write_text(text, encoding="utf-8")
  os.replace(partial, path)


class RunLog:
  """Appends metrics and samples for one training process (call only on the writing process)."""

  def __init__(self, workdir: Any, resume_step: int | None, resume_epoch: int):
    """`resume_step`/`resume_epoch`: the checkpoint resumed from (None/0 for a fresh run, which
    keeps nothing an earlier attempt wrote before its first checkpoint)."""
    self.workdir = storage.location(workdir)
    self.remote = storage.is_remote(workdir)
    # Where the records are written: the workdir itself, or a local copy of a bucket's.
    self.folder = Path(tempfile.mkdtemp(prefix="jaxchar-records-")) if self.remote else self.workdir
    self._uploaded: dict[Path, tuple[int, int]] = {}
    self._last_upload = time.monotonic()
    with writing("the metrics", self.workdir):
      if self.remote:
        for name in (METRICS_FILE, SAMPLES_FILE):
          if storage.exists(self.workdir / name):
            storage.download_file(self.workdir / name, self.folder / name)
      self._drop_records_after(resume_step, resume_epoch)
      self.metrics = open(self.folder / METRICS_FILE, "a", encoding="utf-8")
    # Imported here, so that the device benchmark can import the loop where tensorboardX is not
    # installed. purge_step drops events a previous process wrote after the checkpoint.
    from tensorboardX import SummaryWriter
    # Readers take event files in name order, and a name holds the time in whole seconds: a
    # session resumed within the second of the last one must still sort after it.
    suffix = f".from-step-{resume_step:012d}" if resume_step else ""
    self.writer = SummaryWriter(str(self.folder / TENSORBOARD_DIR),
                                purge_step=resume_step + 1 if resume_step else None,
                                flush_secs=30, filename_suffix=suffix)

  def _drop_records_after(self, resume_step: int | None, resume_epoch: int) -> None:
    kept = ([] if resume_step is None
            else [r for r in read_metrics(self.folder) if r["step"] <= resume_step])
    metrics_path = self.folder / METRICS_FILE
    if metrics_path.exists():
      _rewrite(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    samples_path = self.folder / SAMPLES_FILE
    if samples_path.exists():
      sections = re.split(r"(?m)^(?=## Epoch \d+$)", samples_path.read_text(encoding="utf-8"))
      _rewrite(samples_path, "".join(
          s for s in sections if not s.startswith("## Epoch ")
          or int(s.split()[2]) <= resume_epoch))

  def write(self, record: dict) -> None:
    """One metrics.jsonl line, and each numeric field as a TensorBoard scalar."""
    with writing("the metrics", self.workdir / METRICS_FILE):
      self.metrics.write(json.dumps(record) + "\n")
      self.metrics.flush()
      if self.remote and time.monotonic() - self._last_upload >= UPLOAD_EVERY_S:
        self.upload()
    prefix = record["kind"]
    for key, value in record.items():
      if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
        self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

  def write_samples(self, markdown: str, texts: dict[float, str], step: int) -> None:
    with (writing("the samples", self.workdir / SAMPLES_FILE),
          open(self.folder / SAMPLES_FILE, "a", encoding="utf-8") as f):
      f.write(markdown + "\n")
    for temperature, text in texts.items():
      self.writer.add_text(f"samples/temperature_{temperature}", f"```\n{text}\n```", step)

  def flush(self) -> None:
    """Makes every record so far durable (called with each checkpoint save)."""
    with writing("the metrics", self.workdir):
      self.metrics.flush()
      os.fsync(self.metrics.fileno())
      self.writer.flush()
    self.upload()

  def upload(self) -> None:
    """Copies the records that changed since the last upload to the bucket (a run in one)."""
    if not self.remote:
      return
    with writing("the records", self.workdir):
      for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
        stat = path.stat()
        if path.suffix != ".partial" and self._uploaded.get(path) != (stat.st_size,
                                                                      stat.st_mtime_ns):
          storage.upload(path, self.workdir / path.relative_to(self.folder).as_posix())
          self._uploaded[path] = (stat.st_size, stat.st_mtime_ns)
    self._last_upload = time.monotonic()

  def close(self, upload: bool = True) -> None:
    """Closes the records; a run in a bucket uploads them first (unless `upload` is False:
    after an error, a resumed run keeps only what its checkpoint's flush uploaded)."""
    self.metrics.close()
    self.writer.close()
    if self.remote:
      try:
        if upload:
          self.upload()
      finally:
        shutil.rmtree(self.folder, ignore_errors=True)
