"""What a run records: metrics.jsonl, TensorBoard events and samples.md in its workdir.

On resume from step S, records after S (written after the checkpoint, before the stop) are
dropped, so the resumed run rewrites them once: no step is duplicated or lost.
"""

import json
import os
import re
from pathlib import Path

from jaxchar.errors import writing

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.md"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: Path) -> list[dict]:
  """All records of <workdir>/metrics.jsonl, in order; a last line cut short by a crash or a
  full disk is left out."""
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  text = path.read_text()
  if not text.endswith("\n"):
    text = text[:text.rfind("\n") + 1]
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def _rewrite(path: Path, text: str) -> None:
  partial = path.with_suffix(path.suffix + ".partial")
  partial.write_text(text, encoding="utf-8")
  os.replace(partial, path)


class RunLog:
  """Appends metrics and samples for one training process (call only on the writing process)."""

  def __init__(self, workdir: Path, resume_step: int | None, resume_epoch: int):
    """`resume_step`/`resume_epoch`: the checkpoint resumed from (None/0 for a fresh run, which
    keeps nothing an earlier attempt wrote before its first checkpoint)."""
    self.workdir = Path(workdir)
    with writing("the metrics", self.workdir):
      self._drop_records_after(resume_step, resume_epoch)
      self.metrics = open(self.workdir / METRICS_FILE, "a", encoding="utf-8")
    # Imported here, so that the device benchmark can import the loop where tensorboardX is not
    # installed. purge_step drops events a previous process wrote after the checkpoint.
    from tensorboardX import SummaryWriter
    # Readers take event files in name order, and a name holds the time in whole seconds: a
    # session resumed within the second of the last one must still sort after it.
    suffix = f".from-step-{resume_step:012d}" if resume_step else ""
    self.writer = SummaryWriter(str(self.workdir / TENSORBOARD_DIR),
                                purge_step=resume_step + 1 if resume_step else None,
                                flush_secs=30, filename_suffix=suffix)

  def _drop_records_after(self, resume_step: int | None, resume_epoch: int) -> None:
    kept = ([] if resume_step is None
            else [r for r in read_metrics(self.workdir) if r["step"] <= resume_step])
    metrics_path = self.workdir / METRICS_FILE
    if metrics_path.exists():
      _rewrite(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    samples_path = self.workdir / SAMPLES_FILE
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
    prefix = record["kind"]
    for key, value in record.items():
      if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
        self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

  def write_samples(self, markdown: str, texts: dict[float, str], step: int) -> None:
    with (writing("the samples", self.workdir / SAMPLES_FILE),
          open(self.workdir / SAMPLES_FILE, "a", encoding="utf-8") as f):
      f.write(markdown + "\n")
    for temperature, text in texts.items():
      self.writer.add_text(f"samples/temperature_{temperature}", f"```\n{text}\n```", step)

  def flush(self) -> None:
    """Makes every record so far durable (called with each checkpoint save)."""
    with writing("the metrics", self.workdir):
      self.metrics.flush()
      os.fsync(self.metrics.fileno())
      self.writer.flush()

  def close(self) -> None:
    self.metrics.close()
    self.writer.close()
