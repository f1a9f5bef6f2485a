"""The compile check: a run's programs compiled for a TPU topology, each program's memory per
chip against the chip's HBM, and the largest global batch that fits when the run's does not."""

import dataclasses

from jaxchar.aot import flops, programs
from jaxchar.aot.topologies import Topology
from jaxchar.core import corpus as corpus_lib
from jaxchar.core.data import Vocab
from jaxchar.core.model import count_params
from jaxchar.errors import UserError
from jaxchar.options import option
from jaxchar.sampling.controls import SAMPLE_MODES
from jaxchar.training.config import DEFAULT_DATA, Config
from jaxchar.training.startup import check_batch_fits

ASSUMED_CORPUS_CHARS = 1_000_000


@dataclasses.dataclass(frozen=True)
class CheckConfig:
  """What `python -m jaxchar.compile_check` takes besides the training flags."""

  topology: str = option("", "TPU topology to compile for, as Cloud names it (v5e-8, v4-8, "
                         "v5p-8, v6e-8, ...) or in JAX's form (v5e:2x4), or a GPU host "
                         "(h100-1 to h100-8); no TPU or GPU needed.")
  vocab_size: int = option(0, "Vocabulary size; 0 = read --data (lowercased if --lowercase) "
                           "and count its symbols.")
  corpus_chars: int = option(0, "Corpus length in characters (every chip holds the corpus' "
                             "ids); 0 = --data's length, or 1,000,000 with --vocab_size and no "
                             "--data file.")
  search_batch: bool = option(True, "When the train step does not fit, compile smaller global "
                              "batches to name the largest that fits.")
  fit_table: bool = option(False, "Instead of checking the run, print what fits where: the "
                           "train step's memory per chip for hidden 128 to 2048, 1 to 3 layers "
                           "and global batches 128 to 16,384, for each of the comma-separated "
                           "--topology names (slow: a compile per cell).")


@dataclasses.dataclass(frozen=True)
class Report:
  """What the check found."""

  topology: Topology
  config: Config
  vocab: int
  corpus_chars: int
  corpus_assumed: bool
  compiled: list[programs.Compiled]
  flops_check: tuple[float, float] | None  # XLA's and the analytic count, 1-character window
  largest_batch: int | None  # when the run's train step does not fit

  def overflowing(self) -> list[programs.Compiled]:
    return [c for c in self.compiled if c.peak_bytes > self.topology.chip.hbm_bytes]


def corpus_shape(config: Config, check: CheckConfig) -> tuple[int, int, bool]:
  """(vocabulary size, corpus characters, whether the length is assumed)."""
  if check.vocab_size < 0 or check.corpus_chars < 0:
    raise UserError("--vocab_size and --corpus_chars must be >= 0 (0 = from --data).")
  if check.vocab_size == 1:
    raise UserError("--vocab_size=1 leaves nothing to predict; give at least 2.")
  if check.vocab_size:
    if check.corpus_chars:
      return check.vocab_size, check.corpus_chars, False
    try:
      return check.vocab_size, len(corpus_lib.read_text(config.data, DEFAULT_DATA)), False
    except UserError:
      return check.vocab_size, ASSUMED_CORPUS_CHARS, True
  text = corpus_lib.read_text(config.data, DEFAULT_DATA)
  vocab = Vocab.from_text(text.lower() if config.lowercase else text).size
  return vocab, check.corpus_chars or len(text), False


