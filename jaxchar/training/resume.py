"""What a checkpoint records of its run (the model's spec, the training config once, the corpus'
identity), and whether a run with today's options may resume it: options that change what the
parameters, the data order or the optimizer state mean are refused; the rest may change between
sessions and are named on the run's second line."""

import dataclasses
import json
from pathlib import Path

from jaxchar.core.data import Corpus
from jaxchar.core.spec import OPTIONS, PREDATING, SHAPE, ModelSpec
from jaxchar.errors import UserError
from jaxchar.training.config import Config

# Options that fix the meaning of a checkpoint's parameters, its position in the data or the
# shape of its optimizer state: a different value cannot resume it.
FIXED = (*SHAPE, "stride", "batch_size", "val_fraction", "seed", "optimizer", "carry_state")
# Options that say where this session reads from, not how it trains: not compared.
NOT_COMPARED = ("data", "restart", "init_from", "init_vocab")


def run_metadata(config: Config, corpus: Corpus) -> dict:
  """What a checkpoint must carry besides the state: the model's spec, the rest of the training
  config (the spec's fields are saved once, in the spec) and the corpus' identity."""
  rest = {k: v for k, v in dataclasses.asdict(config).items() if k not in OPTIONS}
  return {"spec": ModelSpec.of(config, corpus.vocab).to_dict(), "config": _as_saved(rest),
          "corpus_sha256": corpus.sha256, "corpus_chars": corpus.num_chars}


def _as_saved(values: dict) -> dict:
  """Values as a checkpoint's JSON gives them back (tuples become lists)."""
  return json.loads(json.dumps(values))


# Options renamed since format 1: old name -> new name.
RENAMED = {"step": "stride"}


def saved_config(meta: dict) -> dict:
  """The training options a checkpoint (or a run's metadata) was written with, by today's names:
  the spec's fields from its spec, options it predates filled in."""
  saved = {RENAMED.get(k, k): v for k, v in meta.get("config", {}).items()}
  spec = ModelSpec.from_meta(meta).options()
  return {**_as_saved(dataclasses.asdict(Config())), **PREDATING, **saved, **spec}


def _scheduled(options: dict) -> bool:
  """Whether the optimizer follows a schedule (its state then counts steps)."""
  return options["lr_schedule"] != "constant" or options["warmup_steps"] > 0


def check_resumable(meta: dict, run_meta: dict, workdir: Path) -> list[str]:
  """The options that differ from the checkpoint's and may (as '--name=new (was old)');
  UserError, touching nothing, when one that may not differs."""
  saved, now = saved_config(meta), saved_config(run_meta)
  saved_spec, spec = ModelSpec.from_meta(meta), ModelSpec(**run_meta["spec"])
  diffs = [f"{k} {_short(saved[k])} (checkpoint) vs {_short(now[k])} (now)"
           for k in FIXED if saved[k] != now[k]]
  if saved_spec.vocab != spec.vocab:
    diffs.append(f"vocab {_short(saved_spec.vocab)} (checkpoint) vs {_short(spec.vocab)} (now)")
  if meta.get("corpus_sha256") != run_meta["corpus_sha256"]:
    diffs.append("the text (--data) differs from the one it was trained on")
  if _scheduled(saved) != _scheduled(now):
    diffs.append(f"lr_schedule {saved['lr_schedule']} with warmup_steps {saved['warmup_steps']} "
                 f"(checkpoint) vs {now['lr_schedule']} with {now['warmup_steps']} (now): a "
                 "constant rate without warmup keeps no step count in the optimizer")
  if (saved["clip_norm"] > 0) != (now["clip_norm"] > 0):
    diffs.append(f"clip_norm {saved['clip_norm']} (checkpoint) vs {now['clip_norm']} (now): "
                 "clipping on or off changes the optimizer's state")
  if diffs:
    raise UserError(
        f"{workdir} holds checkpoints of a different run, so it cannot be resumed: "
        f"{'; '.join(diffs)}. Rerun with the same settings, or start afresh with --restart "
        "(existing checkpoints are moved aside, not deleted) or a new --workdir.")
  return [f"--{k}={_flag(now[k])} (was {_flag(saved[k])})" for k in now
          if k not in FIXED + NOT_COMPARED and k in saved and saved[k] != now[k]]


def _flag(value) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, list):
    return ",".join(map(str, value))
  return str(value)


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 24 else text[:21] + "...'"
