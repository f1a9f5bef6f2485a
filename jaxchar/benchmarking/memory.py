"""The benchmark's memory figures (Linux /proc): resident memory by kind, sampled while a run
trains, and what reading training batches from the id cache reads from the disk and maps in."""

import os
import resource
import tempfile
import threading
from pathlib import Path

import numpy as np

from jaxchar.core import data


def proc_figures() -> dict[str, float]:
  """This process's RssAnon and RssFile (MB), bytes read from the disk (read_bytes, which
  counts page-cache misses only) and major page faults; {} where /proc is missing."""
  figures: dict[str, float] = {}
  try:
    for name in ("status", "io"):
      for line in Path(f"/proc/self/{name}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
          figures[key] = int(value.split()[0]) / 1024
        elif key == "read_bytes":
          figures[key] = int(value)
  except OSError:
    return {}
  figures["majflt"] = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
  return figures


class RssPeaks:
  """In a `with`: RssAnon, RssFile and their sum sampled every `every_s` seconds by a thread;
  `peaks` holds the largest of each (MB)."""

  def __init__(self, every_s: float = 0.05):
    self.every_s, self.peaks = every_s, {"RssAnon": 0.0, "RssFile": 0.0, "Rss": 0.0}
    self.done = threading.Event()
    self.thread = threading.Thread(target=self._sample, daemon=True)

  def _sample(self) -> None:
    while True:
      now = proc_figures()
      if "RssAnon" in now:
        now["Rss"] = now["RssAnon"] + now["RssFile"]
        self.peaks = {key: max(value, now[key]) for key, value in self.peaks.items()}
      if self.done.wait(self.every_s):
        return

  def __enter__(self) -> "RssPeaks":
    self.thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.done.set()
    self.thread.join()
    self._sample()  # once more, at the end


def drop_from_page_cache(path: str | Path) -> None:
  """Evicts the file's clean, unmapped pages from the page cache (POSIX_FADV_DONTNEED), so a
  read of them goes to the disk and counts in read_bytes."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
  finally:
    os.close(fd)


def cache_reads(corpus: data.Corpus, steps: int, batch_size: int, seed: int = 0) -> dict:
  """Per training step, reading `steps` batches' windows as the loop does, on a cold page
  cache (the id file's pages dropped first): bytes read from the disk, major faults, and the
  growth of RssFile (KB). {} without /proc or a cached text."""
  path = getattr(corpus.raw, "filename", None)
  if not path or not hasattr(os, "posix_fadvise") or not proc_figures():
    return {}
  drop_from_page_cache(path)
  before = proc_figures()
  for index in range(steps):
    starts = data.train_batch_starts(corpus, index, batch_size, seed, 1)
    data.device_batch(corpus, starts.reshape(1, -1))
  after = proc_figures()
  return {"steps": steps, "read_kb_per_step": (after["read_bytes"] - before["read_bytes"])
          / 1024 / steps, "majflt_per_step": (after["majflt"] - before["majflt"]) / steps,
          "rss_file_kb_per_step": (after["RssFile"] - before["RssFile"]) * 1024 / steps,
          "windows_kb_per_step": batch_size * (corpus.maxlen + 1) * np.dtype(
              corpus.raw.dtype).itemsize / 1024}


def probe(path: str, cache_dir: str | None, read_steps: int) -> dict:
  """Trains 5 steps on `path` as jaxchar.train does (its id cache in `cache_dir`, default
  beside a temporary run), sampling RssAnon and RssFile, then reads `read_steps` training
  batches from the cache on a cold page cache: peak RSS (MB), sampled peaks, cache_reads."""
  from jaxchar import host
  from jaxchar.training import loop, startup
  from jaxchar.training.config import Config
  host.keep_freed_memory()
  config = Config(data=path, epochs=1, steps_per_epoch=5, val_fraction=0.0002, sample_len=0,
                  eval_batch_size=4096)
  host.use_cpu_devices(0, config.batch_size)
  with tempfile.TemporaryDirectory() as tmp:
    with RssPeaks() as peaks:
      loop.train_and_evaluate(config, Path(tmp) / "run", cache_dir=cache_dir)
    corpus = startup.open_text(config, Path(tmp) / "run", cache_dir)[0]
    reads = cache_reads(corpus, read_steps, config.batch_size)
  return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "peak_mb": peaks.peaks, "cache_reads": reads}


def table_lines(p: dict) -> list[str]:
  """The benchmark table's lines for the probe's sampled peaks and cache reads, if measured."""
  lines = []
  if p.get("peak_mb", {}).get("Rss"):
    k = p["peak_mb"]
    lines.append(f"  sampled peaks: RssAnon {k['RssAnon']:,.0f} MB, RssFile {k['RssFile']:,.0f} "
                 f"MB, together {k['Rss']:,.0f} MB")
  if p.get("cache_reads"):
    c = p["cache_reads"]
    lines.append(f"  per training step from the id cache ({c['steps']} batches, page cache "
                 f"dropped first): {c['read_kb_per_step']:,.0f} KB read from disk "
                 f"({c['read_kb_per_step'] / 4:,.0f} pages; the windows are "
                 f"{c['windows_kb_per_step']:.1f} KB), {c['majflt_per_step']:,.1f} major faults, "
                 f"RssFile {c['rss_file_kb_per_step']:+,.0f} KB")
  return lines
