"""A training run's text: the files --data names, opened from their id cache (encoded into it
first when it is missing, stale or damaged)."""

from pathlib import Path

import jax

from jaxchar.core import corpus as corpus_lib
from jaxchar.core import idcache, storage, textstream
from jaxchar.errors import UserError
from jaxchar.training import distributed
from jaxchar.training.config import DEFAULT_DATA, Config


def cache_folder(workdir: str | Path, cache_dir: str | Path | None) -> Path:
  """Where the text's id cache goes: `cache_dir`, else corpus_cache/ beside the workdir (for a
  gs:// workdir, ckpt/corpus_cache/ here: a cache is read at random, so it stays local)."""
  if cache_dir:
    return Path(cache_dir)
  return storage.location(workdir).local_sibling("corpus_cache")


def encoded_text(config: Config, cache_dir: Path) -> tuple[idcache.EncodedText, int]:
  """The text --data names, from its id cache (encoded into it first if needed), and its
  number of files. With several processes, process 0 encodes first and the others then find
  its cache (or, on hosts of their own, encode theirs)."""
  if config.data == DEFAULT_DATA:
    corpus_lib.ensure_moes(Path(DEFAULT_DATA), distributed.say)
  sources = textstream.list_sources(config.data)

  def open_it() -> idcache.EncodedText:
    return idcache.open_or_encode(config.data, sources, config.lowercase, cache_dir,
                                  show_progress=distributed.is_primary())
  if jax.process_count() == 1:
    return open_it(), len(sources)
  encoded = error = None
  if distributed.is_primary():
    try:
      encoded = open_it()
    except UserError as e:
      error = e
  if distributed.any_process(error is not None):  # a collective: every process waits here
    raise error or UserError("process 0 could not read --data (see its error).")
  return encoded or open_it(), len(sources)
