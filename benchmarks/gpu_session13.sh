#!/usr/bin/env bash
# GPU work of the eighth session (2026-12-01): one nvidia-h200 (2-GPU kinds were not lent), carry .whl and .torch_ext
# (ModelOpt's CUDA extensions as built before). Usage (repo root): OUT=$OUT bash benchmarks/gpu_session13.sh PART...
#   small: issue 9's first measurement again, as a new user runs it: the shipped reference-llama (source: builtin)
#     through `python -m modelopt_typed_recipes run`, FP8 and NVFP4, 32 windows of 1,024 tokens of reference-train,
#     quantize then the unified HF export, against benchmarks/scale_direct.py --hf-checkpoint (import_mcore_gpt_from_hf
#     -> mtq.quantize -> export_mcore_gpt_to_hf); 3 alternating repetitions each, whole processes, tensors compared.
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session13}
source "$(dirname "$0")/gpu_env.sh"
session_part() {
  case $1 in
    small)
      OUT="$OUT/$part" timeout -k 5 "${SMALL_S:-520}" python3 benchmarks/scale_gpu.py --kind nvidia-h200 --devices 0 \
        --budget-s $(( ${SMALL_S:-520} - 10 )) --windows 32 --seq 1024 --batch 8 --work /tmp/scale_small \
        --cases "${SMALL_CASES:-reference-llama-tp1:fp8:3,reference-llama-tp1:nvfp4:3}" \
        > "$OUT/$part/driver.txt" 2>&1
      echo "small rc=$?"; tail -n 8 "$OUT/$part/driver.txt"; rm -rf /tmp/scale_small ;;
    *) return 1 ;;
  esac
}
run_parts "$@"
