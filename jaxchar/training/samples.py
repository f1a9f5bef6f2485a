"""The trainer's per-epoch samples: plain text for the terminal, Markdown for samples.md."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxchar.core.data import Corpus
from jaxchar.core.model import CharLSTM
from jaxchar.core.terminal import shown
from jaxchar.sampling.generate import GENERATORS
from jaxchar.training.config import Config


def epoch_samples(params, model: CharLSTM, corpus: Corpus, config: Config,
                  epoch: int) -> tuple[str, str, dict[float, str]]:
  """Generates from a random training window at every temperature:
  (text for the terminal, control characters escaped; Markdown for samples.md and
  {temperature: seed window + sample}, both exact)."""
  rng = np.random.default_rng([config.seed, epoch, 1])
  start = int(rng.integers(0, corpus.cut - config.maxlen))
  seed_ids = corpus.read(start, start + config.maxlen)
  temps = jnp.asarray(config.temperatures, jnp.float32)
  context = jnp.broadcast_to(jnp.asarray(seed_ids), (len(temps), config.maxlen))
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), epoch)
  generated = GENERATORS[config.sample_mode](model, params, context, temps, key,
                                            config.sample_len)
  seed_text = corpus.vocab.decode(seed_ids)
  texts = {t: f"[{seed_text}]{corpus.vocab.decode(row)}"
           for t, row in zip(config.temperatures, np.asarray(generated))}
  plain = [f"samples after epoch {epoch} (the seed window from the training text in brackets):"]
  plain += [f"----- temperature {t}\n{text}" for t, text in texts.items()]
  markdown = [f"## Epoch {epoch}\n\nSeed window (in brackets below): `{seed_text!r}`\n"]
  markdown += [f"### Temperature {t}\n\n```\n{text}\n```\n" for t, text in texts.items()]
  return shown("\n".join(plain)) + "\n", "\n".join(markdown), texts
