"""The launch path on a Python jaxchar does not support: pip refuses the project at once, the
launch scripts find or provision a supported Python on a stand-in machine whose python3 is 3.10,
or stop with one clear paragraph before anything is created; where launch/tpu_vm.sh and
launch/gpu_multihost.sh keep the run (a gs:// bucket workdir, required for spot VMs and slices of
several workers) and how tpu_vm.sh treats a VM it finds (a preempted one is recreated and the
training command rerun), against a stand-in gcloud that records its calls; and .ci/lowest.txt
pins exactly pyproject.toml's lower bounds."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from helpers import REPO

PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def pyenv_python(minor: str) -> Path | None:
  found = sorted(PYENV.glob(f"{minor}.*/bin/python{minor}"))
  return found[-1] if found else None


PY310, PY312 = pyenv_python("3.10"), pyenv_python("3.12")
REASON = "needs Python 3.10 and 3.12 from pyenv (~/.pyenv/versions) to stand in for a machine's"
if not (PY310 and PY312) and os.environ.get("CI"):
  raise RuntimeError(f"{REASON}: on CI these tests must run")
needs_pythons = pytest.mark.skipif(not (PY310 and PY312), reason=REASON)
# What the launch scripts call on a machine, besides python3 and uv.
TOOLS = ["bash", "cat", "rm", "seq", "grep", "tail", "cut", "mktemp", "dirname", "mkdir", "ls",
         "sort", "head", "env", "sed", "tr", "readlink", "uname", "id", "chmod", "ln"]
UV_STUB = """#!/bin/bash
# Stands in for uv: `python install` provides the pyenv Python of that version.
echo "uv $*" >> "$HOME/uv.log"
store="$HOME/.local/share/uv/python"
case "$1 $2" in
  "--version "*) echo "uv (stand-in)" ;;
  "python install") mkdir -p "$store" && ln -sf "{py312}" "$store/python$3" ;;
  "python find") ls "$store"/python* 2>/dev/null | head -n 1 | grep . ;;
  *) exit 2 ;;
esac
"""


def stand_in_machine(root: Path, with_uv: bool) -> dict:
  """The environment of a machine whose only python3 is 3.10, with no network for pip, no curl
  and (unless with_uv) no uv: a bin folder holding those and the shell tools the scripts use."""
  bin_dir, home = root / "bin", root / "home"
  bin_dir.mkdir(parents=True)
  home.mkdir()
  for tool in TOOLS:
    (bin_dir / tool).symlink_to(shutil.which(tool))
  (bin_dir / "python3").symlink_to(PY310)
  if with_uv:
    (bin_dir / "uv").write_text(UV_STUB.replace("{py312}", str(PY312)))
    (bin_dir / "uv").chmod(0o755)
  return {"PATH": str(bin_dir), "HOME": str(home), "PIP_NO_INDEX": "1",
          "PIP_CONFIG_FILE": os.devnull, "LANG": "C.UTF-8"}


def checkout_copy(root: Path) -> Path:
  """The files the launch scripts' set-up reads, in a folder of their own (it makes .venv)."""
  copy = root / "checkout"
  shutil.copytree(REPO / "launch", copy / "launch")
  shutil.copytree(REPO / "jaxchar", copy / "jaxchar",
                  ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, copy / name)
  return copy


