#!/usr/bin/env bash
# The eighth session was lent only the 1-GPU kind, so none of these calls ran (its own calls: gpu_session13.sh; the
# single-process half of call 3, `gpu_session13.sh aq-one`, ran through ModelOpt's format choice with the slimmed pulp).
# GPU work planned for the next session with a warm nvidia-h200-x2 (carry .whl, .scale and .torch_ext: ModelOpt's
# CUDA extensions as built before, so a fresh machine does not build them again). Usage (repo root):
#   bash benchmarks/gpu_session12.sh PART...
# Planned calls, in this order (about 1,700 device seconds with the machine's start):
#   1. MOE_FORMAT=fp8 bash benchmarks/gpu_session11.sh env moe512-direct pack   (~520 s)  issue 9's last case: the
#   2. MOE_FORMAT=fp8 bash benchmarks/gpu_session11.sh env moe512-ours pack     (~520 s)  MoE FP8 at 512 windows,
#      the direct script first this time; then scale_gpu.py --compare-digests OURS DIRECT on the CPU machine
#   3. bash benchmarks/gpu_session12.sh env aq-dp pack                             (~150 s)  auto_quantize's windows
#      dealt across two data-parallel replicas against one process (checked on the CPU only so far)
#   4. if >= 560 s are left: bash benchmarks/gpu_session12.sh env handover-prof pack          (~500 s)  where the
#      MoE hand-over's save and load spend their time at real size (87 s + 89 s for 64 GB through /dev/shm)
# Call 3 ran once at the end of the seventh session on its last device seconds (benchmarks/raw/session11/c5-aq-dp):
# one process calibrated each candidate on 8 batches and scored 4, each of the two DP ranks on 4 and 2, as intended;
# then every run stopped at ModelOpt's format choice: pulp's CBC solver was missing from a .whl/ slimmed to fit the
# 64 MiB the device call carries (now refused before the model loads). Keep the pulp wheel's linux/i64 solver: remove
# only pulp/solverdir/cbc/{osx,win,linux/i32,linux/arm64} (.whl/ 11 MB; with .scale and .torch_ext ~59 MB in all).
set -uo pipefail
OUT=${OUT:-benchmarks/raw/session12}
source "$(dirname "$0")/gpu_env.sh"
# aq_ranks NAME RECIPE: /tmp/RECIPE.yaml on two data-parallel ranks, output in $OUT/$part/NAME.{json,log}
aq_ranks() {
  timeout -k 5 200 python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m modelopt_typed_recipes \
    run "/tmp/$2.yaml" --json --no-progress > "$OUT/$part/$1.json" 2> "$OUT/$part/$1.log"
  echo "$1 rc=$?"
}
session_part() {
  case $1 in
    aq-dp)  # the same auto_quantize recipe on one process and on two data-parallel ranks, then an export at DP2
      local r='{name: aq-dp, model: reference-llama, source: {type: builtin}, stages: [{technique: auto_quantize, formats: [nvfp4, fp8], effective_bits: 6.0, score_size: 16, save: true}'
      local rest='], calibration: {dataset: reference-train, num_samples: 32, seq_length: 256, batch_size: 4}, backend: megatron, device: cuda'
      echo "$r$rest, output_dir: /tmp/aq/one}" > /tmp/aq1.yaml
      echo "$r$rest, layout: {data_parallel: 2}, output_dir: /tmp/aq/two}" > /tmp/aq2.yaml
      echo "$r, {technique: export}$rest, layout: {data_parallel: 2}, output_dir: /tmp/aq/two-export}" > /tmp/aq3.yaml
      python3 -m modelopt_typed_recipes run /tmp/aq1.yaml --json --no-progress > "$OUT/$part/one.json" \
        2> "$OUT/$part/one.log"; echo "one rc=$?"
      aq_ranks two aq2
      python3 - "$OUT/$part" <<'PY'
import json, sys
from pathlib import Path
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
out, amax = Path(sys.argv[1]), {}
for n in ("one", "two"):
    text = [line for line in (out / f"{n}.json").read_text().splitlines() if line.startswith("{")]
    st = json.loads(text[0])["stages"][0]  # one JSON result per rank: the first
    print(n, st["effective_bits"], json.dumps(st["details"]), flush=True)
    ck = next(Path("/tmp/aq", n).glob("01-*/checkpoint"))
    dcp_to_torch_save(ck, f"/tmp/aq-{n}.pt")
    amax[n] = {k: v for k, v in torch.load(f"/tmp/aq-{n}.pt", weights_only=False).items() if k.endswith("_amax")}
a, b = amax["one"], amax["two"]
same = sum(torch.equal(a[k], b[k]) for k in a if k in b)
print("same quantizers", a.keys() == b.keys(), "amax bitwise", same, "/", len(a), flush=True)
PY
      aq_ranks two-export aq3; ls /tmp/aq/two-export/*/ 2>&1 | head; rm -rf /tmp/aq /tmp/aq-*.pt ;;
    handover-prof)  # the MoE hand-over with cProfile on each rank (random weights, FP8, EP2 -> PP2 via /dev/shm)
      timeout -k 5 560 python3 -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/handover_cpu.py \
        --device cuda --model qwen3-30b-a3b --work /tmp/hp_work --profile "$OUT/$part" 2>&1 | grep -v Warning \
        | tail -40; echo "rc=${PIPESTATUS[0]}"; rm -rf /tmp/hp_work; ls /dev/shm ;;
    *) return 1 ;;
  esac
  return 0
}
run_parts "$@"
