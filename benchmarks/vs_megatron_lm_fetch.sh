#!/usr/bin/env bash
# Rebuild .mlm/: the files of Megatron-LM (commit d98e8a6) that its post-training quantize.sh and export.sh
# run, copied out of a git mirror of NVIDIA/Megatron-LM. .mlm/ is git-ignored and never part of the package:
# it travels to the GPU machine next to the working tree for benchmarks/vs_megatron_lm.py.
#
#   bash benchmarks/vs_megatron_lm_fetch.sh /path/to/Megatron-LM.git [DEST]
#
# Megatron-LM's own layout is kept (the example scripts add ../../../ to sys.path and import
# model_provider and megatron.{core,training,post_training} from there), so the scripts run as a user's
# checkout runs them.
set -euo pipefail
MIRROR=${1:?usage: vs_megatron_lm_fetch.sh MIRROR_GIT_DIR [DEST]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${2:-$ROOT/.mlm}
COMMIT=d98e8a6
FULL=$(git -C "$MIRROR" rev-parse --verify "${COMMIT}^{commit}")
PATHS=(
  LICENSE
  model_provider.py
  megatron/core
  megatron/training
  megatron/post_training
  examples/post_training/modelopt/conf
  examples/post_training/modelopt/quantize.sh
  examples/post_training/modelopt/quantize.py
  examples/post_training/modelopt/export.sh
  examples/post_training/modelopt/export.py
  examples/post_training/modelopt/utils.py
  examples/post_training/modelopt/requirements.txt
)
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
git -C "$MIRROR" archive --format=tar "$FULL" -- "${PATHS[@]}" | tar -x -C "$DEST.tmp"
# documentation is not run; the datasets' C++ helper stays: initialize_megatron() builds it with make on every
# launch (g++, `python3 -m pybind11 --includes`), so pybind11's wheel comes along for machines without it
find "$DEST.tmp/megatron" -type f \( -name '*.md' -o -name '*.png' \) -delete
mkdir -p "$DEST.tmp/wheels"
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -m pip download -q pybind11==3.1.0 --no-deps --only-binary=:all: -d "$DEST.tmp/wheels"
echo "$FULL" > "$DEST.tmp/COMMIT"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST: Megatron-LM $FULL, $(du -sh "$DEST" | cut -f1), $(find "$DEST" -type f | wc -l) files"
