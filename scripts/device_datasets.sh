#!/usr/bin/env bash
# Bring Hugging Face `datasets` to the GPU machine, which has no network and takes at most 64 MiB per device call
# (the working tree is 18 MiB of it): ModelOpt's megatron_mmlu imports it and reads the MMLU folder with it.
# datasets 4.8.5, not 5.x: 5.x needs huggingface-hub >= 1.31 beside transformers' own pin; 4.8.5 takes hub < 2.
# The pack holds datasets and the wheels it needs that such a machine may lack or hold too old (pyarrow alone is
# 52 MiB), as one tar in parts of at most 40 MiB; there only the wheels whose distribution is missing, or outside
# datasets' requirement, are installed into /tmp/ds_site, so nothing the machine has is shadowed needlessly.
#
# Here (CPU machine, repo root):  bash scripts/device_datasets.sh pack      -> .ds1/ .ds2/ (git-ignored)
# There, one device call each, with the machine kept warm between them:
#   bash scripts/device_datasets.sh take K     carry [.dsK]: part K kept under /tmp/ds_in
#   bash scripts/device_datasets.sh install    parts joined, sha256 checked, the missing wheels installed into
#                                              /tmp/ds_site, `import datasets` and megatron_mmlu's import checked
# Afterwards PYTHONPATH=/tmp/site:$PWD:/tmp/ds_site (the `ds` prefix of benchmarks/gpu_session6.sh).
# DS_IN, DS_SITE and PYTHON change /tmp/ds_in, /tmp/ds_site and python3 (the round trip is tried on the CPU so).
set -uo pipefail
source "$(dirname "$0")/device_parts.sh"
IN=${DS_IN:-/tmp/ds_in}
SITE=${DS_SITE:-/tmp/ds_site}
PY=${PYTHON:-python3}
WHEELS=("datasets==4.8.5" "dill==0.4.1" "multiprocess==0.70.19" "xxhash==4.1.0" "fsspec==2026.2.0"
        "pyarrow==26.0.1" "pandas==3.1.1" "python-dateutil==2.9.0.post0" "tzdata==2026.6")
cmd=${1:-}

case $cmd in
pack)
  dl=${DS_DOWNLOAD:-/tmp/ds_dl}
  rm -rf "$dl" && mkdir -p "$dl"
  py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dl" "${WHEELS[@]}" || exit 1
  tar cf /tmp/datasets-pack.tar -C "$dl" . || exit 1   # wheels are zip files already: no compression
  rm -rf .ds[0-9]*
  parts_split /tmp/datasets-pack.tar .ds pack 40 40 ;;
take)
  parts_take .ds "${2:?take K}" "$IN" || exit 1 ;;
install)
  pack=$(parts_join "$IN" pack /tmp) || exit 1
  wheels=/tmp/ds_wheels && rm -rf $wheels "$SITE" && mkdir -p $wheels && tar xf "$pack" -C $wheels || exit 1
  # what this machine's Python sees, as the GPU parts run it (ModelOpt's wheels in /tmp/site, the repo)
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  need=$($PY - "$wheels" <<'PY'
import importlib.metadata as md, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

wheels = sorted(Path(sys.argv[1]).glob("*.whl"))
ds = next(w for w in wheels if parse_wheel_filename(w.name)[0] == "datasets")
with zipfile.ZipFile(ds) as z:
    meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
reqs = [Requirement(line.split(":", 1)[1]) for line in meta.splitlines() if line.startswith("Requires-Dist:")]
wanted = {canonicalize_name(r.name): r for r in reqs if not r.marker or r.marker.evaluate({"extra": ""})}

def have(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None

keep_all = have("datasets") is not None  # the machine's own datasets, with the needs it was installed with
for w in wheels:
    name, version = parse_wheel_filename(w.name)[:2]
    there, req = have(name), wanted.get(name)
    install = not keep_all and (there is None or (req is not None and not req.specifier.contains(there, prereleases=True)))
    why = ("missing" if there is None else f"{there} outside {req.specifier}" if install else f"{there} kept")
    print(f"{name:16} {str(version):14} {'install' if install else 'skip':8} {why}", file=sys.stderr)
    if install:
        print(w)
PY
) || exit 1
  if [ -n "$need" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" $need || exit 1
  else
    mkdir -p "$SITE"
  fi
  PYTHONPATH=$PYTHONPATH:$SITE $PY - <<'PY'
import importlib.metadata as md
import importlib.util

import datasets

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None

print({n: version(n) for n in ("datasets", "pyarrow", "pandas", "fsspec", "dill", "multiprocess", "xxhash",
                                "huggingface-hub", "transformers", "numpy")}, "from", datasets.__file__)
if importlib.util.find_spec("modelopt") is not None:
    from modelopt.torch.utils.plugins.megatron_mmlu import megatron_mmlu  # noqa: F401
    print("modelopt megatron_mmlu imports")
PY
  ;;
*) echo "usage: $0 pack|take K|install" >&2; exit 2 ;;
esac
