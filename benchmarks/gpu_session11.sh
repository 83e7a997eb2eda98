#!/usr/bin/env bash
# GPU work planned for the seventh session (issue 9's last case: qwen3-30b-a3b EP2 -> PP2 at 512 windows), one warm
# nvidia-h200-x4. Usage (repo root; carry .whl, .scale and .torch_ext, the last unpacked from the sixth session's
# torch_ext.tgz so that ModelOpt's CUDA extensions are not built again):
#   bash benchmarks/gpu_session11.sh PART...
# Planned calls:
#   1. env prewarm moe-probe pack   (~250 s)  the quantize stage alone, two forward passes per rank: batch 8 and 48 with
#                                             deterministic: true, batch 48 without: tokens/s of each
#   2. moe512 pack                  (~590 s)  only if the probe's deterministic batch-48 rate is >= 3,500 tokens/s
#                                             (1 M tokens in <= 300 s, leaving ~250 s for start, hand-over and
#                                             export): ours on GPUs 0,1 and the direct script on GPUs 2,3 at once,
#                                             512 windows, batch MOE_BATCH (48; planned 102 GiB per rank),
#                                             deterministic: true, tensors compared on the CPU afterwards
# On nvidia-h200-x2 (the seventh session: 4-GPU kinds withheld), call 2 becomes two calls, back to back on one warm
# machine: `env moe512-ours pack` then `env moe512-direct pack` (~590 s each).
# Since the sixth session's runs each of EP2's two data-parallel replicas calibrates on half the windows (both
# programs), which alone should about double the rate.
# Why: the MoE calibrates at ~1,000 tokens/s at batch 8 (sixth session), so 512 windows (1 M tokens) take over 1,000 s;
# if the cost is per forward pass (64 local experts run one after another in each of 48 layers), a larger batch
# brings it into one call for both programs alike.
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
