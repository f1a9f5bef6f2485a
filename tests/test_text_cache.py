"""The text streamed from disk: the id cache written, reused, invalidated and rebuilt; ids equal
to the whole-text path at chunk boundaries; folders of files; bad input and faults."""

import errno
import json
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import TINY_TEXT, tiny_config
from jaxchar.core import data, idcache, idmap, textstream
from jaxchar.errors import UserError
from jaxchar.training import distributed, text

SMALL_CHUNK = 7  # bytes per read: every piece boundary falls inside words and characters


def encode(spec, cache_dir, lowercase=True):
  return idcache.open_or_encode(str(spec), textstream.list_sources(str(spec)), lowercase,
                                cache_dir, show_progress=False)


def corpus_of(spec, cache_dir, lowercase=True, **kwargs) -> data.Corpus:
  return data.from_encoded(encode(spec, cache_dir, lowercase), maxlen=4, stride=1,
                           val_fraction=0.2, **kwargs)


def whole_text_corpus(text: str, lowercase=True, **kwargs) -> data.Corpus:
  return data.build_corpus(text, maxlen=4, stride=1, val_fraction=0.2, lowercase=lowercase,
                           **kwargs)


def assert_same_corpus(streamed: data.Corpus, whole: data.Corpus) -> None:
  assert streamed.vocab == whole.vocab
  assert streamed.read(0, streamed.num_chars).tolist() == whole.read(0, whole.num_chars).tolist()
  assert streamed.sha256 == whole.sha256
  assert (streamed.cut, streamed.num_train_windows) == (whole.cut, whole.num_train_windows)


# 'İ' lowercases to two characters; a capital sigma lowercases to 'ς' at a word's end only,
# which Python decides from the characters around it; '\r\n' and '\r' become '\n'.
AWKWARD = ("ΟΔΥΣΣΕΥΣ ΚΑΙ ΑΧΙΛΛΕΥΣ\r\nİSTANBUL İS BIG.\r\n\r\nΣΟΦΟΣ' ΛΟΓΟΣ, ΑΣ.\rmoe's "
           "TAVERN: ÇA VA?\n") * 3


@pytest.mark.parametrize("chunk", [1, 2, 3, SMALL_CHUNK, 64])
def test_streamed_ids_equal_the_whole_text_path_at_every_chunk_boundary(tmp_path, monkeypatch,
                                                                       chunk):
  monkeypatch.setattr(textstream, "CHUNK_BYTES", chunk)
  path = tmp_path / "greek.txt"
  path.write_bytes(AWKWARD.encode("utf-8"))
  whole = AWKWARD.replace("\r\n", "\n").replace("\r", "\n")
  assert "ς" in whole.lower() and "σ" in whole.lower() and len(whole.lower()) > len(whole)
  for lowercase in (True, False):
    assert_same_corpus(corpus_of(path, tmp_path / f"cache{lowercase}", lowercase),
                       whole_text_corpus(whole, lowercase))


def test_a_capital_sigma_in_a_piece_without_spaces_lowers_by_its_context(tmp_path, monkeypatch):
  monkeypatch.setattr(textstream, "CHUNK_BYTES", 5)
  path = tmp_path / "nospace.txt"
  line = "ΑΣ.ΒΣΑ'Σ-ΣΑ" * 40  # no space or newline: pieces are cut anywhere
  path.write_text(line, encoding="utf-8")
  assert_same_corpus(corpus_of(path, tmp_path / "c"), whole_text_corpus(line))


def test_the_cache_is_written_then_reused(tmp_path):
  path = tmp_path / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  first = encode(path, tmp_path / "cache")
  assert not first.reused and first.path.parent == tmp_path / "cache"
  assert first.path.stat().st_size == len(TINY_TEXT)  # 1 byte per character
  second = encode(path, tmp_path / "cache")
  assert second.reused and second.path == first.path
  assert isinstance(second.ids, np.memmap)
  assert_same_corpus(corpus_of(path, tmp_path / "cache"), whole_text_corpus(TINY_TEXT))
  assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
      [first.path.name, first.path.with_suffix(".json").name])  # nothing else left there


