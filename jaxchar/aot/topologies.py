"""TPU topologies and GPU hosts a run can be checked for without the hardware: names, chips,
memory per chip. TPUs compile through libtpu; H100s through the jax-cuda12 plugin with a
description of the card (h100_sxm.txtpb), the route of JAX's own deviceless GPU compiles."""

import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import re

from jaxchar.errors import UserError

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: what JAX calls it, HBM per device (published), how JAX shows it."""

  name: str
  hbm_bytes: int
  cloud_name: str  # the accelerator type Cloud gives it: v5litepod for v5e
  chip_config: str = "default"  # v4: "megacore", one JAX device per chip as on a real VM
  host_chips: tuple[int, int, int] = (2, 2, 1)  # chips per host (VM)
  cores_per_chip_in_name: int = 1  # v4-8 and v5p-8 count TensorCores (2 per chip), v5e-8 chips


# Google Cloud's published HBM per chip (cloud.google.com/tpu/docs/system-architecture-tpu-vm).
CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, "v4", "megacore", (2, 2, 1), 2),
    "v5e": Chip("TPU v5e", 16 * GIB, "v5litepod", "default", (2, 4, 1)),
    "v5p": Chip("TPU v5p", 95 * GIB, "v5p", "default", (2, 2, 1), 2),
    "v6e": Chip("TPU v6e (Trillium)", 32 * GIB, "v6e", "default", (2, 4, 1)),
}
# Cloud accelerator names (GEN-N) and the JAX topology each stands for (GEN:AxB[xC]).
KNOWN = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4",
    "v5e-1": "v5e:1x1", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4",
    "v5e-32": "v5e:4x8", "v5e-64": "v5e:8x8", "v5e-256": "v5e:16x16",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4",
    "v6e-1": "v6e:1x1", "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4",
    "v6e-64": "v6e:8x8", "v6e-256": "v6e:16x16",
}
_ALIASES = {"v5litepod": "v5e"}  # Cloud's other name for v5e
# GPU hosts: h100-N is one host with N H100s (the figures XLA compiles for are in the .txtpb).
GPUS = {"h100": Chip("NVIDIA H100 SXM 80 GB", 84_929_347_584, "h100")}
GPU_TARGETS = {"h100": "h100_sxm.txtpb"}
_GPU_FORM = re.compile(r"^(h100)-([1-8])$")
_JAX_FORM = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Topology:
  """A resolved topology: its names, chip, and JAX's compile-only devices."""

  name: str  # as the user gave it
  jax_name: str  # GEN:AxB[xC]
  chip: Chip
  devices: tuple

  @property
  def num_hosts(self) -> int:
    return len({d.process_index for d in self.devices})

  @property
  def platform(self) -> str:
    return "cuda" if self.jax_name.startswith("cuda") else "tpu"


def _known_list() -> str:
  return (", ".join(KNOWN) + f", or JAX's form GEN:AxB[xC] for GEN in {', '.join(CHIPS)}; GPU "
          "hosts h100-1 to h100-8")


def jax_topology_name(name: str) -> str:
  """`v5e-8` or `v5e:2x4` (or `v5litepod-8`) as JAX's topology name; UserError if unknown."""
  cleaned = name.strip().lower()
  for alias, generation in _ALIASES.items():
    cleaned = cleaned.replace(alias, generation)
  if cleaned in KNOWN:
    return KNOWN[cleaned]
  if gpu := _GPU_FORM.match(cleaned):
    return f"cuda:{gpu.group(1)}:1x1x{gpu.group(2)}"
  match = _JAX_FORM.match(cleaned)
  if match and match.group(1) in CHIPS:
    return cleaned
  raise UserError(f"--topology={name} is not a TPU topology this check knows; use one of "
                  f"{_known_list()}.")


def _libtpu_pin() -> str:
  """The libtpu requirement `jax[tpu]` pins for the installed jax, e.g. libtpu==0.0.42.*."""
  for requirement in importlib.metadata.requires("jax") or []:
    if requirement.startswith("libtpu") and "tpu" in requirement.split(";")[-1]:
      return requirement.split(";")[0].strip()
  return "libtpu"


