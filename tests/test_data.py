"""Vocabulary, split, windows and batches."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import epoch_order, train_starts, val_starts, window_starts
from jaxchar.core import data, idmap
from jaxchar.errors import UserError


def test_reference_counts_on_the_real_corpus(moes_text):
  corpus = data.build_corpus(moes_text, maxlen=60, stride=3, val_fraction=0.1)
  assert len(moes_text) == 305_270
  assert corpus.vocab.size == 65
  assert corpus.cut == 275_100
  assert corpus.num_train_windows == 91_680
  assert corpus.num_val_windows == 30_110


def test_split_is_at_the_first_paragraph_break_after_the_fraction():
  text = "a\n\nbbbbbbbb\n\ncc\n\nd"
  nominal = int(0.5 * len(text))
  assert data.split_index(text, 0.5) == text.find("\n\n", nominal)
  assert data.split_index("abcdefghij", 0.2) == 8  # no break after: the nominal index itself


def test_windows_stop_before_the_last_target():
  starts = window_starts(10, 4, 3)
  assert starts.tolist() == [0, 3]  # 3 + 4 < 10 but 6 + 4 == 10 has no target
  assert window_starts(4, 4, 1).tolist() == []


def test_vocab_round_trip():
  text = "moe_szyslak: hey, homer!\n¿qué?"
  vocab = data.Vocab.from_text(text)
  assert vocab.chars == "".join(sorted(set(text)))
  ids = vocab.encode(text)
  assert ids.dtype == np.uint8  # vocabularies of up to 256 symbols: 1 byte per character
  assert data.Vocab.from_text("".join(map(chr, range(300)))).encode("\x05").dtype == np.uint16
  assert data.Vocab.from_text("".join(map(chr, range(70_000)))).encode("\x05").dtype == np.uint32
  assert vocab.decode(ids) == text
  assert vocab.unknown("hey zz#") == ["#"]


def test_lowercase_is_optional():
  assert data.build_corpus("AbC" * 20, maxlen=4, stride=1, val_fraction=0.5,
                           lowercase=False).vocab.chars == "ACb"
  assert data.build_corpus("AbC" * 20, maxlen=4, stride=1, val_fraction=0.5).vocab.chars == "abc"


def test_validation_windows_are_every_start_after_the_cut(tiny_text):
  corpus = data.build_corpus(tiny_text, maxlen=8, stride=3, val_fraction=0.2)
  assert val_starts(corpus)[0] == corpus.cut
  assert np.all(np.diff(val_starts(corpus)) == 1)
  assert val_starts(corpus)[-1] + 8 == len(tiny_text) - 1
  assert train_starts(corpus)[-1] + 8 < corpus.cut


def test_too_short_corpus_is_refused():
  with pytest.raises(UserError, match="too few for one window"):
    data.build_corpus("short text", maxlen=60, stride=3, val_fraction=0.1)
  with pytest.raises(UserError, match="validation part"):
    data.build_corpus("xy" * 100, maxlen=60, stride=3, val_fraction=0.1)


def test_epoch_order_is_seeded_and_differs_between_epochs():
  a = epoch_order(1000, seed=0, epoch=1)
  assert np.array_equal(a, epoch_order(1000, seed=0, epoch=1))
  assert not np.array_equal(a, epoch_order(1000, seed=0, epoch=2))
  assert not np.array_equal(a, epoch_order(1000, seed=1, epoch=1))
  assert sorted(a.tolist()) == list(range(1000))


@pytest.mark.parametrize("num_windows", [1, 2, 3, 5, 64, 1000, 4097])
def test_the_shuffle_is_a_bijection_computed_for_any_positions(num_windows):
  order = epoch_order(num_windows, seed=3, epoch=2)
  assert sorted(order.tolist()) == list(range(num_windows))
  some = np.array([num_windows - 1, 0, num_windows // 2])
  assert data.shuffled(some, num_windows, 3, 2).tolist() == order[some].tolist()


def test_the_shuffle_of_billions_of_windows_needs_no_array_of_them():
  num_windows = 3 * 2**32 + 5  # far more than an int32 (or this machine's memory) holds
  positions = np.arange(num_windows - 50_000, num_windows)
  picked = data.shuffled(positions, num_windows, 0, 1)
  assert picked.dtype == np.int64 and (picked >= 0).all() and (picked < num_windows).all()
  assert len(set(picked.tolist())) == len(picked)  # distinct: no two positions share a window
  assert picked.max() > 2**33  # reaches far past 2**32


def _corpus(ids: np.ndarray, maxlen: int, stride: int, cut: int | None = None) -> data.Corpus:
  return data.Corpus(data.Vocab("".join(map(chr, range(256)))), ids, None,
                     len(ids) if cut is None else cut, maxlen, stride, "")


def test_train_batches_are_the_shuffled_windows_in_device_shape():
  ids = (np.arange(400) % 251).astype(np.uint8)
  corpus = _corpus(ids, maxlen=8, stride=3)
  assert corpus.num_train_windows == len(window_starts(400, 8, 3)) == 131
  order = epoch_order(corpus.num_train_windows, 0, 1)
  starts = data.train_batch_starts(corpus, 2, 16, seed=0, epoch=1)
  assert starts.tolist() == (order[32:48] * 3).tolist()
  windows, local = data.device_batch(corpus, starts.reshape(4, 4))
  assert windows.shape == (4, 4 * 9) and local.tolist() == [[0, 9, 18, 27]] * 4
  for device in range(4):
    for row in range(4):
      s = starts[device * 4 + row]
      assert windows[device, row * 9:(row + 1) * 9].tolist() == ids[s:s + 9].tolist()


@pytest.mark.parametrize("read", ["pread", "indexed"])
def test_windows_are_read_at_offsets_past_2_to_the_31(tmp_path, read):
  """A sparse file of 2**31 + 100 ids: windows near its end are read at 64-bit offsets, by
  pread (idmap.WindowReader, as from a cache this large) or by indexing the memory map."""
  path = tmp_path / "sparse.ids"
  size = 2**31 + 100
  with open(path, "wb") as f:
    f.truncate(size)
    f.seek(size - 20)
    f.write(bytes(range(1, 21)))
  ids = np.memmap(path, np.uint8, mode="r")
  corpus = dataclasses.replace(_corpus(ids, maxlen=8, stride=1),
                               reader=idmap.WindowReader.of(ids) if read == "pread" else None)
  assert (corpus.reader is None) == (read == "indexed")
  assert corpus.num_train_windows == size - 8
  last = corpus.num_train_windows - 1
  windows, _ = data.device_batch(corpus, np.array([[last, last - 5]]))
  assert windows[0, :9].tolist() == list(range(12, 21))
  assert windows[0, 9:].tolist() == list(range(7, 16))
  starts = data.train_batch_starts(corpus, corpus.num_train_windows // 16 - 1, 16, 0, 1)
  assert starts.dtype == np.int64 and (starts < size - 8).all()


def test_a_window_read_short_is_an_error_not_a_shorter_window(tmp_path):
  path = tmp_path / "short.ids"
  path.write_bytes(bytes(range(100)))
  reader = idmap.WindowReader(path, np.uint8)
  assert reader.read(np.array([[3, 90]]), 10).tolist() == [[list(range(3, 13)),
                                                            list(range(90, 100))]]
  with pytest.raises(OSError, match="shorter than its id cache's header says"):
    reader.read(np.array([95]), 10)


def test_eval_batches_cover_every_window_once():
  starts = np.arange(10, 33, dtype=np.int32)
  seen = []
  for s, w in data.eval_batches(starts, batch_size=8, num_devices=4):
    assert s.shape == w.shape == (4, 2)
    seen.extend(s.reshape(-1)[w.reshape(-1) > 0].tolist())
  assert seen == starts.tolist()


def test_gather_windows_matches_slicing():
  ids = np.arange(50, dtype=np.int32) * 7
  starts = np.array([0, 5, 41], np.int32)
  batch = data.gather_windows(jnp.asarray(ids), jnp.asarray(starts), 8)
  for row, s in enumerate(starts):
    assert batch["inputs"][row].tolist() == ids[s:s + 8].tolist()
    assert int(batch["targets"][row]) == ids[s + 8]


def test_evenly_spaced_validation_subset():
  ids = np.zeros(2000, np.uint8)
  ids[1] = 1  # two symbols
  corpus = _corpus(ids, maxlen=8, stride=3, cut=1000)
  assert len(data.validation_starts(corpus, 5000)) == corpus.num_val_windows  # all of them
  subset = data.validation_starts(corpus, 10)
  assert len(subset) == 10 and subset[0] == 1000 and subset[-1] == 1000 + 991
  assert (np.diff(subset) > 100).all() and (np.diff(subset) < 120).all()
  np.testing.assert_array_equal(subset, data.validation_starts(corpus, 10))  # every epoch
