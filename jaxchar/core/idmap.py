"""Reading the id cache without mapping a large text into the process: windows at random offsets
with os.pread of exactly their bytes, runs of ids (a sequential pass) with ordinary reads.

Indexing the memory map at random offsets costs, per 61-byte window, on Linux: read-ahead around
the fault when the page is not cached (up to the disk's read_ahead_kb: 8 MB on this project's
VM), and when it is, the cached pages around it mapped in (fault-around, whole large folios:
265 KB a window measured on a fully cached file, kernel 6.18), each staying resident (RssFile)
until the kernel wants the memory back. MADV_RANDOM stops the read-ahead but not the mapping in
of cached pages, so resident memory still grew with every window read. pread on a descriptor
advised POSIX_FADV_RANDOM reads only the window's pages into the page cache and maps nothing:
the process's resident memory does not grow with the windows read, however many. A text of at
most MAPPED_LIMIT bytes is still indexed through its map (all its pages fit under that anyway).
"""

import mmap
import os
import weakref
from pathlib import Path

import numpy as np

MAPPED_LIMIT = 64 << 20  # id files up to this size are read through their memory map


def _maps_a_whole_file(ids: np.ndarray) -> bool:
  return (isinstance(ids, np.memmap) and isinstance(ids.base, mmap.mmap)
          and bool(getattr(ids, "filename", None)))


def read_span(ids: np.ndarray, start: int, stop: int) -> np.ndarray:
  """ids[start:stop]: read from the file by ordinary reads (which read ahead, as a sequential
  pass wants, and map nothing in) when `ids` maps a whole id file, else sliced."""
  start, stop, _ = slice(start, stop).indices(len(ids))
  if not _maps_a_whole_file(ids):
    return np.asarray(ids[start:stop])
  if stop <= start:
    return np.empty(0, ids.dtype)
  with open(ids.filename, "rb") as f:
    f.seek(ids.offset + start * ids.itemsize)
    return np.fromfile(f, ids.dtype, stop - start)


class WindowReader:
  """Windows of an id file read at random offsets by os.pread, each exactly its own bytes, on a
  descriptor of its own advised POSIX_FADV_RANDOM (no read-ahead); nothing is mapped in."""

  def __init__(self, path: Path, dtype, offset: int = 0):
    self.path, self.dtype, self.offset = Path(path), np.dtype(dtype), offset
    self.fd = os.open(self.path, os.O_RDONLY)
    weakref.finalize(self, os.close, self.fd)
    if hasattr(os, "posix_fadvise"):
      os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)

  @classmethod
  def of(cls, ids: np.ndarray) -> "WindowReader | None":
    """A reader for `ids` when it maps a whole id file of more than MAPPED_LIMIT bytes (and the
    system has pread); None for anything to index directly."""
    if not (_maps_a_whole_file(ids) and ids.nbytes > MAPPED_LIMIT and hasattr(os, "pread")):
      return None
    return cls(ids.filename, ids.dtype, ids.offset)

  def read(self, starts: np.ndarray, width: int) -> np.ndarray:
    """Ids [*starts.shape, width] of the windows of `width` ids at `starts` (int64)."""
    starts = np.asarray(starts, np.int64)
    size = width * self.dtype.itemsize
    offsets = (starts.reshape(-1) * self.dtype.itemsize + self.offset).tolist()
    got = b"".join([os.pread(self.fd, size, offset) for offset in offsets])
    if len(got) != size * len(offsets):
      raise OSError(f"{self.path} is shorter than its id cache's header says: a window read "
                    "came back short (was the file changed while in use?)")
    return np.frombuffer(got, self.dtype).reshape(*starts.shape, width)
