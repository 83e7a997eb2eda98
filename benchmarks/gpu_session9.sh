#!/usr/bin/env bash
# GPU work planned for the sixth session (issue 9, real sizes), one device call per line below, back to back on one
# warm nvidia-h200-x2 machine (it is given back 30 s after a call). Usage (repo root; carry .whl and .scale, the
# 512-window text written on the CPU machine beforehand by
# `python3 benchmarks/scale_text.py .scale/scale_calib.jsonl --windows 512`):
#   bash benchmarks/gpu_session9.sh PART...
# Each part writes under $OUT/<part>/ and prints its log. Parts: env, prewarm (from gpu_env.sh) and those below.
# Planned calls (about 1,550 of the 1,800 device seconds, machine start included):
#   1. env prewarm machine savext  (~110 s)
#   2. tp2-nvfp4-16                (~380-470 s)  qwen3-8b TP2 -> PP2 NVFP4, 512 windows, both programs 16 threads/rank
#   3. tp2-nvfp4-direct            (~330-360 s)  the direct script alone with PyTorch's own threads (as written by hand)
#   4. moe-ours                    (~430-480 s)  qwen3-30b-a3b, the hand-over that reads each _extra_state once
# Afterwards, on the CPU machine (no GPU), the tensor comparisons (see benchmarks/scale_gpu.md, sixth session).
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session9}
source "$(dirname "$0")/gpu_env.sh"   # set-up, te, ds, and the parts env and prewarm
TEXT=.scale/scale_calib.jsonl
session_part() {  # this session's parts ($part and $OUT/$part are set by run_parts)
  case $1 in
    machine)  # cores, host memory, tmpfs: what cpu_threads: auto and the hand-over's choice of place see
      (df -h /dev/shm /tmp; free -g; nproc; python3 -c "import os; print('usable cores', len(os.sched_getaffinity(0)))") \
        2>&1 | tee "$OUT/$part/machine.txt" ;;
    savext)  # ModelOpt's built CUDA extensions, to carry to later machines (saves their ~80 s build); <= 15 MB
      tar -czf /tmp/torch_ext.tgz -C "$TORCH_EXTENSIONS_DIR" . && ls -l /tmp/torch_ext.tgz \
        && [ "$(stat -c %s /tmp/torch_ext.tgz)" -lt 15000000 ] && cp /tmp/torch_ext.tgz "$OUT/$part/" ;;
    tp2-nvfp4-16)  # qwen3-8b TP2 -> PP2 NVFP4, 512 windows, ours then the direct script, both at 16 CPU threads per
      # rank (ModelOpt's exporter packs each weight on the CPU; torchrun gives each rank one thread), tensors
      # compared, digests kept; <= 585 s
      OUT="$OUT/$part" timeout -k 5 585 python3 benchmarks/scale_gpu.py --budget-s 575 --windows 512 --text $TEXT \
        --work /tmp/scale_t --cases qwen3-8b-tp2:nvfp4:1 --first-guess-s 220 --cpu-threads 16 --keep-digests
      echo "scale_gpu rc=$?"; ls /dev/shm; rm -rf /tmp/scale_t ;;
    tp2-nvfp4-direct)  # the same case, the direct script alone with PyTorch's own thread count under torchrun (one
      # per rank), as a hand-written script runs: the user's ratio (ours: cpu_threads auto), and whether the
      # thread count changes any exported byte (--compare-digests against tp2-nvfp4-16's); <= 585 s
      OUT="$OUT/$part" timeout -k 5 585 python3 benchmarks/scale_gpu.py --budget-s 575 --windows 512 --text $TEXT \
        --work /tmp/scale_t --cases qwen3-8b-tp2:nvfp4:1:direct --first-guess-s 360 --keep-digests
      echo "scale_gpu rc=$?"; rm -rf /tmp/scale_t ;;
    moe-ours)  # qwen3-30b-a3b EP2 -> PP2 FP8, deterministic, 32 windows, ours alone (cpu_threads auto), digests kept:
      # the hand-over that reads each _extra_state once and skips the access checks; compared on the CPU with
      # the fifth session's deterministic runs (same text, windows, settings); <= 585 s
      df -h /tmp /dev/shm | tee "$OUT/$part/df.txt"
      OUT="$OUT/$part" timeout -k 5 585 python3 benchmarks/scale_gpu.py --deterministic --budget-s 575 \
        --windows 32 --text $TEXT --work /tmp/scale_d --cases qwen3-30b-a3b-ep2:fp8:1:ours --first-guess-s 330 \
        --keep-digests
      echo "scale_gpu rc=$?"; ls /dev/shm; rm -rf /tmp/scale_d ;;
    *) return 1 ;;
  esac
  return 0   # a part of this session ran (its own failure shows in its output)
}
run_parts "$@"
