"""What a run says when it ends: what it produced (the best checkpoint, its loss, the records)
and the commands to run next, with the workdir as the user typed it."""

import math
import shlex
from pathlib import Path

from jaxchar.core import checkpoint, storage
from jaxchar.core.restore import candidate_steps
from jaxchar.training.metrics import METRICS_FILE
from jaxchar.training.plots import PLOT_FILE

RECORDS = (METRICS_FILE, "samples.md", PLOT_FILE, "tensorboard")


def final_lines(workdir: str | Path) -> str:
  """The best checkpoint (as the sampler chooses it), the records written, and what to run
  next; empty when the folder holds no checkpoint whose metadata reads."""
  metas, folder_path = {}, storage.location(workdir)
  for step in checkpoint.checkpoint_steps(folder_path):
    try:
      metas[step] = checkpoint.read_meta(folder_path, step)
    except Exception:  # noqa: BLE001 - a damaged one is the sampler's to report, not this line's
      continue
  if not metas:
    return ""
  best = candidate_steps(metas)[0]
  meta = metas[best]
  val = meta.get("val_loss")
  loss = (f", validation loss {val:.4f} nats = {val / math.log(2):.3f} bits/char"
          if val is not None else ", no validation loss (--val_fraction=0): the latest")
  present = folder_path.names()
  records = [name + ("/" if name == "tensorboard" else "") for name in RECORDS if name in present]
  folder = shlex.quote(str(workdir))
  name = folder_path.name or "model"
  return "\n".join([
      f"best checkpoint: step {best} (epoch {meta.get('epoch')}{loss}) in "
      f"{folder_path / 'checkpoints' / str(best)}; records in {workdir}: {', '.join(records)}",
      "next, with this model:",
      f"  python -m jaxchar.sample --workdir={folder} --temperature=0.5,1.0    # --prime=TEXT to "
      "begin with",
      f"  python -m jaxchar.score --workdir={folder} --data=some.txt",
      f"  python -m jaxchar.export --workdir={folder} --out={shlex.quote(name + '.html')}",
      f"  python -m jaxchar.serve --workdir={folder}    # after pip install -e '.[serve]'"])
