#!/usr/bin/env bash
# GPU work of the eighth session (2026-12-01): one nvidia-h200 (2-GPU kinds were not lent), carry .whl and .torch_ext
# (ModelOpt's CUDA extensions as built before). Usage (repo root): OUT=$OUT bash benchmarks/gpu_session13.sh PART...
#   small: issue 9's first measurement again, as a new user runs it: the shipped reference-llama (source: builtin)
#     through `python -m modelopt_typed_recipes run`, FP8 and NVFP4, 32 windows of 1,024 tokens of reference-train,
#     quantize then the unified HF export, against benchmarks/scale_direct.py --hf-checkpoint (import_mcore_gpt_from_hf
#     -> mtq.quantize -> export_mcore_gpt_to_hf); 3 alternating repetitions each, whole processes, tensors compared.
#   hf-distill: tests/test_distill_hf_gpu.py (distillation on the HF backend on CUDA; NVFP4 QAD there for the first time)
#   mdistill-fp8: tests/test_megatron_distill_gpu.py -k fp8 (FP8 QAT past the calibrated ranges on Megatron-Core, then
#     the unified HF export: no NaN in the files, the export snapped onto the grid, re-loaded within 0.5 %)
#   all-gpu: every gpu-marked test under tests/ on this one GPU (ALL_GPU_S caps it, 420 s by default)
#   stage-cache: the cached CUDA blocks given back after each stage (reserved memory before and after each release)
#   aq-one: gpu_session12.sh's auto_quantize recipe in one process through ModelOpt's format choice (the CBC solver
#     kept in the slimmed pulp wheel) and a save; the two-rank half of that part needs a 2-GPU machine
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
    hf-distill)
      timeout -k 5 240 python3 -m pytest -q -m gpu -p no:cacheprovider -s -rs --durations=6 tests/test_distill_hf_gpu.py \
        2>&1 | grep -v -i "warn\|Loading weights\|Writing model shards" | tee "$OUT/$part/pytest.log" | tail -n 40
      echo "pytest rc=${PIPESTATUS[0]}"; grep -o "{\"case\".*" "$OUT/$part/pytest.log" > "$OUT/$part/cases.jsonl" ;;
    mdistill-fp8)
      timeout -k 5 240 python3 -m pytest -q -m gpu -p no:cacheprovider -s -rs --durations=4 \
        tests/test_megatron_distill_gpu.py -k fp8 2>&1 | grep -v -i "warn\|Loading weights\|Writing model shards" \
        | tee "$OUT/$part/pytest.log" | tail -n 30
      echo "pytest rc=${PIPESTATUS[0]}"; grep -o "{\"case\".*" "$OUT/$part/pytest.log" > "$OUT/$part/cases.jsonl" ;;
    stage-cache)
      timeout -k 5 120 python3 - <<'PY' | tee "$OUT/$part/releases.json"
import json, torch
from modelopt_typed_recipes.runtime.hf import backend as B
from modelopt_typed_recipes.runtime import api
real, log = B.release_cached_memory, []
def wrapped():
    before = torch.cuda.memory_reserved(); real()
    log.append({"reserved_before": before, "reserved_after": torch.cuda.memory_reserved(),
                "allocated": torch.cuda.memory_allocated()})
B.release_cached_memory = wrapped
doc = {"model": "tiny-dense", "source": {"type": "random", "seed": 0},
       "stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "export"}],
       "calibration": {"dataset": "reference-train", "num_samples": 16, "seq_length": 256, "batch_size": 16},
       "output_dir": "/tmp/stage_cache_out", "backend": "hf", "device": "cuda"}
r = api.run_post_training(doc, progress=False)
print(json.dumps({"stages": [s.status for s in r.stages], "releases": log}))
PY
      rm -rf /tmp/stage_cache_out ;;
    aq-one)
      echo '{name: aq-one, model: reference-llama, source: {type: builtin}, stages: [{technique: auto_quantize, formats: [nvfp4, fp8], effective_bits: 6.0, score_size: 16, save: true}], calibration: {dataset: reference-train, num_samples: 32, seq_length: 256, batch_size: 4}, backend: megatron, device: cuda, output_dir: /tmp/aq/one}' > /tmp/aq1.yaml
      timeout -k 5 200 python3 -m modelopt_typed_recipes run /tmp/aq1.yaml --json --no-progress > "$OUT/$part/one.json" \
        2> "$OUT/$part/one.log"; echo "one rc=$?"; head -c 1500 "$OUT/$part/one.json"; echo; ls /tmp/aq/one/*/; rm -rf /tmp/aq ;;
    all-gpu)  # every gpu-marked test on one GPU (the 2-GPU ones skip themselves), the regression check of the session
      timeout -k 5 "${ALL_GPU_S:-420}" python3 -m pytest -q -m gpu -p no:cacheprovider -rs --durations=15 tests/ \
        2>&1 | grep -v -i "warn\|Loading weights\|Writing model shards" | tee "$OUT/$part/pytest.log" | tail -n 45
      echo "pytest rc=${PIPESTATUS[0]}" ;;
    *) return 1 ;;
  esac
}
run_parts "$@"
