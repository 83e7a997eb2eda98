#!/usr/bin/env bash
# GPU work of the 2026-11-30 fourth session (issue 9, real sizes), one device call per group of parts, on one warm
# nvidia-h200-x2 machine. Usage (repo root; carry .whl and .scale, the 512-window text written here beforehand by
# `python3 benchmarks/scale_text.py .scale/scale_calib.jsonl --windows 512`, so both programs of every call read
# the same file and no device time goes to writing it):
#   bash benchmarks/gpu_session7.sh PART...
# Each part writes under $OUT/<part>/ and prints its log. Parts: env, prewarm (from gpu_env.sh) and those below.
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session7}
source "$(dirname "$0")/gpu_env.sh"   # set-up, te, ds, and the parts env and prewarm
TEXT=.scale/scale_calib.jsonl
session_part() {  # this session's parts ($part and $OUT/$part are set by run_parts)
  case $1 in
    smoke-moe)  # the EP=2 path of both programs on the tiny Qwen3-MoE before the 30 B model's calls; ~60 s, <= 200 s
      OUT="$OUT/$part" timeout -k 5 200 python3 benchmarks/scale_gpu.py --budget-s 180 --windows 32 --seq 256 \
        --work /tmp/scale_smoke --cases tiny-moe-ep2:fp8:1 --first-guess-s 60
      echo "scale_gpu rc=$?" ;;
    streams)  # two 1-GPU cases at once, one per GPU, each alternating ours and the direct script:
      # GPU 0: qwen3-8b TP1 FP8, 3 repetitions of 64 windows (the sequential ratio); GPU 1: llama-3.1-8b TP1
      # NVFP4, 512 windows of the carried text, ours then direct; <= 500 s
      df -h /tmp | tee "$OUT/$part/df.txt"
      OUT="$OUT/$part/qwen3-8b" timeout -k 5 495 python3 benchmarks/scale_gpu.py --devices 0 --budget-s 480 \
        --windows 64 --work /tmp/scale_a --cases qwen3-8b-tp1:fp8:3 --first-guess-s 70 &
      OUT="$OUT/$part/llama3.1-8b" timeout -k 5 495 python3 benchmarks/scale_gpu.py --devices 1 --budget-s 480 \
        --windows 512 --text $TEXT --work /tmp/scale_b --cases llama3.1-8b-tp1:nvfp4:1 --first-guess-s 200 &
      wait; rm -rf /tmp/scale_a /tmp/scale_b ;;
    tp2-nvfp4)  # qwen3-8b TP2 -> PP2 NVFP4, 512 windows, ours then direct, tensors compared; <= 570 s
      df -h /tmp | tee "$OUT/$part/df.txt"
      OUT="$OUT/$part" timeout -k 5 570 python3 benchmarks/scale_gpu.py --budget-s 555 --windows 512 --text $TEXT \
        --work /tmp/scale_c --cases qwen3-8b-tp2:nvfp4:1 --first-guess-s 200
      echo "scale_gpu rc=$?"; rm -rf /tmp/scale_c ;;
    moe-ours|moe-direct)  # qwen3-30b-a3b EP2 -> PP2 FP8, one program per call, export hashes kept for the
      # comparison afterwards (scale_gpu.py --compare-digests); MOE_WINDOWS (default 64) windows; <= 585 s
      df -h /tmp | tee "$OUT/$part/df.txt"
      OUT="$OUT/$part" timeout -k 5 585 python3 benchmarks/scale_gpu.py --budget-s 575 --windows "${MOE_WINDOWS:-64}" \
        --text $TEXT --work /tmp/scale_d --cases "qwen3-30b-a3b-ep2:fp8:1:${part#moe-}" --first-guess-s 330 \
        --keep-digests
      echo "scale_gpu rc=$?"; df -h /tmp; rm -rf /tmp/scale_d ;;
    *) return 1 ;;
  esac
  return 0   # a part of this session ran (its own failure shows in its output)
}
run_parts "$@"
