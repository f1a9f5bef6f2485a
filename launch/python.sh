# Finding or provisioning a Python jaxchar supports, for the launch scripts (sourced, not run).
#
# jaxchar needs Python 3.11+ (jax 0.10.2 and orbax-checkpoint 0.12.8 publish nothing for 3.10,
# the Python of Ubuntu 22.04, of the Cloud TPU VM base image and of many GPU hosts). In order:
# $PYTHON if set; the first of python3, python3.13, python3.12, python3.11 on PATH that is 3.11+;
# a Python that uv already manages; else uv installs CPython $PYTHON_VERSION (default 3.12) into
# ~/.local/share/uv (no root needed; uv itself comes from PyPI through the stock python3's pip,
# or from astral.sh's installer with curl; the Python from GitHub's python-build-standalone
# releases). With none of those possible the scripts stop with one paragraph saying what to do.
#
# Assumes: bash on Linux or macOS; network access only when uv or its Python must be fetched.
# Costs: nothing when a supported Python is found; else about 50 MB of downloads (uv and a
# CPython build) into the user's home, nothing installed system-wide.

SUPPORTED_PYTHON=3.11
PYTHON_VERSION=${PYTHON_VERSION:-3.12}

python_is_supported() {  # interpreter
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

_uv() {  # uv on PATH or where its installers put it
  local uv
  for uv in "$(command -v uv || true)" "$HOME/.local/bin/uv" "$HOME/.cargo/bin/uv"; do
    [ -n "$uv" ] && [ -x "$uv" ] && { "$uv" "$@"; return; }
  done
  return 127
}

find_supported_python() {  # prints the path of a Python 3.11+ already on this machine
  local candidate path
  if [ -n "${PYTHON:-}" ]; then
    python_is_supported "$PYTHON" && { echo "$PYTHON"; return 0; }
    return 1
  fi
  for candidate in python3 python3.13 python3.12 python3.11; do
    path="$(command -v "$candidate" 2>/dev/null)" || continue
    python_is_supported "$path" && { echo "$path"; return 0; }
  done
  path="$(_uv python find --no-project ">=$SUPPORTED_PYTHON" 2>/dev/null)" &&
    python_is_supported "$path" && { echo "$path"; return 0; }
  return 1
}

_unsupported_python_error() {
  local stock
  stock="$( (python3 --version) 2>&1 || echo "no python3")"
  cat >&2 <<EOF
error: jaxchar needs Python $SUPPORTED_PYTHON or newer and this machine has only $stock, and uv
could not install Python $PYTHON_VERSION ($1). Install one and rerun: with uv
(https://docs.astral.sh/uv/: \`uv python install $PYTHON_VERSION\`), or the distribution's
package (Ubuntu 22.04: \`sudo add-apt-repository ppa:deadsnakes/ppa && sudo apt-get install
python$PYTHON_VERSION-venv\`), or point PYTHON at one (PYTHON=/path/to/python3.12). Nothing was
installed.
EOF
}

provision_python() {  # prints the path of a Python 3.11+, installing one with uv if need be
  local path
  if path="$(find_supported_python)"; then echo "$path"; return 0; fi
  if [ -n "${PYTHON:-}" ]; then
    echo "error: PYTHON=$PYTHON is not Python $SUPPORTED_PYTHON or newer (jaxchar needs it)." >&2
    return 2
  fi
  echo "python3 here is $( (python3 --version) 2>&1 || echo missing); jaxchar needs" \
       "$SUPPORTED_PYTHON+: installing Python $PYTHON_VERSION with uv" >&2
  if ! _uv --version >/dev/null 2>&1; then
    python3 -m pip install --quiet --user uv >&2 2>/dev/null ||
      { command -v curl >/dev/null && curl -LsSf https://astral.sh/uv/install.sh | sh >&2; } ||
      { _unsupported_python_error "uv could not be installed: no pip or curl that worked"; return 2; }
  fi
  _uv python install "$PYTHON_VERSION" >&2 ||
    { _unsupported_python_error "uv python install $PYTHON_VERSION failed"; return 2; }
  path="$(_uv python find --no-project "$PYTHON_VERSION")" && python_is_supported "$path" ||
    { _unsupported_python_error "uv installed it but cannot find it"; return 2; }
  echo "$path"
}

make_venv() {  # folder extras: the venv made with a supported Python, jaxchar[extras] installed
  local venv=$1 extras=$2 python
  if [ -x "$venv/bin/python" ] && ! python_is_supported "$venv/bin/python"; then
    echo "$venv was made with $("$venv/bin/python" --version 2>&1), which jaxchar does not" \
         "support: making it again" >&2
    rm -rf "$venv"
  fi
  if [ ! -x "$venv/bin/python" ]; then
    python="$(provision_python)" || exit 2
    echo "making $venv with $python ($("$python" --version 2>&1))" >&2
    "$python" -m venv "$venv"
  fi
  . "$venv/bin/activate"
  pip install -q -e ".[$extras]"
}

check_install_resolves() {  # python_version extras: resolves jaxchar[extras] for a Linux x86-64
  # machine with that Python, using this machine's pip (downloads metadata only; installs nothing)
  local version=$1 extras=$2 platforms="" glibc out
  for glibc in $(seq 17 35); do platforms="$platforms --platform manylinux_2_${glibc}_x86_64"; done
  if ! out="$(python -m pip install --dry-run --quiet --target "$(mktemp -d)" \
      --only-binary=:all: --implementation cp --python-version "$version" $platforms \
      --platform manylinux2014_x86_64 --platform linux_x86_64 ".[$extras]" 2>&1)"; then
    echo "error: jaxchar[$extras] would not install on Python $version (pip, resolving for a" \
         "Linux x86-64 machine with it, said: $(echo "$out" | grep '^ERROR' | tail -n 1 | cut -c1-300))." \
         "Use a supported Python: PYTHON_VERSION=3.12 (jaxchar needs $SUPPORTED_PYTHON+)." \
         "Nothing was created." >&2
    return 2
  fi
}