def mapped_kb(path: Path) -> int:
  """Kilobytes of `path` this process has mapped in (its mappings' Rss in /proc/self/smaps)."""
  total, inside = 0, False
  for line in Path("/proc/self/smaps").read_text().splitlines():
    if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
      inside = line.endswith(" " + str(path))
    elif inside and line.startswith("Rss:"):
      total += int(line.split()[1])
  return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc")
def test_random_windows_of_a_large_cache_map_none_of_it_in(tmp_path, monkeypatch):
  """Windows of a cache over idmap.MAPPED_LIMIT bytes are read with pread: the same ids as
  the whole-text path, and not one page of the id file mapped into the process (indexing its
  map, as before, mapped in pages around every window read: megabytes here, the file being
  in the page cache)."""
  monkeypatch.setattr(idmap, "MAPPED_LIMIT", 1 << 16)
  text = TINY_TEXT * ((4 << 20) // len(TINY_TEXT))  # 4 MB
  path = tmp_path / "big.txt"
  path.write_text(text, encoding="utf-8")
  streamed, whole = corpus_of(path, tmp_path / "c"), whole_text_corpus(text)
  assert streamed.reader is not None and whole.reader is None
  for batch in range(200):  # 6,400 windows, all over the 4 MB
    starts = data.train_batch_starts(streamed, batch, 32, seed=0, epoch=1).reshape(2, 16)
    np.testing.assert_array_equal(data.device_batch(streamed, starts)[0],
                                  data.device_batch(whole, starts)[0])
  assert_same_corpus(streamed, whole)  # runs of ids (Corpus.read) come from the file too
  assert mapped_kb(streamed.reader.path) == 0
  monkeypatch.undo()
  assert corpus_of(path, tmp_path / "c2").reader is None  # under MAPPED_LIMIT: indexed as before


def test_lowercasing_has_a_cache_of_its_own(tmp_path):
  path = tmp_path / "tiny.txt"
  path.write_text("Moe: HEY Homer.\n" * 20, encoding="utf-8")
  lower, upper = encode(path, tmp_path / "c", True), encode(path, tmp_path / "c", False)
  assert lower.path != upper.path and not upper.reused
  assert "H" in upper.present and "H" not in lower.present and "h" in lower.present


def test_a_base_vocabulary_maps_the_same_cache(tmp_path):
  path = tmp_path / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  base = data.Vocab("zyx" + "".join(sorted(set(TINY_TEXT.lower()) - set("zyx"))) + "#")
  assert_same_corpus(corpus_of(path, tmp_path / "c", vocab=base),
                     whole_text_corpus(TINY_TEXT, vocab=base))


def edit_same_size(path):
  """Changes a character, keeping the size and (restored) modification time."""
  stat = path.stat()
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] = ord("Q")
  path.write_bytes(bytes(raw))
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("change", ["appended", "same size and time", "touched"])
def test_a_changed_text_invalidates_the_cache(tmp_path, change):
  path = tmp_path / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  encode(path, tmp_path / "c")
  if change == "appended":
    path.write_text(TINY_TEXT + "carl: more!\n", encoding="utf-8")
  elif change == "same size and time":
    edit_same_size(path)
  else:
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
  again = encode(path, tmp_path / "c")
  assert not again.reused
  new_text = path.read_text(encoding="utf-8")
  assert_same_corpus(corpus_of(path, tmp_path / "c"), whole_text_corpus(new_text))


@pytest.mark.parametrize("damage", ["truncated ids", "changed ids", "garbage header",
                                    "deleted ids"])
