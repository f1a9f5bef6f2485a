"""Trains a character-level LSTM: `python -m jaxchar.train --flagfile=launch/moe.flags`."""

from absl import app, flags

from jaxchar.config import Config, parse_temperatures
from jaxchar.errors import UserError, exits_on_user_error
from jaxchar.loop import train_and_evaluate

_DEFAULTS = Config()
flags.DEFINE_string("data", _DEFAULTS.data, "UTF-8 text to train on. The default Moe's Tavern "
                    "corpus is fetched (mirror or download) and checksum-verified when missing.")
flags.DEFINE_bool("lowercase", _DEFAULTS.lowercase, "Lowercase the text before building the "
                  "vocabulary.")
flags.DEFINE_integer("maxlen", _DEFAULTS.maxlen, "Window length in characters (model context).")
flags.DEFINE_integer("step", _DEFAULTS.step, "Characters between consecutive training windows.")
flags.DEFINE_float("val_fraction", _DEFAULTS.val_fraction, "Share (0 to <1) of the text, from the end and "
                   "cut at a paragraph break, held out for validation; 0 = none.")
flags.DEFINE_integer("hidden", _DEFAULTS.hidden, "LSTM units.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size in windows, split "
                     "evenly over all devices.")
flags.DEFINE_integer("eval_batch_size", _DEFAULTS.eval_batch_size, "Global batch size in "
                     "windows for validation (rounded up to a multiple of the device count).")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "RMSprop learning rate.")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Passes over the training windows.")
flags.DEFINE_integer("steps_per_epoch", _DEFAULTS.steps_per_epoch, "Cap on steps per epoch "
                     "(for quick runs); 0 = every full batch.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for initialisation, shuffling and sampling.")
flags.DEFINE_list("temperatures", [str(t) for t in _DEFAULTS.temperatures], "Sampling "
                  "temperatures for the per-epoch samples, comma-separated.")
flags.DEFINE_integer("sample_len", _DEFAULTS.sample_len, "Characters generated per temperature "
                     "after each epoch; 0 = no samples.")
flags.DEFINE_integer("save_every_steps", _DEFAULTS.save_every_steps, "Also checkpoint every "
                     "this many steps; 0 = only at epoch ends and on SIGTERM/SIGINT.")
flags.DEFINE_integer("keep", _DEFAULTS.keep, "Most recent checkpoints to keep, besides the best "
                     "by validation loss.")
flags.DEFINE_bool("restart", _DEFAULTS.restart, "Start afresh: move the previous run's "
                  "checkpoints, metrics and samples in --workdir to replaced/<time>/ instead of "
                  "resuming from them.")
flags.DEFINE_integer("log_every", _DEFAULTS.log_every, "Steps between metrics.jsonl and "
                     "TensorBoard records (each epoch end is recorded too).")
flags.DEFINE_string("workdir", "ckpt/moe", "Folder for this run: checkpoints/, metrics.jsonl, "
                    "tensorboard/, samples.md, loss.png. "
                    "Rerunning with the same folder resumes from its latest checkpoint.")
FLAGS = flags.FLAGS

def config_from_flags() -> Config:
  """The frozen, validated Config described by the parsed flags."""
  return Config(
      data=FLAGS.data, lowercase=FLAGS.lowercase, maxlen=FLAGS.maxlen, step=FLAGS.step,
      val_fraction=FLAGS.val_fraction, hidden=FLAGS.hidden, batch_size=FLAGS.batch_size,
      eval_batch_size=FLAGS.eval_batch_size, learning_rate=FLAGS.learning_rate,
      epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, seed=FLAGS.seed,
      temperatures=parse_temperatures(FLAGS.temperatures), sample_len=FLAGS.sample_len,
      save_every_steps=FLAGS.save_every_steps, keep=FLAGS.keep, restart=FLAGS.restart,
      log_every=FLAGS.log_every,
  ).validate()


@exits_on_user_error
def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag (see --help).")
  train_and_evaluate(config_from_flags(), FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
