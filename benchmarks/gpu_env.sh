# Sourced by benchmarks/gpu_session*.sh: the GPU machine's set-up that every session's parts share, in one place.
# The ModelOpt / megatron-core wheels from .whl/ into /tmp/site (once per machine), the environment every part runs
# in, `te` (a command with Transformer Engine importable, after scripts/device_te.sh install), `ds` (a command with
# `datasets` importable, after scripts/device_datasets.sh install) and the two parts every session starts with:
# `env` and `prewarm` (ModelOpt's three CUDA extensions built at once), `pack`, `drive` (a scale_gpu.py driver in
# the background) and `run_parts`, the loop over the parts
# asked for. The caller sets OUT, defines session_part (its own parts) and calls run_parts "$@".
if [ ! -d /tmp/site/modelopt ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
[ -d /tmp/te_site/transformer_engine ] && export MTR_TE_SITE=/tmp/te_site
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.torch_ext}   # ModelOpt's CUDA extensions, built once
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export MTR_WORK=${MTR_WORK:-/tmp/mtr_work} PYTHONWARNINGS=ignore
te() { PYTHONPATH=/tmp/te_site:$PYTHONPATH "$@"; }   # a command with Transformer Engine importable
# datasets for ModelOpt's megatron_mmlu: only for the parts that need it, since PYTHONPATH precedes the machine's
# site-packages and /tmp/ds_site may hold a replacement (fsspec) of the machine's
ds() { HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PYTHONPATH:/tmp/ds_site "$@"; }  # all data is local

# drive SUBDIR DEVICES TIMEOUT ARGS...: one benchmarks/scale_gpu.py driver in the background on DEVICES, its own work
# folder, 16 CPU threads per rank for both programs, digests kept, repetitions numbered from $FIRST_REP (0); output
# under $OUT/$part/SUBDIR. Several drivers share a 4-GPU host; the caller waits for them.
drive() {
  local sub=$1 dev=$2 t=$3; shift 3
  mkdir -p "$OUT/$part/$sub"
  OUT="$OUT/$part/$sub" timeout -k 5 "$t" python3 benchmarks/scale_gpu.py --devices "$dev" --budget-s $((t - 10)) \
    --text "${TEXT:-.scale/scale_calib.jsonl}" --work "/tmp/scale_$sub" --cpu-threads 16 --keep-digests \
    --first-rep "${FIRST_REP:-0}" "$@" > "$OUT/$part/$sub/driver.txt" 2>&1 &
}

# common_part PART: run one of the shared parts; returns 1 when PART is not one of them
common_part() {
  case $1 in
    pack)  # everything under $OUT in one archive (a device call returns at most 8 files); savext's stays apart
      rmdir "$OUT/$part"; tar -czf /tmp/pack.tgz -C "$OUT" --exclude=torch_ext.tgz . \
        && find "$OUT" -mindepth 1 -maxdepth 1 ! -name savext -exec rm -rf {} + && mv /tmp/pack.tgz "$OUT/" \
        && ls -l "$OUT" ;;
    env) python3 - <<'PY'
import importlib.metadata as m, torch
print({p: m.version(p) for p in ("torch", "megatron-core", "nvidia-modelopt", "transformers")},
      torch.cuda.get_device_name(0), torch.cuda.device_count(), flush=True)
PY
    ;;
    prewarm)
      for ext in get_cuda_ext_fp8 get_cuda_ext get_cuda_ext_mx; do
        python3 -c "import time; t=time.time(); from modelopt.torch.quantization import extensions as e; \
ok = getattr(e, '$ext')(raise_if_failed=True) is not None; print('$ext', ok, round(time.time()-t, 1), 's', flush=True)" &
      done; wait ;;
    *) return 1 ;;
  esac
  return 0   # a shared part ran (its own failure shows in its output)
}

# run_parts PART...: each part in turn, timed, its output folder made: a shared part here, else the session
# script's session_part (which returns 1 for a part it does not know)
run_parts() {
  for part in "$@"; do
    echo "=== $part $(date -u +%T)"; start=$(date +%s); mkdir -p "$OUT/$part"
    common_part "$part" || session_part "$part" || echo "unknown part $part"
    echo "=== $part took $(( $(date +%s) - start )) s"
  done
}