def test_a_damaged_cache_is_rebuilt_never_trusted(tmp_path, damage):
  path = tmp_path / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  first = encode(path, tmp_path / "c")
  ids_file, header = first.path, first.path.with_suffix(".json")
  if damage == "truncated ids":
    ids_file.write_bytes(ids_file.read_bytes()[:100])
  elif damage == "changed ids":
    raw = bytearray(ids_file.read_bytes())
    raw[500] = (raw[500] + 1) % 20
    ids_file.write_bytes(bytes(raw))
  elif damage == "garbage header":
    header.write_text("{not json", encoding="utf-8")
  else:
    ids_file.unlink()
  again = encode(path, tmp_path / "c")
  assert not again.reused
  assert_same_corpus(corpus_of(path, tmp_path / "c"), whole_text_corpus(TINY_TEXT))


def test_a_folder_of_files_in_path_order_joined_by_a_blank_line(tmp_path):
  folder = tmp_path / "texts"
  (folder / "b").mkdir(parents=True)
  (folder / "b" / "2.txt").write_text("Barney: BEER.", encoding="utf-8")  # no final newline
  (folder / "a.txt").write_text("Moe: hey.\n", encoding="utf-8")
  (folder / "c.md").write_text("Carl: hi.\nLenny: yo.\n" * 10, encoding="utf-8")
  (folder / ".hidden").write_text("never read", encoding="utf-8")
  sources = textstream.list_sources(str(folder))
  assert [Path(s.path).relative_to(folder.resolve()).as_posix() for s in sources] == [
      "a.txt", "b/2.txt", "c.md"]
  joined = textstream.join_texts([s.path.read_text() for s in sources])
  assert joined.startswith("Moe: hey.\n\nBarney: BEER.\n\nCarl: hi.\n")
  assert_same_corpus(corpus_of(folder, tmp_path / "c"), whole_text_corpus(joined))
  glob_sources = textstream.list_sources(str(folder / "**" / "*.txt"))
  assert [s.path.name for s in glob_sources] == ["a.txt", "2.txt"]
  # Adding or removing a file (or changing one) invalidates the folder's cache.
  assert encode(folder, tmp_path / "c").reused
  (folder / "d.txt").write_text("Homer: d'oh.\n", encoding="utf-8")
  assert not encode(folder, tmp_path / "c").reused
  (folder / "a.txt").unlink()
  assert not encode(folder, tmp_path / "c").reused


def test_the_first_line_says_how_many_files_and_characters(tmp_path, capsys):
  folder = tmp_path / "texts"
  folder.mkdir()
  for name in ("one.txt", "two.txt"):
    (folder / name).write_text(TINY_TEXT, encoding="utf-8")
  from jaxchar.training import loop
  loop.train_and_evaluate(tiny_config(folder, epochs=1, steps_per_epoch=2), tmp_path / "run")
  first = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("devices: "))  # after the workdir line
  chars = 2 * len(TINY_TEXT) + 1
  assert f"corpus: 2 files, {chars:,} characters (encoded into the id cache" in first, first
  assert str(tmp_path / "corpus_cache") in first  # beside the workdir by default
  loop.train_and_evaluate(tiny_config(folder, epochs=2, steps_per_epoch=2), tmp_path / "run")
  assert "(id cache read in" in capsys.readouterr().out


def test_non_utf8_deep_in_a_file_names_its_byte_and_line_and_leaves_nothing(tmp_path,
                                                                           monkeypatch):
  monkeypatch.setattr(textstream, "CHUNK_BYTES", SMALL_CHUNK)
  path = tmp_path / "big.txt"
  good = "ünïcode line\n" * 50  # two-byte characters split across reads
  path.write_bytes(good.encode("utf-8") + b"caf\xe9\n")
  with pytest.raises(UserError) as caught:
    encode(path, tmp_path / "c")
  offset = len(good.encode("utf-8")) + 3
  assert f"is not valid UTF-8: byte {offset} (line 51) is b'\\xe9'" in str(caught.value)
  assert list((tmp_path / "c").iterdir()) == []


