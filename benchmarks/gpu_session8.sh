#!/usr/bin/env bash
# GPU work planned for the fifth session (issue 9, real sizes), one device call per group of parts, on one warm
# nvidia-h200-x2 machine. Usage (repo root; carry .whl and .scale, the 512-window text written on the CPU machine
# beforehand by `python3 benchmarks/scale_text.py .scale/scale_calib.jsonl --windows 512`):
#   bash benchmarks/gpu_session8.sh PART...
# Each part writes under $OUT/<part>/ and prints its log. Parts: env, prewarm (from gpu_env.sh) and those below.
# Planned calls (about 1,600 of the 1,800 device seconds):
#   1. env prewarm machine determ-tiny   (~300 s)   2. moe-ours (~350 s)   3. moe-direct (~480 s)   4. tp2-nvfp4 (~350 s)
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session8}
source "$(dirname "$0")/gpu_env.sh"   # set-up, te, ds, and the parts env and prewarm
TEXT=.scale/scale_calib.jsonl
session_part() {  # this session's parts ($part and $OUT/$part are set by run_parts)
  case $1 in
    machine)  # where the hand-over between layouts can go: tmpfs size, host memory, the container's limit
      (df -h /dev/shm /tmp; free -g; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.current; nproc) 2>&1 \
        | tee "$OUT/$part/machine.txt" ;;
    determ-tiny)  # deterministic: true on the tiny Qwen3-MoE at EP=2 -> PP=2, two repetitions: ours == direct in
      # each, and each program's second export == its first; ~150-200 s, <= 300 s
      OUT="$OUT/$part" timeout -k 5 300 python3 benchmarks/scale_gpu.py --deterministic --budget-s 280 --windows 32 \
        --seq 256 --work /tmp/scale_det --cases tiny-moe-ep2:fp8:2 --first-guess-s 60
      echo "scale_gpu rc=$?"; rm -rf /tmp/scale_det ;;
    moe-ours|moe-direct)  # qwen3-30b-a3b EP2 -> PP2 FP8 with deterministic: true on both sides, one program per call,
      # export hashes kept (scale_gpu.py --compare-digests afterwards, no GPU); ours hands over through host memory
      # when the machine allows (MTR_HANDOVER_DIR unset); MOE_WINDOWS (default 32) windows; <= 585 s
      df -h /tmp /dev/shm | tee "$OUT/$part/df.txt"
      OUT="$OUT/$part" timeout -k 5 585 python3 benchmarks/scale_gpu.py --deterministic --budget-s 575 \
        --windows "${MOE_WINDOWS:-32}" --text $TEXT --work /tmp/scale_d --cases "qwen3-30b-a3b-ep2:fp8:1:${part#moe-}" \
        --first-guess-s 330 --keep-digests
      echo "scale_gpu rc=$?"; ls /dev/shm; rm -rf /tmp/scale_d ;;
    tp2-nvfp4)  # qwen3-8b TP2 -> PP2 NVFP4, 512 windows, ours then direct, tensors compared; the PP2 export peak
      # since the hand-over fix (planned 8.11 GiB); <= 570 s
      OUT="$OUT/$part" timeout -k 5 570 python3 benchmarks/scale_gpu.py --budget-s 555 --windows 512 --text $TEXT \
        --work /tmp/scale_c --cases qwen3-8b-tp2:nvfp4:1 --first-guess-s 200
      echo "scale_gpu rc=$?"; ls /dev/shm; rm -rf /tmp/scale_c ;;
    handover-ab)  # the hand-over on disk (MTR_HANDOVER_DIR=output) and in host memory, qwen3-8b TP2 FP8 ours alone,
      # 64 windows, save/build/load seconds from the manifests; ~230-280 s
      for via in output memory; do
        if [ $via = output ]; then export MTR_HANDOVER_DIR=output; else unset MTR_HANDOVER_DIR; fi
        OUT="$OUT/$part/$via" timeout -k 5 260 python3 benchmarks/scale_gpu.py --budget-s 250 --windows 64 \
          --work /tmp/scale_h --cases qwen3-8b-tp2:fp8:1:ours --first-guess-s 110
        echo "scale_gpu $via rc=$?"; rm -rf /tmp/scale_h
      done; unset MTR_HANDOVER_DIR; ls /dev/shm ;;
    *) return 1 ;;
  esac
  return 0   # a part of this session ran (its own failure shows in its output)
}
run_parts "$@"
