"""Samples from a trained checkpoint: `python -m jaxchar.sample --workdir=ckpt/moe --prime=...`.

Needs no training flags: vocabulary, model shape and window length come from the checkpoint.
"""

from pathlib import Path

from absl import app, flags

from jaxchar import host, logs
from jaxchar.config import SampleConfig, parse_temperatures
from jaxchar.errors import UserError, exits_on_user_error
from jaxchar.sampler import run_sampling

flags.DEFINE_string("workdir", "ckpt/moe", "The training run's folder (the trainer's --workdir).")
flags.DEFINE_integer("step", None, "Checkpoint step to sample from. Default: the checkpoint with "
                     "the best (lowest) validation loss; the latest if none has one.")
flags.DEFINE_string("prime", "", "Text to continue; lowercased if the model was trained "
                    "lowercased. Empty = start from a line break. Only its last maxlen "
                    "characters are used as context.")
flags.DEFINE_string("prime_file", None, "Read the prime from this UTF-8 file instead.")
flags.DEFINE_list("temperature", ["0.5"], "One temperature or a comma-separated list.")
flags.DEFINE_integer("length", 400, "Characters to generate per sample.")
flags.DEFINE_integer("num_samples", 1, "Samples per temperature.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("top_k", 0, "Draw only from the k most likely characters; 0 = off.")
flags.DEFINE_enum("unknown", "error", ["error", "skip"], "Prime characters the model never saw: "
                  "stop with an error listing them, or skip (drop) them.")
flags.DEFINE_enum("mode", "window", ["window", "stateful"], "window: rerun the LSTM over the "
                  "last maxlen characters for each new one, as in training (default); "
                  "stateful: carry the LSTM state, one step per character (faster).")
FLAGS = flags.FLAGS


def _read_prime() -> str:
  if FLAGS.prime_file is None:
    return FLAGS.prime
  try:
    return Path(FLAGS.prime_file).read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"--prime_file={FLAGS.prime_file} cannot be read as UTF-8 text ({e}); "
                    "check the path, or pass the prime with --prime.") from None


def config_from_flags() -> SampleConfig:
  return SampleConfig(
      workdir=FLAGS.workdir, step=FLAGS.step, prime=_read_prime(),
      temperatures=parse_temperatures(FLAGS.temperature, "temperature"), length=FLAGS.length,
      num_samples=FLAGS.num_samples, seed=FLAGS.seed, top_k=FLAGS.top_k, unknown=FLAGS.unknown,
      mode=FLAGS.mode,
  ).validate()


@exits_on_user_error
def main(argv: list[str]) -> None:
  logs.quiet_library_logs()
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --help).")
  # One device, unlike the trainer: sampling is one sequential jitted loop, which more CPU
  # devices would not share.
  host.keep_freed_memory()
  print(run_sampling(config_from_flags()))


if __name__ == "__main__":
  app.run(main)