@needs_pythons
def test_pip_refuses_the_project_under_python_3_10_at_once(tmp_path):
  """In a Python 3.10 venv with a current pip (pip 23.0, which Python 3.10.13 bundles, and
  Ubuntu 22.04's 22.0 search for every dependency first and fail on orbax-checkpoint)."""
  subprocess.run([str(PY310), "-m", "venv", "--upgrade-deps", str(tmp_path / "venv")],
                 check=True, capture_output=True, timeout=300)
  result = subprocess.run([str(tmp_path / "venv" / "bin" / "pip"), "install", "--dry-run", "-e",
                           str(REPO)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode != 0
  assert re.search(r"Package 'jaxchar' requires a different Python: 3\.10\.\d+ not in '>=3\.11'",
                   result.stderr), result.stderr
  assert "No matching distribution" not in result.stderr  # no resolver search for jax and co


@needs_pythons
def test_gpu_host_on_python_3_10_without_uv_stops_before_making_anything(tmp_path):
  checkout = checkout_copy(tmp_path)
  result = subprocess.run(["bash", str(checkout / "launch" / "gpu_host.sh")], capture_output=True,
                          text=True, timeout=120, env=stand_in_machine(tmp_path, with_uv=False))
  assert result.returncode == 2, result.stderr
  error = " ".join(result.stderr.split())
  assert re.search(r"error: jaxchar needs Python 3\.11 or newer and this machine has only "
                   r"Python 3\.10\.\d+, and uv could not install Python 3\.12", error), error
  assert "PYTHON=/path/to/python3.12" in error and "Nothing was installed." in error
  assert not (checkout / ".venv").exists() and "Traceback" not in result.stderr


@needs_pythons
def test_the_set_up_on_python_3_10_provisions_python_3_12_with_uv(tmp_path):
  checkout = checkout_copy(tmp_path)
  # A venv an earlier attempt left with the machine's Python 3.10 is made again.
  subprocess.run([str(PY310), "-m", "venv", "--without-pip", str(checkout / ".venv")], check=True)
  env = stand_in_machine(tmp_path, with_uv=True)
  # pip may reach its index here (setuptools, to build the project); jaxchar's dependencies
  # (gigabytes of CUDA wheels) are left out.
  del env["PIP_NO_INDEX"], env["PIP_CONFIG_FILE"]
  env["PIP_NO_DEPS"] = "1"
  result = subprocess.run(["bash", "-c", ". launch/python.sh && make_venv .venv cuda,plot"],
                          cwd=checkout, capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr
  assert ".venv was made with Python 3.10" in result.stderr
  assert "python3 here is Python 3.10" in result.stderr
  assert "installing Python 3.12 with uv" in result.stderr
  assert "uv python install 3.12" in (tmp_path / "home" / "uv.log").read_text()
  venv_python = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "--version"],
                               capture_output=True, text=True)
  assert venv_python.stdout.startswith("Python 3.12"), venv_python
  assert list((checkout / ".venv" / "lib" / "python3.12" / "site-packages").glob("jaxchar-*"))


def test_tpu_vm_refuses_an_unsupported_python_before_creating_anything(tmp_path):
  """gcloud is a stub that records its calls: none may happen."""
  stubs = tmp_path / "stubs"
  stubs.mkdir()
  (stubs / "gcloud").write_text(f'#!/bin/bash\necho "gcloud $*" >> {tmp_path}/gcloud.log\n')
  (stubs / "gcloud").chmod(0o755)
  env = {**os.environ, "PYTHON_VERSION": "3.10",
         "PATH": f"{stubs}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
  result = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh")], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
  assert result.returncode == 2, result.stderr
  error = " ".join(result.stderr.split())
  assert "error: jaxchar[tpu,plot] would not install on Python 3.10" in error, error
  assert "Nothing was created." in error and "PYTHON_VERSION=3.12" in error
  assert not (tmp_path / "gcloud.log").exists()


# Stands in for gcloud: records every call in $CALLS and models one TPU VM, whose state is in
# the file $VM_STATE (no file: no VM). create makes it READY and delete removes it; a training
# command over ssh ends with the VM PREEMPTED when the file $PREEMPT exists (once).
GCLOUD_STUB = """#!/bin/bash
echo "gcloud $*" >> "$CALLS"
case "$1 $2 $3 $4" in
  "compute tpus tpu-vm describe")
    if [ -f "$VM_STATE" ]; then cat "$VM_STATE"
    else echo "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND" >&2; exit 1; fi ;;
  "compute tpus tpu-vm create") echo READY > "$VM_STATE" ;;
  "compute tpus tpu-vm delete") rm -f "$VM_STATE" ;;
  "compute tpus tpu-vm ssh")
    if [[ "$*" == *jaxchar.train* && -f "$PREEMPT" ]]; then
      rm "$PREEMPT"; echo PREEMPTED > "$VM_STATE"; echo "Connection closed by remote host" >&2
      exit 255
    fi ;;
esac
"""
# python (the install and compile checks, tested elsewhere) and tar (the checkout's copy) only
# record their calls here.
RECORDER = '#!/bin/bash\necho "{name} $*" >> "$CALLS"\n'
LAUNCH_ENV = ("ZONE", "ACCELERATOR", "NAME", "VERSION", "SPOT", "BUCKET", "DATA", "FLAGS", "KEEP",
              "PYTHON_VERSION", "PYTHON")


class StandIn:
  """launch/tpu_vm.sh run against the stand-in gcloud; `calls` are the recorded commands."""

  def __init__(self, root: Path):
    self.root = root
    self.stubs = root / "stubs"
    self.stubs.mkdir()
    for name, text in (("gcloud", GCLOUD_STUB), ("python", RECORDER.format(name="python")),
                       ("tar", RECORDER.format(name="tar"))):
      (self.stubs / name).write_text(text)
      (self.stubs / name).chmod(0o755)
    self.log, self.state, self.preempt = root / "calls.log", root / "vm_state", root / "preempt"

  def run(self, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(PATH=f"{self.stubs}:{os.environ['PATH']}", CALLS=str(self.log),
               VM_STATE=str(self.state), PREEMPT=str(self.preempt), **variables)
    self.log.unlink(missing_ok=True)
    return subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh")], capture_output=True,
                          text=True, timeout=60, env=env, cwd=self.root)

  @property
  def calls(self) -> list[str]:
    return self.log.read_text().splitlines() if self.log.exists() else []

  def vm(self, verb: str) -> list[int]:
    """Indexes of the calls `gcloud compute tpus tpu-vm VERB`."""
    return [i for i, c in enumerate(self.calls)
            if c.startswith(f"gcloud compute tpus tpu-vm {verb} ")]

  def training(self) -> list[str]:
    return [c for c in self.calls if c.startswith("gcloud compute tpus tpu-vm ssh")
            and "jaxchar.train" in c]


@pytest.fixture
def stand_in(tmp_path):
  return StandIn(tmp_path)


def one_paragraph_error(result: subprocess.CompletedProcess) -> str:
  error = result.stderr.strip()
  assert error.startswith("error: ") and "\n" not in error, result.stderr
  return error


def test_tpu_vm_spot_without_a_bucket_refuses_before_creating_anything(stand_in):
  result = stand_in.run(SPOT="1")
  assert result.returncode == 2, result.stderr
  error = one_paragraph_error(result)
  assert error.startswith("error: SPOT=1 needs BUCKET=gs://bucket[/path]: a spot TPU VM is deleted "
                          "when it is preempted"), error
  assert "gcloud storage buckets create gs://NAME --location=us-central2" in error
  assert error.endswith("Nothing was created.")
  assert stand_in.calls == []  # no gcloud call at all, not even the checks before it


@pytest.mark.parametrize("variables, says", [
    ({"ACCELERATOR": "v4-16"}, "ACCELERATOR=v4-16 is a slice of several workers (VMs), which "
                               "share no disk"),
    ({"ACCELERATOR": "v5litepod-32", "SPOT": "0"}, "is a slice of several workers"),
    ({"BUCKET": "my-bucket"}, "BUCKET=my-bucket is not a Cloud Storage location of the form "
                              "gs://bucket[/path]"),
    ({"BUCKET": "s3://my-bucket", "SPOT": "1"}, "BUCKET=s3://my-bucket is not a Cloud Storage"),
    ({"BUCKET": "gs://"}, "BUCKET=gs:// is not"),
    ({"BUCKET": "gs://My-Bucket/runs"}, "is not a Cloud Storage location"),
    ({"BUCKET": "gs://ab"}, "is not a Cloud Storage location"),
    ({"BUCKET": "gs://" + "b" * 64}, "is not a Cloud Storage location"),
    ({"BUCKET": "gs://my-bucket//runs"}, "is not a Cloud Storage location"),
    ({"BUCKET": "gs://my-bucket/my runs"}, "is not a Cloud Storage location"),
    ({"BUCKET": "gs://my-bucket/it's;rm -rf ~"}, "is not a Cloud Storage location"),
    ({"BUCKET": "gs://my-bucket", "FLAGS": "--epochs=3 --workdir=gs://other/run"},
     "FLAGS sets --workdir, but with BUCKET the workdir is gs://my-bucket/moe-tpu"),
    ({"BUCKET": "gs://my-bucket", "DATA": "gs://My bucket/texts"}, "DATA=gs://My bucket/texts is "
                                                                   "not a Cloud Storage location"),
    ({"DATA": "/home/me/my.txt"}, "is neither gs://bucket/path nor a path inside this checkout"),
    ({"DATA": "../my.txt"}, "is neither gs://bucket/path nor a path inside this checkout"),
    ({"DATA": "data/no-such-text.txt"}, "DATA=data/no-such-text.txt matches nothing"),
])
def test_tpu_vm_refuses_a_run_it_cannot_keep_before_creating_anything(stand_in, variables, says):
  result = stand_in.run(**variables)
  assert result.returncode == 2, result.stderr
  error = one_paragraph_error(result)
  assert says in error and error.endswith("Nothing was created."), error
  assert stand_in.calls == []


def test_tpu_vm_with_a_bucket_trains_in_it_and_copies_nothing_back(stand_in):
  result = stand_in.run(SPOT="1", BUCKET="gs://my-bucket/runs/", DATA="gs://my-bucket/texts/",
                        FLAGS="--epochs=3")
  assert result.returncode == 0, result.stderr
  calls = stand_in.calls
  # The checks ran first, with launch/tpu.flags' own text (the bucket's is not read here).
  checks = [i for i, c in enumerate(calls) if c.startswith("python -m ")]
  assert checks and max(checks) < stand_in.vm("create")[0]
  assert all("gs://" not in calls[i] for i in checks)
  create, = stand_in.vm("create")
  assert calls[create].endswith("--spot")
  train, = stand_in.training()
  assert train.endswith(" --workdir=gs://my-bucket/runs/moe-tpu --cache_dir=ckpt/corpus_cache "
                        "--data='gs://my-bucket/texts/' --epochs=3"), train
  assert "--worker=all" in train and "python -m jaxchar.train --flagfile=launch/tpu.flags" in train
  assert not [c for c in calls if "scp --recurse" in c]  # nothing to copy back
  assert stand_in.vm("delete") == [len(calls) - 1]  # the VM is deleted at the end
  assert ("results: gs://my-bucket/runs/moe-tpu" in result.stdout
          and "python -m jaxchar.sample --workdir=gs://my-bucket/runs/moe-tpu " in result.stdout)


def test_a_preempted_tpu_vm_is_recreated_and_the_training_reruns_on_the_bucket(stand_in):
  stand_in.preempt.touch()
  first = stand_in.run(SPOT="1", BUCKET="gs://my-bucket/runs")
  assert first.returncode == 1, first.stderr
  assert "error: training on jaxchar stopped early (the VM is PREEMPTED): the checkpoints are in " \
         "gs://my-bucket/runs/moe-tpu, and rerunning this same command resumes from them" \
         in " ".join(first.stderr.split())
  assert stand_in.vm("delete") == []  # left as it is
  interrupted, = stand_in.training()
  assert stand_in.state.read_text().strip() == "PREEMPTED"

  again = stand_in.run(SPOT="1", BUCKET="gs://my-bucket/runs")
  assert again.returncode == 0, again.stderr
  assert "the TPU VM jaxchar is PREEMPTED (it cannot be restarted): deleting and recreating it; " \
         "training resumes from gs://my-bucket/runs/moe-tpu" in " ".join(again.stderr.split())
  delete, create = stand_in.vm("delete")[0], stand_in.vm("create")[0]
  assert stand_in.vm("describe")[0] < delete < create
  assert stand_in.calls[create].endswith("--spot")
  assert stand_in.training() == [interrupted]  # the same command, so it resumes from the bucket
  assert stand_in.calls.index(interrupted) > create
  assert not stand_in.state.exists()  # deleted at the end


def test_a_ready_tpu_vm_is_reused_and_one_in_another_state_left_alone(stand_in):
  stand_in.state.write_text("READY\n")
  result = stand_in.run(BUCKET="gs://my-bucket", KEEP="1")
  assert result.returncode == 0, result.stderr
  assert stand_in.vm("create") == [] and stand_in.vm("delete") == []
  train, = stand_in.training()
  assert "--workdir=gs://my-bucket/moe-tpu " in train

  stand_in.state.write_text("STOPPED\n")
  result = stand_in.run(BUCKET="gs://my-bucket")
  assert result.returncode == 2, result.stderr
  error = one_paragraph_error(result)
  assert error.startswith("error: the TPU VM jaxchar in us-central2-b is STOPPED; rerun when it "
                          "is READY (start a STOPPED one: gcloud compute tpus tpu-vm start "
                          "jaxchar --zone=us-central2-b), or delete it"), error
  assert stand_in.vm("create") == [] and stand_in.vm("delete") == [] and not stand_in.training()


def test_tpu_vm_without_a_bucket_trains_on_the_vm_and_copies_the_run_back(stand_in):
  result = stand_in.run(ZONE="europe-west4-a", ACCELERATOR="v5litepod-8", DATA="launch/*.flags")
  assert result.returncode == 0, result.stderr
  calls = stand_in.calls
  create, = stand_in.vm("create")
  assert "--accelerator-type=v5litepod-8" in calls[create] and "--spot" not in calls[create]
  train, = stand_in.training()
  assert "--workdir" not in train and "--cache_dir" not in train
  assert train.endswith(" --flagfile=launch/tpu.flags --data='launch/*.flags'"), train
  compile_check = [c for c in calls if "jaxchar.compile_check" in c]
  assert compile_check and compile_check[0].endswith("--data=launch/*.flags")
  copy_back = [c for c in calls if "scp --recurse" in c]
  assert copy_back == ["gcloud compute tpus tpu-vm scp --recurse jaxchar:~/jaxchar/ckpt/moe-tpu "
                       "ckpt/ --zone=europe-west4-a --worker=0"]
  assert stand_in.vm("delete") == [len(calls) - 1]


def gpu_host(root: Path) -> tuple[Path, dict]:
  """launch/ in a folder of its own with a .venv whose python and pip record their calls."""
  checkout = root / "checkout"
  shutil.copytree(REPO / "launch", checkout / "launch")
  bin_dir = checkout / ".venv" / "bin"
  bin_dir.mkdir(parents=True)
  for name in ("python", "pip"):
    (bin_dir / name).write_text(RECORDER.format(name=name))
    (bin_dir / name).chmod(0o755)
  (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"\n')
  env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
  return checkout, {**env, "CALLS": str(root / "calls.log")}


def test_gpu_multihost_keeps_the_run_in_the_bucket(tmp_path):
  checkout, env = gpu_host(tmp_path)
  result = subprocess.run(["bash", str(checkout / "launch" / "gpu_multihost.sh"),
                           "10.0.0.2:12355", "2", "1", "--data=gs://my-bucket/texts/"],
                          capture_output=True, text=True, timeout=60,
                          env={**env, "BUCKET": "gs://my-bucket/runs"})
  assert result.returncode == 0, result.stderr
  assert "warning" not in result.stderr
  calls = (tmp_path / "calls.log").read_text().splitlines()
  assert "pip install -q -e .[cuda,plot,gcs]" in calls
  assert calls[-1] == ("python -m jaxchar.train --flagfile=launch/gpu.flags "
                       "--coordinator_address=10.0.0.2:12355 --num_processes=2 --process_id=1 "
                       "--workdir=gs://my-bucket/runs/moe-gpu --cache_dir=ckpt/corpus_cache "
                       "--data=gs://my-bucket/texts/")


def test_gpu_multihost_without_a_bucket_warns_and_with_a_malformed_one_stops(tmp_path):
  checkout, env = gpu_host(tmp_path)
  script = str(checkout / "launch" / "gpu_multihost.sh")
  result = subprocess.run(["bash", script, "10.0.0.2:12355", "2", "0"], capture_output=True,
                          text=True, timeout=60, env=env)
  assert result.returncode == 0, result.stderr
  assert "only host 0 keeps the checkpoints and a rerun cannot resume" \
         in " ".join(result.stderr.split())
  calls = (tmp_path / "calls.log").read_text().splitlines()
  assert "pip install -q -e .[cuda,plot]" in calls
  assert calls[-1].endswith("--process_id=0")
  (tmp_path / "calls.log").unlink()
  result = subprocess.run(["bash", script, "10.0.0.2:12355", "2", "0"], capture_output=True,
                          text=True, timeout=60, env={**env, "BUCKET": "gs://my bucket"})
  assert result.returncode == 2
  assert one_paragraph_error(result).startswith(
      "error: BUCKET=gs://my bucket is not a Cloud Storage location of the form gs://bucket[/path]")
  assert not (tmp_path / "calls.log").exists()  # nothing installed


def test_lowest_constraints_pin_exactly_pyprojects_lower_bounds():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  requirements = project["dependencies"] + [
      r for extra, rs in project["optional-dependencies"].items() if extra not in ("tpu", "cuda")
      for r in rs]
  bounds = {}
  for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[\w+\])?>=([\w.]+)(;.*)?", requirement)
    assert match, requirement
    if not match.group(2):  # jax[tpu] is jax's bound
      bounds[match.group(1).lower()] = Version(match.group(3))
  bounds["jaxlib"] = bounds["jax"]
  pins = {}
  for line in (REPO / ".ci" / "lowest.txt").read_text().splitlines():
    if line and not line.startswith("#"):
      name, version = line.split(";")[0].strip().split("==")
      pins[name.lower()] = Version(version)
  assert pins == bounds