def largest_fitting_batch(config: Config, vocab: int, corpus_chars: int, topology: Topology,
                          too_big_peak: int) -> int | None:
  """The largest global batch (a multiple of the device count) whose train step fits, to within
  12.5%, each answer a compile: a step's peak memory grows about linearly with its batch, so
  each guess is read off the line through the nearest sizes that fit and do not, and the size
  12.5% beyond it on the other side is compiled too (near the limit XLA's memory is not
  monotonic in the batch, so the answer is a size that fits with one within 12.5% above it
  that does not). `too_big_peak`: the peak of --batch_size's step, compiled already."""
  n, hbm = len(topology.devices), topology.chip.hbm_bytes
  high = config.batch_size // n  # per device; known not to fit
  peaks: dict[int, int] = {high: too_big_peak}
  refused: set[int] = set()  # XLA keeps some HBM for itself: a peak under it may not fit

  def fits(per_device: int) -> bool:
    if per_device not in peaks:
      compiled = programs.train_step(config, vocab, corpus_chars, topology.devices,
                                     per_device * n)
      peaks[per_device] = compiled.peak_bytes
      if compiled.out_of_memory:
        refused.add(per_device)
    return peaks[per_device] <= hbm and per_device not in refused

  low = 1
  if not fits(low):
    return None
  while high - low > max(1, low // 8):
    slope = (peaks[high] - peaks[low]) / (high - low)
    guess = low + int((hbm - peaks[low]) / slope) if slope > 0 else (low + high) // 2
    guess = min(max(guess, low + 1), high - 1)
    if fits(guess):
      low, edge = guess, guess + max(1, guess // 8)  # the tolerance's edge above it
    else:
      high, edge = guess, guess - max(1, guess // 9)  # and below it
    if low < edge < high:
      low, high = (edge, high) if fits(edge) else (low, edge)
  return low * n


def run_check(config: Config, check: CheckConfig, topology: Topology) -> Report:
  """Compiles every program the run would execute for `topology`."""
  n = len(topology.devices)
  check_batch_fits(config.batch_size, n)
  vocab, corpus_chars, assumed = corpus_shape(config, check)
  device = topology.devices[0]
  compiled = [programs.train_step(config, vocab, corpus_chars, topology.devices,
                                  config.batch_size),
              programs.eval_step(config, vocab, corpus_chars, topology.devices)]
  if config.sample_len:
    compiled.append(programs.epoch_samples(config, vocab, device))
  for mode in SAMPLE_MODES:
    compiled += programs.server_generation(config, vocab, device, mode)
  largest = None
  if compiled[0].peak_bytes > topology.chip.hbm_bytes and check.search_batch:
    largest = largest_fitting_batch(config, vocab, corpus_chars, topology, compiled[0].peak_bytes)
  flops_check = (programs.analytic_check(config, vocab, topology.devices)
                 if topology.platform == "tpu" else None)  # XLA's GPU backend gives no costs
  return Report(topology, config, vocab, corpus_chars, assumed, compiled, flops_check, largest)


def _size(nbytes: float) -> str:
  for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
    if nbytes >= scale:
      return f"{nbytes / scale:,.1f} {unit}"
  return f"{nbytes:,.0f} B"


def format_report(report: Report) -> str:
  """The check's output: the setting, a table per program, the FLOPs check, the verdict."""
  t, c = report.topology, report.config
  hbm = t.chip.hbm_bytes
  shape = programs.flop_shape(c, report.vocab)
  num_params = count_params(programs.abstract_state(c, report.vocab).params)
  corpus = f"{report.corpus_chars:,} characters" + (" (assumed, --corpus_chars)"
                                                    if report.corpus_assumed else "")
  lines = [
      f"topology {t.name} = {t.jax_name}: {len(t.devices)} x {t.chip.name} in {t.num_hosts} "
      f"host(s), {_size(hbm)} HBM per chip (published); compiled on this machine by "
      f"{'libtpu, no TPU' if t.platform == 'tpu' else 'the jax-cuda12 plugin, no GPU'} used",
      f"run: vocabulary {report.vocab}, corpus {corpus}, {num_params:,} parameters "
      f"(hidden {c.hidden}, {c.num_layers} layer(s), embedding {c.embed_dim or 'one-hot'}), "
      f"{c.dtype}, {c.lstm_impl} LSTM, objective {c.objective}, window {c.maxlen}, global "
      f"batch {c.batch_size} ({c.batch_size // len(t.devices)} per chip)",
      "",
      "| program | compile | arguments | outputs | temporaries | peak per chip | of HBM | fits "
      "| GFLOP per chip (analytic) | XLA GFLOP (loop bodies once) |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for p in report.compiled:
    lines.append(
        f"| {p.name} | {p.compile_s:.1f} s | {_size(p.argument_bytes)} | {_size(p.output_bytes)} "
        f"| {_size(p.temp_bytes)} | {_size(p.peak_bytes)} | {p.peak_bytes / hbm:.1%} | "
        f"{'yes' if p.peak_bytes <= hbm else 'NO'} | {p.flops / 1e9:,.3f} | "
        + (f"{p.xla_flops / 1e9:,.3f} |" if p.xla_flops else "n/a |"))
  step_bytes = flops.train_step_bytes(shape, c.batch_size // len(t.devices), num_params)
  if report.flops_check:
    xla, analytic = report.flops_check
    check = (f"Check on a 1-character window (one trip, so XLA's count is whole): XLA "
             f"{xla / 1e9:,.4f} GFLOP, analytic {analytic / 1e9:,.4f} GFLOP per chip (analytic / "
             f"XLA = {analytic / max(xla, 1):.2f}; XLA counts elementwise work too, and can drop "
             "products with the zero initial state, more so at large hidden sizes).")
  else:
    check = "XLA's GPU backend gives no cost analysis, so there is no XLA figure to check against."
  xla_bytes = report.compiled[0].xla_bytes
  lines += [
      "",
      "FLOPs: analytic matmul FLOPs counting every time step; XLA's cost analysis counts a loop "
      f"body once. {check}",
      f"train step memory traffic per chip: at least {_size(step_bytes)} (a lower-bound model: "
      "recurrent kernels read every time step, residuals written and read once, parameters and "
      "optimizer state read and written once)"
      + (f"; XLA's bytes accessed, loop bodies once: {_size(xla_bytes)}." if xla_bytes else ".")]
  return "\n".join(lines)


def verdict(report: Report) -> str | None:
  """The error for a run that does not fit (naming what to change), or None when it fits."""
  if not report.overflowing():
    return None
  worst, chip = report.overflowing()[0], report.topology.chip
  if not worst.name.startswith("train step"):
    fix = "lower --eval_batch_size, --sample_len or the server's limits for that program"
  elif report.largest_batch:
    fix = (f"the largest global batch found to fit (compiled, to within 12.5%) is "
           f"{report.largest_batch}: --batch_size={report.largest_batch}")
  else:
    fix = "lower --batch_size, --hidden or --num_layers" + (
        ", or use --dtype=bfloat16" if report.config.dtype == "float32" else "")
  return (f"the run does not fit on {report.topology.name}: {worst.name} needs "
          f"{worst.peak_bytes / 1024**3:.2f} GiB per chip, more than the "
          f"{chip.hbm_bytes / 1024**3:.0f} GiB HBM of a {chip.name}; {fix}. Nothing was spent: "
          "no accelerator was used.")
