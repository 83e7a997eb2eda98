#!/usr/bin/env bash
# One set-up for people and CI: a venv in .venv with torch and the package (+ test extra).
#
# Python 3.12 when the machine has it (megatron-core >= 0.17 needs it; 3.11 gets 0.16.1, where the version
# gates refuse Megatron-Core export and pruning); else 3.11. $PYTHON picks another interpreter.
# torch is pinned to 2.13.0: on 3.11 that is the CPU build on this machine's disk; on 3.12 PyPI has only
# the CUDA build (torch + nvidia-* libraries, about 5 GB installed), which runs on the CPU as well.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
step() { printf 'setup [%3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }

works() { "$1" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; }
pick_python() {
    local c
    for c in ${PYTHON:-} python3.12 "${HOME:-/root}"/.pyenv/versions/3.12*/bin/python3.12 python3.11 python3; do
        [ -n "$c" ] && works "$c" && { echo "$c"; return; }
    done
    echo "setup: no Python >= 3.11 found (set PYTHON=/path/to/python3.12)" >&2
    exit 1
}
# pip names every configured index folder that lacks a package ("Location ... is ignored"): noise
pip_install() { .venv/bin/python -m pip install -q "$@" 2> >(grep -v "^WARNING: Location '" >&2); }

# The venv takes about 5.5 GB on Python 3.12; pip's cache would keep another copy of the wheels. Without the
# cache a full disk is found here, with the space it needs, instead of as an OSError halfway through torch.
export PIP_NO_CACHE_DIR=1
need_gb=6
free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ ! -x .venv/bin/python ] && [ "${free_gb:-0}" -lt "$need_gb" ]; then
    echo "setup: ${free_gb} GB free on $(df -P . | awk 'NR == 2 { print $6 }'); the venv needs about ${need_gb} GB" \
        "(torch with its CUDA libraries on Python 3.12). Free some space or run from another disk." >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    PY=$(pick_python)
    step "creating .venv with $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PY" -m venv .venv
fi
step "upgrading pip"
pip_install --upgrade pip
step "installing torch 2.13.0 (the longest step: on Python 3.12 a download of about 1 GB and the CUDA libraries)"
pip_install "torch==2.13.0"
step "installing modelopt-typed-recipes with nvidia-modelopt, megatron-core, transformers and the test extra"
pip_install -e ".[test]"
.venv/bin/python -c 'import os, site; open(os.path.join(site.getsitepackages()[0], "mtr_repo.pth"), "w").write(os.getcwd() + "\n")'  # a plain path entry: mypy and pyright see the package (they cannot follow the editable import hook)
step "done: $(.venv/bin/python -c 'import sys; from importlib.metadata import version as v
print(f"Python {sys.version.split()[0]}, torch", v("torch") + ", megatron-core", v("megatron-core") + ", nvidia-modelopt",
      v("nvidia-modelopt"))')"
