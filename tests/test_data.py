"""Vocabulary, split, windows and batches."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxchar.core import data
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
  starts = data.window_starts(10, 4, 3)
  assert starts.tolist() == [0, 3]  # 3 + 4 < 10 but 6 + 4 == 10 has no target
  assert data.window_starts(4, 4, 1).tolist() == []


def test_vocab_round_trip():
  text = "moe_szyslak: hey, homer!\n¿qué?"
  vocab = data.Vocab.from_text(text)
  assert vocab.chars == "".join(sorted(set(text)))
  ids = vocab.encode(text)
  assert ids.dtype == np.uint8  # vocabularies of up to 256 symbols: 1 byte per character
  assert data.Vocab.from_text("".join(map(chr, range(300)))).encode("\x05").dtype == np.int32
  assert vocab.decode(ids) == text
  assert vocab.unknown("hey zz#") == ["#"]


def test_lowercase_is_optional():
  assert data.build_corpus("AbC" * 20, maxlen=4, stride=1, val_fraction=0.5,
                           lowercase=False).vocab.chars == "ACb"
  assert data.build_corpus("AbC" * 20, maxlen=4, stride=1, val_fraction=0.5).vocab.chars == "abc"


def test_validation_windows_are_every_start_after_the_cut(tiny_text):
  corpus = data.build_corpus(tiny_text, maxlen=8, stride=3, val_fraction=0.2)
  assert corpus.val_starts[0] == corpus.cut
  assert np.all(np.diff(corpus.val_starts) == 1)
  assert corpus.val_starts[-1] + 8 == len(tiny_text) - 1
  assert corpus.train_starts[-1] + 8 < corpus.cut


def test_too_short_corpus_is_refused():
  with pytest.raises(UserError, match="too few for one window"):
    data.build_corpus("short text", maxlen=60, stride=3, val_fraction=0.1)
  with pytest.raises(UserError, match="validation part"):
    data.build_corpus("xy" * 100, maxlen=60, stride=3, val_fraction=0.1)


def test_epoch_order_is_seeded_and_differs_between_epochs():
  a = data.epoch_order(1000, seed=0, epoch=1)
  assert np.array_equal(a, data.epoch_order(1000, seed=0, epoch=1))
  assert not np.array_equal(a, data.epoch_order(1000, seed=0, epoch=2))
  assert not np.array_equal(a, data.epoch_order(1000, seed=1, epoch=1))
  assert sorted(a.tolist()) == list(range(1000))


def test_train_batches_are_device_shaped_and_drop_the_partial_batch():
  starts = np.arange(100, dtype=np.int32) * 3
  order = data.epoch_order(100, 0, 1)
  batches = data.train_batches(starts, order, batch_size=16, num_devices=4)
  assert batches.shape == (6, 4, 4)
  assert np.array_equal(batches.reshape(-1), starts[order[:96]])
  # The same global batches whatever the device count.
  one = data.train_batches(starts, order, batch_size=16, num_devices=1)
  assert np.array_equal(one.reshape(6, 16), batches.reshape(6, 16))


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
  starts = np.arange(1000, 2000, dtype=np.int32)
  assert data.evenly_spaced(starts, 5000) is starts  # at or below the limit: all of them
  subset = data.evenly_spaced(starts, 10)
  assert len(subset) == 10 and subset[0] == 1000 and subset[-1] == 1999
  assert (np.diff(subset) > 100).all() and (np.diff(subset) < 120).all()
  np.testing.assert_array_equal(subset, data.evenly_spaced(starts, 10))  # the same every epoch