def test_a_full_disk_while_writing_leaves_no_partial_cache(tmp_path, monkeypatch):
  monkeypatch.setattr(textstream, "CHUNK_BYTES", 64)
  path = tmp_path / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  encode(path, tmp_path / "c")
  path.write_text(TINY_TEXT * 2, encoding="utf-8")  # stale: to be rebuilt
  real_write, writes = idcache._IdWriter.write, []

  def write_until_full(self, raw, vocab_size):
    writes.append(len(raw))
    if len(writes) > 3:
      raise OSError(errno.ENOSPC, "No space left on device")
    real_write(self, raw, vocab_size)
  monkeypatch.setattr(idcache._IdWriter, "write", write_until_full)
  with pytest.raises(UserError, match="could not be written in .*No space left on device.*"
                                      "Nothing was left half-written.*--cache_dir"):
    encode(path, tmp_path / "c")
  assert list((tmp_path / "c").iterdir()) == []  # no partial file; the stale cache removed
  monkeypatch.setattr(idcache._IdWriter, "write", real_write)
  assert_same_corpus(corpus_of(path, tmp_path / "c"), whole_text_corpus(TINY_TEXT * 2))


def test_a_cache_folder_that_is_not_writable_is_a_clear_error(tmp_path, monkeypatch):
  path = tmp_path / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  (tmp_path / "ro").mkdir()
  monkeypatch.setattr(idcache.os, "access", lambda *a: False)  # as root, chmod would not do
  with pytest.raises(UserError, match="--cache_dir=.*ro is not writable.*point --cache_dir"):
    encode(path, tmp_path / "ro")


def test_a_text_changing_while_encoded_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(textstream, "CHUNK_BYTES", 64)
  path = tmp_path / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  real_read = textstream._decoded

  def growing(source, chunk_bytes):
    for i, piece in enumerate(real_read(source, chunk_bytes)):
      if i == 2:
        with open(path, "a", encoding="utf-8") as f:
          f.write("moe: still writing\n")
      yield piece
  monkeypatch.setattr(textstream, "_decoded", growing)
  with pytest.raises(UserError, match="changed while it was being read"):
    encode(path, tmp_path / "c")
  assert list((tmp_path / "c").iterdir()) == []


def test_each_process_reads_only_its_share_of_a_batch(tmp_path, monkeypatch):
  """Two processes of two devices: each reads the windows of its own rows of the global batch,
  disjoint, together the whole batch."""
  path = tmp_path / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  corpus = data.from_encoded(encode(path, tmp_path / "c"), maxlen=8, stride=2, val_fraction=0.1)
  starts = data.train_batch_starts(corpus, 3, 16, seed=0, epoch=1).reshape(4, 4)
  read = {}
  for process in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=process: p)
    monkeypatch.setattr(jax, "local_device_count", lambda: 2)
    mine = distributed.process_slice(starts)
    windows, _ = data.device_batch(corpus, mine)
    read[process] = set(mine.reshape(-1).tolist())
    for row, s in enumerate(mine.reshape(-1)):
      device, slot = divmod(row, 4)
      assert windows[device, slot * 9:(slot + 1) * 9].tolist() == corpus.read(s, s + 9).tolist()
  assert not read[0] & read[1]
  assert read[0] | read[1] == set(starts.reshape(-1).tolist())


def test_the_cache_folder_defaults_to_beside_the_workdir(tmp_path):
  assert text.cache_folder(tmp_path / "ckpt" / "moe", None) == tmp_path / "ckpt" / "corpus_cache"
  assert text.cache_folder(tmp_path / "run", str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"


def test_the_header_records_what_the_cache_holds(tmp_path):
  path = tmp_path / "tiny.txt"
  path.write_text(TINY_TEXT, encoding="utf-8")
  encoded = encode(path, tmp_path / "c")
  header = json.loads(encoded.path.with_suffix(".json").read_text(encoding="utf-8"))
  assert header["num_chars"] == len(TINY_TEXT) and header["dtype"] == "uint8"
  assert header["sources"][0]["path"] == str(path.resolve())
