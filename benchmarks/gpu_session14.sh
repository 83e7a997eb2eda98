#!/usr/bin/env bash
# Ninth session's GPU calls (one H200; the 2-GPU kind was not lent and 279 device seconds were left):
#   OUT=$OUT bash benchmarks/gpu_session14.sh env regress pack     (carry .whl .torch_ext)
#   regress: the gpu-marked tests this session's changes reach (the cache given back before the first stage, the
#     export's snap counted over the ranks) and the CPU tests of the snap on fused MoE experts and W4A8, here under
#     the GPU machine's torch 2.11, whose cast to FP8 gives NaN past 448 where the CPU machine's 2.13 saturates
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session14}
source "$(dirname "$0")/gpu_env.sh"
session_part() {
  case $1 in
    regress)
      timeout -k 5 "${REGRESS_S:-200}" python3 -m pytest -q -p no:cacheprovider -rs --durations=10 -m "gpu or not gpu" \
        tests/test_megatron_distill_gpu.py tests/test_megatron_gpu.py \
        "tests/test_distill_hf_gpu.py::test_nvfp4_qad_wins_back_part_of_the_ptq_loss_and_the_export_keeps_it" \
        "tests/test_distill_hf.py::test_fp8_qat_of_fused_moe_experts_exports_each_experts_trained_codes" \
        "tests/test_distill_hf.py::test_w4a8_qat_exports_the_int4_codes_it_trained_with" \
        "tests/test_distill_hf.py::test_fp8_qat_past_the_calibrated_ranges_exports_the_codes_it_trained_with" \
        2>&1 | grep -v -i "warn\|Loading weights\|Writing model shards" | tee "$OUT/$part/pytest.log" | tail -n 30
      echo "pytest rc=${PIPESTATUS[0]}" ;;
    *) return 1 ;;
  esac
}
run_parts "$@"
