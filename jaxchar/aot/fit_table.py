"""What fits where: the train step (a run's largest program by far) compiled for each topology
over a grid of model sizes and global batches, its peak memory per chip against the HBM."""

import dataclasses

from jaxchar.aot import programs
from jaxchar.aot.topologies import Topology
from jaxchar.training.config import Config

HIDDEN = (128, 512, 1024, 2048)
LAYERS = (1, 2, 3)
BATCHES = (128, 1024, 4096, 16384)


def fit_table(config: Config, vocab: int, corpus_chars: int, topologies: list[Topology],
              hiddens=HIDDEN, layers=LAYERS, batches=BATCHES) -> str:
  """A Markdown table: one row per (topology, hidden, layers), one column per global batch, each
  cell the train step's peak GiB per chip, or `no` (with XLA's figure) when it does not fit."""
  lines = [f"train step peak memory per chip (GiB), {config.dtype}, {config.lstm_impl} LSTM, "
           f"objective {config.objective}, window {config.maxlen}, vocabulary {vocab}; global "
           "batch across the top",
           "| topology | hidden | layers | " + " | ".join(f"{b:,}" for b in batches) + " |",
           "|---|---|---|" + "---|" * len(batches)]
  for topology in topologies:
    hbm = topology.chip.hbm_bytes
    for hidden in hiddens:
      for num_layers in layers:
        model = dataclasses.replace(config, hidden=hidden, num_layers=num_layers)
        cells, overflowed = [], False
        for batch in batches:
          if overflowed or batch % len(topology.devices):
            cells.append("no" if overflowed else "-")  # a larger batch needs more
            continue
          compiled = programs.train_step(model, vocab, corpus_chars, topology.devices, batch)
          gib = compiled.peak_bytes / 1024**3
          overflowed = compiled.peak_bytes > hbm
          cells.append(f"no ({gib:.1f})" if overflowed else f"{gib:.2f}")
        lines.append(f"| {topology.name} ({hbm / 1024**3:.0f} GiB) | {hidden} | {num_layers} | "
                     + " | ".join(cells) + " |")
  return "\n".join(lines)
