#!/usr/bin/env bash
# GPU work of the 2026-11-30 second session, one device call per group of parts, on one warm machine.
# Usage (repo root, .whl/ carried; Transformer Engine parts after scripts/device_te.sh install):
#   bash benchmarks/gpu_session5.sh PART...
# Each part writes under $OUT/<part>/ (default benchmarks/raw/session5/<part>) and prints its log.
# Parts: env, prewarm (ModelOpt's three CUDA extensions at once); the others are added by the work that needs them.
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session5}
source "$(dirname "$0")/gpu_env.sh"   # set-up, te, ds, and the parts env and prewarm
session_part() {  # this session's parts ($part and $OUT/$part are set by run_parts)
  case $1 in
    # --- parts added by the session's work below this line (keep one case per part) ---
    evalres)  # issue 14: task accuracy per format (Megatron-Core backend; no format starts after 80 s): ~1.5 min
      OUT="$OUT/$part" python3 benchmarks/tasks_gpu.py --budget 80 2>&1 | grep -v -i "warn\|parquet\|MMLU:" \
        | tee "$OUT/$part/tasks_gpu.log" ;;
    evalres-final)  # issues 14 and 11: the tasks' GPU test and the Megatron kill-and-resume test: ~1.5 min
      python3 -m pytest -q -m gpu -p no:cacheprovider --durations=8 tests/test_tasks_megatron.py \
        tests/test_resume.py 2>&1 | grep -v -i "warn\|parquet" | tail -n 60 | tee "$OUT/$part/pytest.log" ;;
    vsmlm)  # issue 15: Megatron-LM's quantize.sh + export.sh (.mlm/ carried) next to one recipe; TE when present.
      # VSMLM_ARGS: the dev smoke is `--smoke --budget-s 110` (no TE), the final run `--reps 3 --budget-s 520`
      if [ -n "${MTR_TE_SITE:-}" ]; then run=te; else run=; fi
      OUT="$OUT" $run python3 benchmarks/vs_megatron_lm.py ${VSMLM_ARGS:---reps 3 --budget-s 520} 2>&1 \
        | grep -v -i "warn" | tail -n 60 | tee "$OUT/vsmlm/run.log" ;;
    mdistill)  # issue 13: distillation on Megatron-Core: benchmarks/distill_gpu.py and its GPU tests
      # MDISTILL_DEV=1: the dev call's settings (learning-rate sweeps, no TE); unset: the final run (~3.5 min):
      # speed + QAD on the local spec, then Minitron pruning + distillation and its GPU test with TE when present
      mkdir -p "$OUT/distill"; export OUT
      if [ -n "${MDISTILL_DEV:-}" ]; then
        export DISTILL_QAD_STEPS=150 DISTILL_QAD_LRS=1e-5,5e-5,2e-4 DISTILL_DEPTH_STEPS=300 \
               DISTILL_DEPTH_LRS=1e-4,3e-4,1e-3 DISTILL_SPEED_STEPS=40 DISTILL_SPEED_REPS=5
        timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider -s --durations=5 tests/test_megatron_distill_gpu.py \
          2>&1 | grep -v -i "warning" | tail -n 40 | tee "$OUT/distill/pytest.log"
        OUT="$OUT" timeout 150 python3 benchmarks/distill_gpu.py 2>&1 | grep -v -i "warning" \
          | tee "$OUT/distill/distill_gpu.log"
      else
        timeout 160 python3 benchmarks/distill_gpu.py --parts speed,qad 2>&1 | grep -v -i "warning" \
          | tee "$OUT/distill/distill_gpu_speed_qad.log"
        if [ -n "${MTR_TE_SITE:-}" ]; then
          te timeout 80 python3 benchmarks/distill_gpu.py --parts minitron 2>&1 | grep -v -i "warning" \
            | tee "$OUT/distill/distill_gpu_minitron.log"
          te timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider -s --durations=5 -k minitron \
            tests/test_megatron_distill_gpu.py 2>&1 | grep -v -i "warning" | tail -n 30 | tee "$OUT/distill/pytest_te.log"
        else echo "Transformer Engine is not on this machine: Minitron part skipped"; fi
      fi ;;
    mdistill-te)  # the Transformer Engine half of mdistill alone (after scripts/device_te.sh install)
      mkdir -p "$OUT/distill"; export OUT
      te timeout 80 python3 benchmarks/distill_gpu.py --parts minitron 2>&1 | grep -v -i "warning" \
        | tee "$OUT/distill/distill_gpu_minitron.log"
      te timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider -s --durations=5 -k minitron \
        tests/test_megatron_distill_gpu.py 2>&1 | grep -v -i "warning" | tail -n 30 | tee "$OUT/distill/pytest_te.log" ;;
    *) return 1 ;;
  esac
  return 0   # a part of this session ran (its own failure shows in its output)
}
run_parts "$@"
