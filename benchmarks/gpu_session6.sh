#!/usr/bin/env bash
# GPU work of the 2026-11-30 third session, one device call per group of parts, on one warm nvidia-h200-x2 machine.
# Usage (repo root, .whl/ carried; Transformer Engine parts after scripts/device_te.sh install):
#   bash benchmarks/gpu_session6.sh PART...
# Each part writes under $OUT/<part>/ (default benchmarks/raw/session6/<part>) and prints its log.
# Parts: env, prewarm (ModelOpt's three CUDA extensions at once); the others are added by the work that needs them.
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session6}
source "$(dirname "$0")/gpu_env.sh"   # set-up, te, ds, and the parts env and prewarm
session_part() {  # this session's parts ($part and $OUT/$part are set by run_parts)
  case $1 in
    # --- parts added by the session's work below this line (keep one case per part) ---
    scale-x2)  # issue 9: 512 windows of real text; qwen3-8b TP2 NVFP4 ours+direct bitwise, then qwen3-30b-a3b EP2 (ours) or llama3.1-8b TP1 pair as time allows; <= 535 s
      df -h /tmp "$PWD" | tee "$OUT/$part/df.txt"
      OUT="$OUT/$part" timeout -k 5 525 python3 benchmarks/scale_gpu.py --budget-s 505 --windows 512 --concurrent \
        --text /tmp/scale_calib.jsonl --make-text --work /tmp/scale_work \
        --cases qwen3-8b-tp2:nvfp4:1,qwen3-30b-a3b-ep2:fp8:1:ours,llama3.1-8b-tp1:fp8:1
      echo "scale_gpu rc=$?"; rm -rf /tmp/scale_work ;;
    vsmlm-ref)  # issue 15: Megatron-LM's quantize.sh + export.sh (.mlm/ carried, TE) vs one recipe on reference-llama, FP8 on GPU 0 and NVFP4 on GPU 1 at once, 3 reps each: <= 540 s
      te timeout -k 5 535 python3 benchmarks/vs_megatron_lm.py --streams --gpus 0,1 --reps 3 --budget-s 500 \
        --cases reference-llama:fp8,reference-llama:nvfp4 --first-guess-s 130 --out "$OUT/$part" --work /tmp/vsmlm_ref \
        2>&1 | tee "$OUT/$part/streams.log"; rm -rf /tmp/vsmlm_ref-* ;;
    vsmlm-qwen)  # issue 15: the same on the Qwen3-0.6B-shaped random checkpoint, up to 3 reps each as the budget allows: <= 560 s
      te timeout -k 5 555 python3 benchmarks/vs_megatron_lm.py --streams --gpus 0,1 --reps 3 --budget-s 520 \
        --cases qwen3-0.6b:fp8,qwen3-0.6b:nvfp4 --first-guess-s 200 --out "$OUT/$part" --work /tmp/vsmlm_qwen \
        2>&1 | tee "$OUT/$part/streams.log"; rm -rf /tmp/vsmlm_qwen-* ;;
    mmlu)  # issue 14: ModelOpt's megatron_mmlu at TP=1 and TP=2 vs our log-likelihood MMLU (HF backend); ~90 s, <= 150 s
      d=$OUT/mmlu; fx=$MTR_WORK/mmlu-fixture; rows=$d/rows.jsonl; : > "$rows"; rm -rf "$MTR_WORK"/mmlu-*
      if ! ds python3 -c "import datasets" 2>/dev/null; then
        echo "FAILED: datasets does not import: bash scripts/device_datasets.sh take 1; take 2; install (first)"
      else
        {
          ds timeout 60 python3 benchmarks/mmlu_gpu.py fixture "$fx"
          # five runs at once (a 6.8 M-parameter model leaves the GPUs idle): TP=1 on GPU 0, the Hugging Face
          # backend on GPU 1, TP=2 over both; no second format starts after 70 s; each killed at 130 s
          CUDA_VISIBLE_DEVICES=0 ds timeout 130 python3 benchmarks/mmlu_gpu.py run --backend megatron --tp 1 \
            --fixture "$fx" --rows "$rows" --formats fp8 int4_awq --budget 70 > "$d/tp1.log" 2>&1 &
          CUDA_VISIBLE_DEVICES=1 ds timeout 130 python3 benchmarks/mmlu_gpu.py run --backend hf \
            --fixture "$fx" --rows "$rows" --formats fp8 int4_awq --budget 70 > "$d/hf.log" 2>&1 &
          ds timeout 130 torchrun --nproc-per-node 2 --master-port 29611 benchmarks/mmlu_gpu.py run --backend megatron \
            --tp 2 --fixture "$fx" --rows "$rows" --formats fp8 int4_awq --budget 70 > "$d/tp2.log" 2>&1 &
          # and both scorers in fp32 (FP8 only), where they should agree to a question or two
          CUDA_VISIBLE_DEVICES=0 ds timeout 130 python3 benchmarks/mmlu_gpu.py run --backend megatron --tp 1 \
            --dtype fp32 --fixture "$fx" --rows "$rows" --formats fp8 > "$d/tp1-fp32.log" 2>&1 &
          CUDA_VISIBLE_DEVICES=1 ds timeout 130 python3 benchmarks/mmlu_gpu.py run --backend hf \
            --dtype fp32 --fixture "$fx" --rows "$rows" --formats fp8 > "$d/hf-fp32.log" 2>&1 &
          wait
          for f in tp1 hf tp2 tp1-fp32 hf-fp32; do [ -f "$d/$f.log" ] && { echo "--- $f.log"; grep -v Warning "$d/$f.log"; }; rm -f "$d/$f.log"; done
          ds python3 benchmarks/mmlu_gpu.py compare "$rows" --summary "$d/summary.json" \
            --expect megatron-tp1 hf megatron-tp2 megatron-tp1-fp32 hf-fp32 && echo "mmlu checks PASSED" || echo "mmlu checks FAILED"
        } 2>&1 | tee "$d/mmlu.log"
      fi ;;
    mmlu-test)  # issue 14: the tasks GPU test, now with megatron_mmlu in it (needs datasets); ~130 s
      if ds python3 -c "import datasets"; then
        ds timeout 280 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=5 tests/test_tasks_megatron.py 2>&1 \
          | tee "$OUT/mmlu-test/pytest.log"
      else echo "FAILED: datasets does not import"; fi ;;
    resume)  # issue 11: kill -9 of a Megatron-Core run (FP8, save: all) inside its export, then the same command continues; GPU 0 only, ~75 s, <= 120 s
      CUDA_VISIBLE_DEVICES=0 timeout -k 5 150 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=3 \
        --basetemp=/tmp/resume_pt -k "not tp2" tests/test_resume.py 2>&1 | grep -v -i "warn" | tail -n 80 \
        | tee "$OUT/$part/pytest.log" ;;
    resume-tp2)  # issue 11: the same at TP=2 (torchrun, run --launch; resumed into the export's PP=2); both GPUs, < 2 GiB each, ~90 s, <= 120 s
      timeout -k 5 150 python3 -m pytest -q -m gpu -p no:cacheprovider --durations=3 --basetemp=/tmp/resume_tp2_pt \
        -k tp2 tests/test_resume.py 2>&1 | grep -v -i "warn" | tail -n 80 | tee "$OUT/$part/pytest.log" ;;
    *) return 1 ;;
  esac
  return 0   # a part of this session ran (its own failure shows in its output)
}
run_parts "$@"
