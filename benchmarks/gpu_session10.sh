#!/usr/bin/env bash
# GPU work of the sixth session (issue 9, real sizes): one warm nvidia-h200-x4 (4x H200, 64 cores), each GPU pair or
# single GPU running its own driver at once, so the dense cases at 512 windows and the MoE's NVFP4 fit one session's
# 1,800 device seconds. Within a driver the two programs alternate (ours first on even repetitions); drivers on
# other GPUs run at the same time, so every program of a call shares the host with the same neighbours. Each rank
# of both programs gets 16 CPU threads (--cpu-threads 16: 64 cores over 4 GPUs; torchrun alone would give one).
# Usage (repo root; carry .whl and .scale, the 512-window text written on the CPU machine beforehand by
# `python3 benchmarks/scale_text.py .scale/scale_calib.jsonl --windows 512`):
#   bash benchmarks/gpu_session10.sh PART...
# Planned calls:
#   1. env prewarm machine savext dense1   (~480 s)  qwen3-8b and llama-3.1-8b TP1, FP8 and NVFP4, one GPU each
#   2. moe                                 (~540 s)  qwen3-30b-a3b EP2 -> PP2 NVFP4, deterministic, 32 windows:
#                                                    ours on GPUs 0,1 and the direct script on GPUs 2,3 at once
#   3. tp2                                 (~400 s)  qwen3-8b TP2 -> PP2, FP8 on GPUs 0,1 and NVFP4 on GPUs 2,3
#   4. FIRST_REP=1: dense1 tp2            (~500 s)  the second repetitions, the direct script first
# The returned files are packed into one archive per call (a call returns at most 8 files).
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session10}
source "$(dirname "$0")/gpu_env.sh"
TEXT=.scale/scale_calib.jsonl
session_part() {
  case $1 in
    machine)
      (df -h /dev/shm /tmp; free -g; nproc; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
       python3 -c "import os; print('usable cores', len(os.sched_getaffinity(0)))") 2>&1 | tee "$OUT/$part/machine.txt" ;;
    savext)  # ModelOpt's built CUDA extensions, to carry to later machines (saves their build); <= 15 MB
      tar -czf /tmp/torch_ext.tgz -C "$TORCH_EXTENSIONS_DIR" . && ls -l /tmp/torch_ext.tgz \
        && [ "$(stat -c %s /tmp/torch_ext.tgz)" -lt 15000000 ] && cp /tmp/torch_ext.tgz "$OUT/$part/" ;;
    dense1)  # the four 1-GPU cases at 512 windows, one GPU each, one alternating pair each; <= DENSE_S s
      local t=${DENSE_S:-420}
      drive q8-fp8 0 "$t" --windows 512 --cases qwen3-8b-tp1:fp8:1 --first-guess-s 170
      drive q8-nvfp4 1 "$t" --windows 512 --cases qwen3-8b-tp1:nvfp4:1 --first-guess-s 170
      drive l8-fp8 2 "$t" --windows 512 --cases llama3.1-8b-tp1:fp8:1 --first-guess-s 170
      drive l8-nvfp4 3 "$t" --windows 512 --cases llama3.1-8b-tp1:nvfp4:1 --first-guess-s 170
      wait; echo "dense1 drivers done"; tail -n 3 "$OUT/$part"/*/driver.txt; rm -rf /tmp/scale_q8-* /tmp/scale_l8-* ;;
    moe)  # qwen3-30b-a3b EP2 (DP2) -> PP2 NVFP4, deterministic on both sides, 32 windows; the two programs at once
      df -h /tmp /dev/shm | tee "$OUT/$part/df.txt"
      drive moe-ours 0,1 580 --deterministic --windows 32 --cases qwen3-30b-a3b-ep2:nvfp4:1:ours --first-guess-s 330
      drive moe-direct 2,3 580 --deterministic --windows 32 --cases qwen3-30b-a3b-ep2:nvfp4:1:direct --first-guess-s 330
      wait; echo "moe drivers done"; tail -n 3 "$OUT/$part"/*/driver.txt; ls /dev/shm; rm -rf /tmp/scale_moe-* ;;
    tp2)  # qwen3-8b TP2 -> PP2 at 512 windows: FP8 on GPUs 0,1 and NVFP4 on GPUs 2,3, one alternating pair each
      local t=${TP2_S:-560}
      drive t2-fp8 0,1 "$t" --windows 512 --cases qwen3-8b-tp2:fp8:1 --first-guess-s 200
      drive t2-nvfp4 2,3 "$t" --windows 512 --cases qwen3-8b-tp2:nvfp4:1 --first-guess-s 250
      wait; echo "tp2 drivers done"; tail -n 3 "$OUT/$part"/*/driver.txt; rm -rf /tmp/scale_t2-* ;;
    *) return 1 ;;
  esac
  return 0
}
run_parts "$@"
