#!/usr/bin/env bash
# One set-up for people and CI: a venv in .venv with the CPU build of torch and the package (+ test extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls CUDA.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c 'import os, site; open(os.path.join(site.getsitepackages()[0], "mtr_repo.pth"), "w").write(os.getcwd() + "\n")'  # a plain path entry: mypy and pyright see the package (they cannot follow the editable import hook)
