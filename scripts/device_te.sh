#!/usr/bin/env bash
# Bring Transformer Engine 2.20.2 (CUDA 13) to the GPU machine, which has no network and takes at most
# 64 MiB per device call: the 264 MiB core wheel travels in parts over several calls, and the torch
# extension (transformer_engine_torch, sources only on PyPI) is compiled there once, in the background,
# while the parts arrive. ModelOpt's Minitron pruning (mcore_minitron) registers only when TE imports.
#
# Here (CPU machine, repo root):  bash scripts/device_te.sh pack          -> .te1/ .. .teN/ (git-ignored)
# There, one device call each, with the machine kept warm between them:
#   bash scripts/device_te.sh start       carry [.whl, .te1]: ModelOpt wheels into /tmp/site, TE build started
#   bash scripts/device_te.sh take K      carry [.teK]: part K kept under /tmp/te_in
#   bash scripts/device_te.sh install     parts joined, sha256 checked, TE installed into /tmp/te_site
# Afterwards: export PYTHONPATH=/tmp/te_site:/tmp/site:$PWD (TE first only for runs that want it).
set -uo pipefail
source "$(dirname "$0")/device_parts.sh"
TE_VERSION=2.20.2
IN=/tmp/te_in
cmd=${1:-}

case $cmd in
pack)
  dl=${TE_DOWNLOAD:-/tmp/te_dl}
  mkdir -p "$dl"
  py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
  $py -m pip download -q --no-deps -d "$dl" "transformer_engine_cu13==$TE_VERSION" "transformer_engine==$TE_VERSION" \
    "transformer_engine_torch==$TE_VERSION" || exit 1
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 -d "$dl" nvidia-cudnn-frontend nvdlfw-inspect || exit 1
  rm -rf .te[0-9]* && mkdir -p .te1
  # build inputs: the sdist and cuDNN frontend's headers (header-only for the C++ extension)
  cp "$dl"/transformer_engine_torch-$TE_VERSION.tar.gz "$dl"/transformer_engine-$TE_VERSION-py3-none-any.whl \
     "$dl"/nvdlfw_inspect-*.whl .te1/
  tmp=$(mktemp -d) && (cd "$tmp" && unzip -q "$dl"/nvidia_cudnn_frontend-*.whl 'include/*') \
    && tar czf .te1/cudnn_frontend_include.tgz -C "$tmp" include && rm -rf "$tmp"
  # part 1 rides with .whl (24 MiB) and the working tree (18 MiB); later parts (46 MiB) with the tree alone
  parts_split "$dl/transformer_engine_cu13-$TE_VERSION-py3-none-manylinux_2_28_x86_64.whl" .te core 20 46 ;;
start)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  mkdir -p $IN && cp .te1/* $IN/ && ls $IN
  setsid nohup bash "$0" build > /tmp/te_build.log 2>&1 < /dev/null &
  echo "TE build started (log /tmp/te_build.log)" ;;
take)
  parts_take .te "$2" $IN || exit 1
  echo "--- build log tail"; tail -n 3 /tmp/te_build.log; ls /tmp/te_wheels 2>/dev/null ;;
build)  # runs detached: compile transformer_engine_torch into a wheel under /tmp/te_wheels
  t0=$(date +%s)
  src=/tmp/te_src && rm -rf $src && mkdir -p $src && tar xzf $IN/transformer_engine_torch-$TE_VERSION.tar.gz -C $src
  tar xzf $IN/cudnn_frontend_include.tgz -C $src
  cudnn_inc=$(python3 -c "import nvidia.cudnn as m, os; print(os.path.join(list(m.__path__)[0], 'include'))")
  export CPATH=$src/include:$cudnn_inc${CPATH:+:$CPATH}
  export NVTE_PYTORCH_FORCE_BUILD=TRUE NVTE_WITH_NCCL_EP=0 MAX_JOBS=${MAX_JOBS:-12} NVTE_RELEASE_BUILD=0
  python3 -m pip wheel -v --no-build-isolation --no-deps --no-index -w /tmp/te_wheels $src/transformer_engine_torch-$TE_VERSION \
    && echo "TE torch extension built in $(( $(date +%s) - t0 )) s" || echo "TE torch extension build FAILED" ;;
install)
  for i in $(seq 1 60); do grep -q "built in\|FAILED" /tmp/te_build.log 2>/dev/null && break; sleep 5; done
  tail -n 2 /tmp/te_build.log
  core=$(parts_join $IN core /tmp) || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/te_site \
    "$core" $IN/transformer_engine-$TE_VERSION-py3-none-any.whl $IN/nvdlfw_inspect-*.whl /tmp/te_wheels/*.whl || exit 1
  PYTHONPATH=/tmp/te_site:/tmp/site:$PWD python3 - <<'PY'
import importlib.metadata as md
import transformer_engine.pytorch as te
from megatron.core.extensions import transformer_engine as mte  # noqa: F401
import modelopt.torch.prune as mtp
print({p: md.version(p) for p in ("transformer_engine", "transformer_engine_cu13", "transformer_engine_torch")},
      "mcore_minitron registered:", hasattr(mtp, "mcore_minitron"))
PY
  ;;
*) echo "usage: $0 pack|start|take K|build|install" >&2; exit 2 ;;
esac
