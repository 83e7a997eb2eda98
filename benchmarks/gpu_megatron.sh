#!/usr/bin/env bash
# GPU verification of the Megatron-Core backend on the 2xH100 machine (device tool kind nvidia-h100-x2).
# Usage (from the repo root, .whl/ filled with the PyPI wheels of megatron-core, nvidia-modelopt and their needs, and carried):
#   bash benchmarks/gpu_megatron.sh [PARTS...]
# PARTS: prewarm formats tp2 direct accuracy (the default: all five), and also
#   prewarm-parallel  the three ModelOpt CUDA extension builds at once (a fresh machine's first call)
#   gputest           pytest -m gpu tests/test_megatron_gpu.py (without Transformer Engine)
#   prune, prunetest  Minitron pruning and its GPU test, with Transformer Engine from /tmp/te_site
#                     (brought there by scripts/device_te.sh)
# Writes $OUT/megatron_<part>.json and prints one JSON line per case.
set -uo pipefail
if [ ! -d /tmp/site/modelopt ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
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
    prewarm-parallel)
      for ext in get_cuda_ext_fp8 get_cuda_ext get_cuda_ext_mx; do
        python3 -c "import time; t=time.time(); from modelopt.torch.quantization import extensions as e; \
ok = getattr(e, '$ext')(raise_if_failed=True) is not None; print('$ext', ok, round(time.time()-t, 1), 's', flush=True)" &
      done; wait ;;
    gputest) python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_megatron_gpu.py 2>&1 | tail -n 15 ;;
    prunetest) PYTHONPATH=/tmp/te_site:$PYTHONPATH python3 -m pytest -q -m gpu -p no:cacheprovider \
                 tests/test_megatron_gpu.py -k prune 2>&1 | tail -n 30 ;;
    prune) PYTHONPATH=/tmp/te_site:$PYTHONPATH python3 benchmarks/megatron_gpu.py --part prune 2>&1 | grep -v Warning ;;
    tp2) torchrun --nproc_per_node=2 --master_port=29533 benchmarks/megatron_gpu.py --part tp2 2>&1 | grep -v Warning ;;
    direct) python3 benchmarks/megatron_vs_direct.py 2>&1 | grep -v Warning ;;
    auto) python3 benchmarks/megatron_gpu.py --part formats --cases auto-6.0bits,auto-5.0bits,fp8 2>&1 | grep -v Warning ;;
    *) python3 benchmarks/megatron_gpu.py --part "$part" 2>&1 | grep -v Warning ;;
  esac
  echo "=== $part took $(( $(date +%s) - start )) s"
done
