#!/usr/bin/env bash
# Issue 9's MoE at full size: qwen3-30b-a3b EP2 DP2 -> PP2 at 512 windows of 2,048 tokens, batch MOE_BATCH (48),
# deterministic: true, both programs. Usage (repo root; carry .whl, .scale and .torch_ext, the last ModelOpt's built
# CUDA extensions, so that a fresh machine does not build them again):
#   bash benchmarks/gpu_session11.sh PART...
# Parts: moe512-ours / moe512-direct (one program on GPUs 0,1: a 2-GPU machine runs the pair as two calls, back to
# back), moe512 (both at once on a 4-GPU machine), moe-probe (the quantize stage alone at batches 8 and 48:
# benchmarks/moe_probe.py), and gpu_env.sh's env, prewarm, pack.
# Ran in the seventh session (nvidia-h200-x2, NVFP4): `env moe512-ours pack`, then `env moe512-direct pack`, ~520 s
# each with start and pack; 476.36 s against 482.40 s, 74,739/74,739 tensors equal (benchmarks/scale_gpu.md).
# Next: FP8, the direct script first this time (two calls, ~1,050 device seconds with the machine's start):
#   MOE_FORMAT=fp8 OUT=$OUT bash benchmarks/gpu_session11.sh env moe512-direct pack
#   MOE_FORMAT=fp8 OUT=$OUT bash benchmarks/gpu_session11.sh env moe512-ours pack
# then on the CPU: scale_gpu.py --compare-digests OURS DIRECT, saved like benchmarks/raw/session11/moe512_compare.json.
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session11}
source "$(dirname "$0")/gpu_env.sh"
TEXT=.scale/scale_calib.jsonl
session_part() {
  case $1 in
    moe-probe)
      CUDA_VISIBLE_DEVICES=0,1 timeout -k 5 400 python3 benchmarks/moe_probe.py --text $TEXT --batches 8,48 \
        --nondeterministic-too --out /tmp/moe_probe | tee "$OUT/$part/probe.jsonl"
      cp /tmp/moe_probe/*.log "$OUT/$part/"; rm -rf /tmp/moe_probe ;;
    moe512)
      df -h /tmp /dev/shm | tee "$OUT/$part/df.txt"
      local b=${MOE_BATCH:-48}
      drive moe-ours 0,1 585 --deterministic --windows 512 --batch "$b" --cases qwen3-30b-a3b-ep2:nvfp4:1:ours \
        --first-guess-s 480
      drive moe-direct 2,3 585 --deterministic --windows 512 --batch "$b" \
        --cases qwen3-30b-a3b-ep2:nvfp4:1:direct --first-guess-s 480
      wait; echo "moe512 drivers done"; tail -n 3 "$OUT/$part"/*/driver.txt; ls /dev/shm; rm -rf /tmp/scale_moe-* ;;
    moe512-ours|moe512-direct)  # the same case on a 2-GPU machine (nvidia-h200-x2): one program per call
      local who=${part#moe512-} b=${MOE_BATCH:-48}
      df -h /tmp /dev/shm | tee "$OUT/$part/df.txt"
      drive "moe-$who" 0,1 575 --deterministic --windows 512 --batch "$b" \
        --cases "qwen3-30b-a3b-ep2:${MOE_FORMAT:-nvfp4}:1:$who" --first-guess-s 450
      wait; echo "$part driver done"; tail -n 5 "$OUT/$part"/*/driver.txt; rm -rf /tmp/scale_moe-* ;;
    *) return 1 ;;
  esac
  return 0
}
run_parts "$@"