def require_libtpu() -> None:
  """UserError with the command that installs libtpu when it is missing."""
  if importlib.util.find_spec("libtpu") is None:
    raise UserError(f"compiling for a TPU needs libtpu, which is not installed; install the "
                    f"version this jax pins with `pip install '{_libtpu_pin()}'` (or "
                    "`pip install -e '.[tpu]'`); no TPU is needed.")


def _dims(jax_name: str) -> tuple[int, ...]:
  return tuple(int(d) for d in jax_name.split(":")[1].split("x"))


def require_cuda_plugin() -> None:
  """UserError with the command that installs JAX's CUDA compiler when it is missing."""
  import jax
  missing = [name for name, module in (("jax-cuda12-plugin", "jax_cuda12_plugin"),
                                        ("jax-cuda12-pjrt", "jax_plugins.xla_cuda12"),
                                        ("nvidia-cuda-nvcc-cu12", "nvidia.cuda_nvcc"))
             if importlib.util.find_spec(module.split(".")[0]) is None
             or importlib.util.find_spec(module) is None]
  if missing:
    version = jax.__version__
    raise UserError(f"compiling for a GPU without one needs JAX's CUDA compiler, which is not "
                    f"installed ({', '.join(missing)}); install it with `pip install "
                    f"'jax-cuda12-plugin=={version}' 'jax-cuda12-pjrt=={version}' "
                    "nvidia-cuda-nvcc-cu12` (no GPU or driver needed; the plugin then notes "
                    "'Could not find cuda drivers' in every JAX process on this machine).")


def cloud_name(jax_name: str) -> str:
  """The Cloud accelerator type of a JAX topology name, e.g. v5e:2x4 -> v5litepod-8."""
  chip = CHIPS[jax_name.split(":")[0]]
  return f"{chip.cloud_name}-{math.prod(_dims(jax_name)) * chip.cores_per_chip_in_name}"


def describe_host_to_libtpu(jax_name: str) -> None:
  """Tells libtpu which TPU to expect, as a TPU VM's metadata would (unless already set), so it
  does not report the metadata it cannot find on a machine without TPUs; call before JAX
  loads libtpu. Compiling does not depend on it. For a GPU target: no autotuning (it needs the
  card)."""
  if jax_name.startswith("cuda:"):
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_autotune_level=0".strip()
    return
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", cloud_name(jax_name))
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # Compiling touches no chip, so another process holding libtpu (a test run, a second
  # check) must not lock this one out.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _resolve_gpu(name: str, jax_name: str) -> Topology:
  from importlib import resources

  from jax.experimental import topologies
  require_cuda_plugin()
  _, kind, shape = jax_name.split(":")
  target = resources.files("jaxchar.aot").joinpath(GPU_TARGETS[kind]).read_text(encoding="utf-8")
  description = topologies.get_topology_desc(kind, "cuda", target_config=target, topology=shape)
  return Topology(name, jax_name, GPUS[kind], tuple(description.devices))


def resolve(name: str) -> Topology:
  """The compile-only devices of topology `name` (needs libtpu or the CUDA plugin, no TPU or
  GPU)."""
  jax_name = jax_topology_name(name)
  if jax_name.startswith("cuda:"):
    return _resolve_gpu(name, jax_name)
  require_libtpu()
  from jax.experimental import topologies
  chip = CHIPS[jax_name.split(":")[0]]
  try:
    dims = (_dims(jax_name) + (1,))[:3]
    per_host = tuple(min(a, b) for a, b in zip(dims, chip.host_chips))
    description = topologies.get_topology_desc(jax_name, "tpu", chip_config_name=chip.chip_config,
                                               chips_per_host_bounds=per_host)
  except Exception as e:  # noqa: BLE001 - libtpu raises its runtime error for a bad shape
    reason = " ".join(str(e).split())[:200]
    raise UserError(f"libtpu did not accept the topology {jax_name} ({reason}); use one of "
                    f"{_known_list()}.") from None
  return Topology(name, jax_name, chip, tuple(description.devices))
