"""The launch path on a Python jaxchar does not support: pip refuses the project at once, the
launch scripts find or provision a supported Python on a stand-in machine whose python3 is 3.10,
or stop with one clear paragraph before anything is created; and .ci/lowest.txt pins exactly
pyproject.toml's lower bounds."""

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
