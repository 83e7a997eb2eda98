#!/usr/bin/env bash
# GPU verification of the Megatron-Core backend on the 2xH100 machine (device tool kind nvidia-h100-x2).
# Usage (from the repo root, .whl/ filled by /work/shared/device/wheels.sh and carried):
#   bash benchmarks/gpu_megatron.sh [PARTS...]      PARTS: prewarm formats tp2 direct accuracy (default: all)
# Writes $OUT/megatron_<part>.json and prints one JSON line per case.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_ext}   # ModelOpt's CUDA extensions, built once
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1          # no NVLink multicast on this machine
export MTR_WORK=${MTR_WORK:-/tmp/mtr_work} OUT=${OUT:-/tmp/mtr_out} PYTHONWARNINGS=ignore
parts=${*:-prewarm formats tp2 direct accuracy}
python3 - <<'PY'
import importlib.metadata as m, torch
print({p: m.version(p) for p in ("torch", "megatron-core", "nvidia-modelopt", "transformers")},
      torch.cuda.get_device_name(0), torch.cuda.device_count(), flush=True)
PY
for part in $parts; do
  echo "=== $part"; start=$(date +%s)
  case $part in
    tp2) torchrun --nproc_per_node=2 --master_port=29533 benchmarks/megatron_gpu.py --part tp2 2>&1 | grep -v Warning ;;
    direct) python3 benchmarks/megatron_vs_direct.py 2>&1 | grep -v Warning ;;
    auto) python3 benchmarks/megatron_gpu.py --part formats --cases auto-6.0bits,auto-5.0bits,fp8 2>&1 | grep -v Warning ;;
    *) python3 benchmarks/megatron_gpu.py --part "$part" 2>&1 | grep -v Warning ;;
  esac
  echo "=== $part took $(( $(date +%s) - start )) s"
done
