"""Loss curves: `python -m jaxchar.plot --workdir=ckpt/moe` writes <workdir>/loss.png;
`python -m jaxchar.plot --compare=ckpt/moe,ckpt/moe_best --out=runs.png` plots validation loss
against wall time for several runs."""

from absl import flags

from jaxchar import options
from jaxchar.cli import entry_point, run
from jaxchar.training.plots import PlotConfig, write_comparison_plot, write_loss_plot

options.define_flags(PlotConfig)
FLAGS = flags.FLAGS


@entry_point
def main() -> None:
  config = options.from_flags(PlotConfig, FLAGS)
  if config.compare:
    print(f"wrote {write_comparison_plot(config.compare, config.out, config.time_axis)}")
  else:
    print(f"wrote {write_loss_plot(config.workdir, quiet_if_unavailable=False)}")


if __name__ == "__main__":
  run(main)
