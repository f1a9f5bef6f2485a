"""What a run records: metrics.jsonl, TensorBoard events and samples.md in its workdir.

On resume from step S, records after S (written after the checkpoint, before the stop) are
dropped, so the resumed run rewrites them once: no step is duplicated or lost.

The records are written into the workdir's mirror (Location.mirror: the folder itself on a
disk; for a run in a bucket, a private local copy whose changed files are uploaded whole, never
a partial line), published with every checkpoint, when the run ends, and at most every
PUBLISH_EVERY_S in between.
"""

import json
import os
import re
import time
from typing import Any

from jaxchar.core import atomic, storage

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.md"
TENSORBOARD_DIR = "tensorboard"
PUBLISH_EVERY_S = 60.0


def read_metrics(workdir: Any) -> list[dict]:
  """All records of <workdir>/metrics.jsonl, in order; a last line cut short by a crash or a
  full disk is left out."""
  path = storage.location(workdir) / METRICS_FILE
  with path.reading("read the metrics of"):
    if not path.exists():
      return []
    text = path.read_text()
  if not text.endswith("\n"):
    text = text[:text.rfind("\n") + 1]
  return [json.loads(line) for line in text.splitlines() if line.strip()]


class RunLog:
  """Appends metrics and samples for one training process (call only on the writing process)."""

  def __init__(self, workdir: Any, resume_step: int | None, resume_epoch: int):
    """`resume_step`/`resume_epoch`: the checkpoint resumed from (None/0 for a fresh run, which
    keeps nothing an earlier attempt wrote before its first checkpoint)."""
    self.workdir = storage.location(workdir)
    self.mirror = self.workdir.mirror()
    self.folder = self.mirror.folder  # where the records are written
    self._last_publish = time.monotonic()
    with self.workdir.writing("the metrics"):
      for name in (METRICS_FILE, SAMPLES_FILE):
        self.mirror.fetch(name)
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
      atomic.write_text(metrics_path, [json.dumps(r) + "\n" for r in kept], "the metrics")
    samples_path = self.folder / SAMPLES_FILE
    if samples_path.exists():
      sections = re.split(r"(?m)^(?=## Epoch \d+$)", samples_path.read_text(encoding="utf-8"))
      atomic.write_text(samples_path, [
          s for s in sections if not s.startswith("## Epoch ")
          or int(s.split()[2]) <= resume_epoch], "the samples")

  def write(self, record: dict) -> None:
    """One metrics.jsonl line, and each numeric field as a TensorBoard scalar."""
    with (self.workdir / METRICS_FILE).writing("the metrics"):
      self.metrics.write(json.dumps(record) + "\n")
      self.metrics.flush()
    if time.monotonic() - self._last_publish >= PUBLISH_EVERY_S:
      self.publish()
    prefix = record["kind"]
    for key, value in record.items():
      if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
        self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

  def write_samples(self, markdown: str, texts: dict[float, str], step: int) -> None:
    with ((self.workdir / SAMPLES_FILE).writing("the samples"),
          open(self.folder / SAMPLES_FILE, "a", encoding="utf-8") as f):
      f.write(markdown + "\n")
    for temperature, text in texts.items():
      self.writer.add_text(f"samples/temperature_{temperature}", f"```\n{text}\n```", step)

  def flush(self) -> None:
    """Makes every record so far durable (called with each checkpoint save)."""
    with self.workdir.writing("the metrics"):
      self.metrics.flush()
      os.fsync(self.metrics.fileno())
      self.writer.flush()
    self.publish()

  def publish(self) -> None:
    """The records as they are now, in the workdir (uploaded, for a run in a bucket)."""
    with self.workdir.writing("the records"):
      self.mirror.publish()
    self._last_publish = time.monotonic()

  def close(self, publish: bool = True) -> None:
    """Closes the records, publishing them first (unless `publish` is False: after an error, a
    resumed run keeps only what its checkpoint's flush published)."""
    self.metrics.close()
    self.writer.close()
    try:
      if publish:
        self.publish()
    finally:
      self.mirror.discard()
