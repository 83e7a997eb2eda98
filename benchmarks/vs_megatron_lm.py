"""Megatron-LM's own post-training scripts next to one recipe: same model, same GPU, same calibration text.

Their flow is what a Megatron-LM user runs today: ``quantize.sh`` (HF import, calibration, a Megatron
distributed checkpoint) then ``export.sh`` (that checkpoint -> unified HF checkpoint), from
``examples/post_training/modelopt`` at commit d98e8a6, each a ``torchrun`` process, configured through their
environment variables (``HF_MODEL_CKPT``, ``MLM_MODEL_SAVE``, ``MLM_MODEL_CKPT``, ``EXPORT_DIR``,
``MLM_EXTRA_ARGS``; ``MLM_SKIP_INSTALL=1`` because the machine has no network and the packages are
installed; ``--no-gradient-accumulation-fusion`` because APEX is not there). Their Python runs against Megatron-LM's own ``megatron`` package (core, training,
post_training) from that commit, first on ``PYTHONPATH``; the files come from a git mirror through
``benchmarks/vs_megatron_lm_fetch.sh`` into the git-ignored ``.mlm/`` folder, never into the package.

Ours is one process, ``python -m modelopt_typed_recipes run RECIPE.yaml``, with the same two stages
(quantize, export) and the same calibration windows. The calibration text is the built-in
``reference-train`` corpus: our recipe cuts ``--windows`` windows of ``--seq`` tokens from it; their
``--calib-dataset-path-or-name`` gets the same windows decoded to text, one ``.jsonl`` line each, with
``--calib-size``/``--calib-max-sequence-length``/``--calib-batch-size`` equal to ours (the JSON records how
many lines their tokenizer call turns back into exactly our token ids). Their ``quantize.sh`` runs with
``--skip-generate`` (its default sanity generation of two prompts is not part of our recipe).

Models: ``reference-llama`` (the HF folder shipped with the package; its Megatron-LM conf file is written
at run time from ``mtrecipes flags reference-llama`` into ``conf/mtrecipes/``) and a Qwen3-0.6B-shaped
model with random bf16 weights (transformers' initialisation, seed 0) saved as an HF checkpoint with the
package's reference tokenizer (4,096 ids inside Qwen3's 151,936-entry embedding); for it their own
``conf/Qwen/Qwen3-0.6B.sh`` runs, with ``--padded-vocab-size 151936`` (their conf derives the vocabulary
from Qwen's tokenizer, which is not on this machine) and ``--norm-epsilon 1e-6`` (the model's
``config.json``; their conf leaves Megatron's 1e-5) in ``MLM_EXTRA_ARGS``.

Per repetition (the order alternates: ours first on even repetitions) and step: wall (each process timed
from outside), peak GPU memory (``nvidia-smi`` sampled every 50 ms, above the idle level, and the
process's own ``torch.cuda.max_memory_allocated`` from an exit hook), and after each pair the exported
tensors compared (bitwise; where they differ, the largest relative difference of scales and of the
dequantized weights). Held-out perplexity of both exports (decoded by ``runtime.hf.export.load_export``,
the package's export check) once per case. Medians of the repetitions. Writes ``vs_megatron_lm.json`` (saved
after every repetition) and a log of everything the processes printed into ``--out`` (default ``$OUT/vsmlm``).

``--streams`` runs each ``CASE:FORMAT`` of ``--cases`` at the same time in a process of its own on its own GPU
of one host (``CUDA_VISIBLE_DEVICES``; its own work folder, output folder and log; our process's
``MASTER_PORT`` and their torchrun's ``PET_MASTER_PORT`` apart from the other stream's; ``nvidia-smi`` sampling
its own GPU), then merges the streams' JSONs into one result and ``tables.md`` (``--collect`` does the merge for
files named on the command line). Within a stream the pairs still alternate their order, so both sides of a case
run under the same conditions (the other stream's load on the host's CPUs and disk included).

    bash benchmarks/vs_megatron_lm_fetch.sh MIRROR.git          # once, where a mirror exists
    python3 benchmarks/vs_megatron_lm.py --reps 3               # on the GPU machine (TE installed)
    python3 benchmarks/vs_megatron_lm.py --streams --gpus 0,1 --cases reference-llama:fp8,reference-llama:nvfp4
    python3 benchmarks/vs_megatron_lm.py --collect A.json B.json --out DIR   # tables of finished runs
    python3 benchmarks/vs_megatron_lm.py --smoke --budget-s 110 # no TE: Qwen3 checkpoint, reference-llama
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MLM_COMMIT = "d98e8a6"
EXAMPLES = Path("examples/post_training/modelopt")
FORMATS = {"fp8": "FP8_DEFAULT_CFG", "nvfp4": "NVFP4_DEFAULT_CFG"}
CASES: dict[str, dict[str, Any]] = {
    # conf: Megatron-LM conf name (None: written from `mtrecipes flags`); extra: model flags their run adds
    "reference-llama": {"conf": None, "extra": []},
    "qwen3-0.6b": {"conf": "Qwen/Qwen3-0.6B", "extra": ["--padded-vocab-size", "151936", "--norm-epsilon", "1e-6"]},
}
CONF_DIR = "mtrecipes"  # conf/<CONF_DIR>/<name>.sh: files this benchmark writes
ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


# --------------------------------------------------------------------------- Megatron-LM files

def mlm_root(path: str | Path) -> Path:
    """The ``.mlm`` folder; SystemExit naming the fetch script when it is missing or from another commit."""
    root = Path(path).resolve()
    commit = root / "COMMIT"
    if not commit.is_file() or not commit.read_text().startswith(MLM_COMMIT):
        raise SystemExit(f"{root}: no Megatron-LM {MLM_COMMIT} files; run benchmarks/vs_megatron_lm_fetch.sh MIRROR")
    return root


def conf_text(name: str, flags: list[str], hf_dir: str) -> str:
    """A Megatron-LM conf file (``conf/<org>/<model>.sh``) for ``name``: their layout (``HF_MODEL_CKPT``
    default, ``TOKENIZER_MODEL`` from it, ``MODEL_ARGS``) with our flags, plus the two run-control flags every
    one of their conf files carries (``mtrecipes flags`` prints only what describes the model)."""
    pairs: list[str] = []
    i = 0
    while i < len(flags):
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            pairs.append(f"{flags[i]} {shlex.quote(flags[i + 1])}")
            i += 2
        else:
            pairs.append(flags[i])
            i += 1
    body = "".join(f"    {p} \\\n" for p in ["--save-interval 100000", "--micro-batch-size 1", *pairs])
    return (f"#!/bin/bash\n# {name}: written by benchmarks/vs_megatron_lm.py from `mtrecipes flags {name}`\n\n"
            f"if [ -z ${{HF_MODEL_CKPT}} ]; then\n    HF_MODEL_CKPT={shlex.quote(hf_dir)}\n"
            f"    TOKENIZER_MODEL={shlex.quote(hf_dir)}\nelse\n    TOKENIZER_MODEL=${{HF_MODEL_CKPT}}\nfi\n\n"
            f'MODEL_ARGS=" \\\n{body}"\n')


def our_flags(name: str) -> list[str]:
    """``mtrecipes flags NAME --json``, through the CLI as a user would call it."""
    out = subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", "flags", name, "--json"], check=True,
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": _pythonpath()})
    return json.loads(out.stdout)


def write_conf(mlm: Path, name: str, hf_dir: str) -> str:
    """Write ``conf/mtrecipes/<name>.sh`` into the Megatron-LM files; returns the conf name for the scripts."""
    folder = mlm / EXAMPLES / "conf" / CONF_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target, text = folder / f"{name}.sh", conf_text(name, our_flags(name), hf_dir)
    if not target.is_file() or target.read_text() != text:  # another stream may be sourcing it right now
        tmp = folder / f".{name}.sh.{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(target)
    return f"{CONF_DIR}/{name}"


def source_conf(mlm: Path, conf: str, hf_dir: str | None = None) -> list[str]:
    """``MODEL_ARGS`` as bash splits it after sourcing a conf file (with ``HF_MODEL_CKPT`` set, as the runs do)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_MODEL_CKPT"}
    if hf_dir:
        env["HF_MODEL_CKPT"] = hf_dir
    script = f'source {shlex.quote(str(mlm / EXAMPLES / "conf" / conf))}.sh; printf "%s\\0" ${{MODEL_ARGS}}'
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True, env=env)
    return [a for a in out.stdout.split("\0") if a]


# --------------------------------------------------------------------------- calibration text

def calibration_jsonl(windows: Any, tokenizer: Any, path: Path) -> dict[str, int]:
    """Our calibration windows as text, one ``{"text": ...}`` line per window, for their
    ``--calib-dataset-path-or-name``; and how many lines their tokenizer call (ModelOpt's calibration loader:
    ``tokenizer(texts, padding=True, truncation=True, max_length=seq)``) gives back as exactly our ids."""
    rows = windows.tolist()
    seq = len(rows[0])
    texts = [tokenizer.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False) for r in rows]
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    back = tokenizer(texts, truncation=True, max_length=seq)["input_ids"]
    exact = sum(1 for a, b in zip(back, rows) if a == b)
    return {"lines": len(rows), "seq_length": seq, "lines_equal_to_our_ids": exact,
            "tokens_equal": sum(sum(1 for x, y in zip(a, b) if x == y) for a, b in zip(back, rows)),
            "tokens": len(rows) * seq}


# --------------------------------------------------------------------------- the two flows

def their_extra_args(case: str, *, windows: int, seq: int, batch: int, calib: Path, local_attention: bool,
                     generate: bool) -> tuple[str, str]:
    """``MLM_EXTRA_ARGS`` of their quantize.sh and export.sh runs (export.py takes no calibration flags)."""
    # without TE: local attention, torch norms (no persistent-LN kernel), no fused RoPE
    smoke = ["--export-force-local-attention", "--no-persist-layer-norm", "--no-rope-fusion"]
    # no APEX on the machine: Megatron-LM's own prune.sh passes this flag too
    model = list(CASES[case]["extra"]) + ["--no-gradient-accumulation-fusion"] + (smoke if local_attention else [])
    quant = [*model, "--calib-dataset-path-or-name", str(calib), "--calib-size", str(windows),
             "--calib-max-sequence-length", str(seq), "--calib-batch-size", str(batch)]
    if not generate:
        quant.append("--skip-generate")
    return " ".join(quant), " ".join(model)


def their_env(mlm: Path, hf_dir: str, work: Path, extra: str, *, torch_norm: bool = False, port: int | None = None,
              **paths: str) -> dict[str, str]:
    """The environment of one of their scripts: Megatron-LM's ``megatron`` first on the path (its core, not
    the wheel's, under their scripts), no pip at launch, one GPU. ``port``: their torchrun's rendezvous port
    (``PET_MASTER_PORT``, which torchrun reads for ``--master-port``; their scripts pass none, so two runs at once
    on one host would both take 29500)."""
    env = {**os.environ, **ENV, "HF_MODEL_CKPT": hf_dir, "MLM_WORK_DIR": str(work / "mlm_workspace"),
           "MLM_SKIP_INSTALL": "1", "MLM_EXTRA_ARGS": extra, "TP": "1", "NO_VCS_VERSION": "1",
           "PYTHONPATH": ":".join([str(mlm), *THEIR_EXTRA_PATH, _pythonpath()]), **paths}
    if torch_norm:
        env["VSMLM_TORCH_NORM"] = "1"
    if port is not None:
        env["PET_MASTER_PORT"] = str(port)
    if shutil.which("torchrun", path=env.get("PATH")) is None:  # their default launcher, from this Python
        env["LAUNCH_SCRIPT"] = f"{sys.executable} -m torch.distributed.run --nproc_per_node=1"
    return env


ELAPSED: list[float] = []
"""Every repetition's elapsed seconds so far (a new case's first guess)."""

AS_SHIPPED_FAILED: list[str] = []
"""The case where their flow as shipped failed under TE (later cases then run the patched variant at once)."""

THEIR_EXTRA_PATH: list[str] = []
"""Folders their processes also need on ``PYTHONPATH`` (pybind11 for the helper build, when installed here)."""


def prepare_megatron_lm(mlm: Path, work: Path) -> dict[str, Any]:
    """Once, untimed: the C++ dataset helper that Megatron-LM's ``initialize_megatron()`` builds with ``make`` at
    every launch (up to date afterwards, as in a user's checkout after the first run), with pybind11 from
    ``.mlm/wheels`` when this Python has none. Should the build still fail (no compiler or Python headers), an
    empty stand-in lets their make step pass: quantize.py and export.py never load the helper (it indexes
    training data); the result says which happened."""
    env = {**os.environ, "PYTHONPATH": ":".join([*THEIR_EXTRA_PATH, _pythonpath()])}
    info: dict[str, Any] = {}
    probe = subprocess.run(["python3", "-c", "import pybind11; print(pybind11.__version__)"], env=env,
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        wheels = sorted((mlm / "wheels").glob("pybind11-*.whl"))
        target = work / "pybind11"
        if wheels:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                            str(target), str(wheels[-1])], check=False, capture_output=True)
            THEIR_EXTRA_PATH.append(str(target))
            env["PYTHONPATH"] = ":".join([*THEIR_EXTRA_PATH, _pythonpath()])
        info["pybind11"] = f"installed from {wheels[-1].name}" if wheels else "missing"
    else:
        info["pybind11"] = probe.stdout.strip()
    # byte-compiled once, as pip does for installed packages and a checkout's first run does for its files
    import importlib.util

    roots = [mlm]
    for pkg in ("modelopt", "megatron"):
        spec = importlib.util.find_spec(pkg)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            if os.access(loc, os.W_OK) and ".mlm" not in loc:
                roots.append(Path(loc))
    t = time.perf_counter()
    subprocess.run(["python3", "-m", "compileall", "-q", "-j", "0", *map(str, roots)], env=env,
                   capture_output=True, check=False)
    info["byte_compile_s"] = round(time.perf_counter() - t, 2)
    info["byte_compiled"] = [str(r) for r in roots]
    folder = mlm / "megatron" / "core" / "datasets"
    t = time.perf_counter()
    make = subprocess.run(["make", "-C", str(folder)], env=env, capture_output=True, text=True, check=False)
    info["helper_build_s"] = round(time.perf_counter() - t, 2)
    info["helper_build_rc"] = make.returncode
    if make.returncode != 0:
        info["helper_build_error"] = (make.stdout + make.stderr)[-1500:]
        cfg = subprocess.run(["python3-config", "--extension-suffix"], capture_output=True, text=True, check=False) \
            if shutil.which("python3-config") else None
        stub = folder / f"helpers_cpp{cfg.stdout.strip() if cfg and cfg.returncode == 0 else ''}"
        stub.touch()
        info["helper_stand_in"] = str(stub.name)
    return info


def their_commands(mlm: Path, conf: str, fmt: str) -> dict[str, list[str]]:
    ex = mlm / EXAMPLES
    return {"quantize": ["bash", str(ex / "quantize.sh"), conf, FORMATS[fmt]],
            "export": ["bash", str(ex / "export.sh"), conf]}


RECORDER = '''#!/usr/bin/env python3
"""Stands in for torchrun (their LAUNCH_SCRIPT): writes the command line a script would launch."""
import json, os, sys
with open(os.environ["VSMLM_ARGV_FILE"], "w") as f:
    json.dump(sys.argv[1:], f)
'''


def recorded_argv(cmd: list[str], env: dict[str, str], folder: Path) -> list[str]:
    """The ``entry.py ARGS...`` one of their scripts launches, recorded through their ``LAUNCH_SCRIPT``
    variable instead of torchrun (nothing runs)."""
    rec = folder / "record_argv.py"
    rec.write_text(RECORDER)
    rec.chmod(0o755)
    target = folder / "argv.json"
    target.unlink(missing_ok=True)
    subprocess.run(cmd, env={**env, "LAUNCH_SCRIPT": str(rec), "VSMLM_ARGV_FILE": str(target)}, check=True,
                   capture_output=True, text=True)
    return json.loads(target.read_text())


PARSE = '''
import json, os, sys
sys.dont_write_bytecode = True
entry = sys.argv[1]
sys.path.insert(0, os.path.dirname(entry))
import importlib
mod = importlib.import_module(os.path.basename(entry)[:-3])
from megatron.training.arguments import parse_and_validate_args
provider = mod.add_text_generate_ptq_args if hasattr(mod, "add_text_generate_ptq_args") else mod.add_modelopt_export_args
sys.argv = [entry, *sys.argv[2:]]
args = parse_and_validate_args(extra_args_provider=provider, args_defaults={
    "tokenizer_type": "HuggingFaceTokenizer", "no_load_rng": True, "no_load_optim": True})
import megatron.core
print("VSMLM_ARGS " + json.dumps({k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
                                  | {"megatron_core_file": megatron.core.__file__}))
'''


def parse_their_args(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Megatron-LM's own argument parsing and validation (``parse_and_validate_args`` with the entry point's
    extra flags and defaults, which also builds the tokenizer) of a recorded command line, on the CPU."""
    env = {**env, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", PARSE, *argv], env=env, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("VSMLM_ARGS "):
            return json.loads(line[len("VSMLM_ARGS "):])
    raise RuntimeError(f"their parser refused the command line (rc {out.returncode}):\n{out.stderr[-3000:]}")


def our_recipe(case: str, fmt: str, hf_dir: str, *, windows: int, seq: int, batch: int, out: Path) -> dict[str, Any]:
    """The recipe of our run: the same two stages and calibration windows, Megatron-Core backend, one GPU."""
    return {"name": f"vsmlm-{case}-{fmt}", "model": case, "source": {"type": "hf", "path": hf_dir},
            "stages": [{"technique": "quantize", "format": fmt}, {"technique": "export", "format": "hf"}],
            "calibration": {"dataset": "reference-train", "num_samples": windows, "seq_length": seq,
                            "batch_size": batch},
            "output_dir": str(out), "backend": "megatron", "device": "cuda"}


def _pythonpath() -> str:
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(":") if p and ".mlm" not in p]
    return ":".join(dict.fromkeys([*parts, str(ROOT)]))


# --------------------------------------------------------------------------- measuring a process

PEAK_HOOK = '''"""Written by benchmarks/vs_megatron_lm.py: at exit, the process's peak CUDA allocation (if it used CUDA)."""
import atexit, json, os, sys


def _vsmlm_peak():
    torch = sys.modules.get("torch")
    folder = os.environ.get("VSMLM_PEAK_DIR")
    if torch is None or folder is None or not torch.cuda.is_initialized():
        return
    try:
        with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
            json.dump({"argv": sys.argv[:2], "max_allocated": torch.cuda.max_memory_allocated(),
                       "max_reserved": torch.cuda.max_memory_reserved()}, f)
    except OSError:  # the run was stopped and its folder removed: nothing to report
        pass


atexit.register(_vsmlm_peak)

if os.environ.get("VSMLM_TORCH_NORM") == "1":
    # Smoke runs without Transformer Engine only: ModelOpt's layer spec takes its norms from TE; here they are
    # Megatron-Core's torch norms, so the rest of the scripts' flow can be exercised. Never in a measured run.
    import importlib.abc
    import importlib.util

    _SPECS = "megatron.core.post_training.modelopt.gpt.model_specs"

    class _TorchNorm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != _SPECS:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                from megatron.core.transformer.torch_norm import WrappedTorchNorm

                module.Norm = WrappedTorchNorm
                print("vsmlm smoke: ModelOpt spec norms are torch norms (no Transformer Engine)", flush=True)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _TorchNorm())
'''


def visible_gpu(env: dict[str, str] | None = None) -> str:
    """The GPU this process uses as ``nvidia-smi -i`` names it: the first of ``CUDA_VISIBLE_DEVICES`` (an index or
    a UUID; nvidia-smi ignores that variable and counts all GPUs), else 0."""
    first = (env if env is not None else os.environ).get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return first or "0"


class GpuSampler:
    """``nvidia-smi`` memory.used of one GPU (this process's: :func:`visible_gpu`) every 50 ms in the background;
    ``peak()`` between two times. A stream running beside another on the same host sees only its own GPU."""

    def __init__(self, gpu: str | None = None) -> None:
        self.gpu = gpu if gpu is not None else visible_gpu()
        self.samples: list[tuple[float, int]] = []
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuSampler:  # noqa: PYI034
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "-i", self.gpu, "--query-gpu=memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "50"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), int(line.strip()) * 2**20))
            except ValueError:
                pass

    def peak(self, start: float, end: float) -> int | None:
        inside = [m for t, m in self.samples if start <= t <= end]
        return max(inside) if inside else None

    def idle(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


MARK = "VSMLM_TREE"
"""Environment variable set to a fresh token for every process :func:`timed` starts: its descendants inherit it,
so :func:`kill_tree` finds them even after they left the process tree (reparented when their parent died)."""


def _marked(token: str) -> list[Any]:
    import psutil

    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid != os.getpid() and p.environ().get(MARK) == token:
                found.append(p)
    return found


def kill_tree(proc: subprocess.Popen[Any], token: str | None = None) -> list[int]:
    """SIGKILL a process, every descendant (those in sessions of their own: torchrun's worker) and every process
    carrying ``token`` in :data:`MARK`, then wait until all are gone (10 s at most; a SIGKILLed process cannot
    refuse), so that nothing of a stopped run goes on writing or reading its files once this returns: the
    final call's NVFP4 try had a worker outlive its torchrun and find its checkpoint removed. Deletes nothing.
    Returns the pids killed."""
    import psutil

    family: dict[int, Any] = {}
    for _ in range(3):  # a process may start a child while we look: look again until nothing new appears
        found = []
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(proc.pid)
            found += [root, *root.children(recursive=True)]
        if token:
            found += _marked(token)
        new = {p.pid: p for p in found if p.pid not in family}
        if not new:
            break
        family.update(new)
        for p in new.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    psutil.wait_procs(list(family.values()), timeout=10)
    return sorted(family)


def timed(cmd: list[str], env: dict[str, str], *, log: Path, label: str, sampler: GpuSampler, peak_dir: Path,
          timeout: float) -> dict[str, Any]:
    """Run one process; its wall, return code, GPU peak above idle (nvidia-smi) and torch peaks (exit hook)."""
    shutil.rmtree(peak_dir, ignore_errors=True)
    peak_dir.mkdir(parents=True)
    token = uuid.uuid4().hex
    env = {**env, "VSMLM_PEAK_DIR": str(peak_dir), MARK: token,
           "PYTHONPATH": f"{peak_dir.parent / 'hook'}:{env.get('PYTHONPATH', '')}"}
    idle = sampler.idle()
    with open(log, "a") as f:
        f.write(f"\n----- {label}: {' '.join(shlex.quote(c) for c in cmd)}\n")
        f.flush()
        begin = f.tell()
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        left_running: list[int] = []
        try:
            rc = proc.wait(timeout=timeout)
            end = time.perf_counter()
            if _marked(token):  # something it started outlived it: stopped before the next process runs
                left_running = kill_tree(proc, token)
        except subprocess.TimeoutExpired:  # bash, torchrun and its worker (torchrun starts it in its own session)
            kill_tree(proc, token)
            rc, end = 124, time.perf_counter()
    time.sleep(0.1)
    smi = sampler.peak(t, end)
    hooks = []
    for p in peak_dir.glob("*.json"):
        with contextlib.suppress(ValueError, OSError):  # a file cut short by a kill counts as none
            hooks.append(json.loads(p.read_text()))
    tail = None
    if rc != 0:  # what the process printed last (its traceback), without the warnings; under torchrun the
        # worker's own traceback ([rank0]: lines) first, as torchrun's closing summary does not name the cause
        with open(log, errors="replace") as f:
            f.seek(begin)
            lines = [ln.rstrip()[:300] for ln in f.read().splitlines() if "warn" not in ln.lower()]
        worker = [ln for ln in lines if ln.startswith("[rank0]:") and "ProcessGroupNCCL" not in ln][-15:]
        tail = worker + lines[-(25 - len(worker)):]
    return {"wall_s": round(end - t, 2), "rc": rc, **({"failure_tail": tail} if tail else {}),
            **({"left_running_killed": left_running} if left_running else {}),
            "gpu_used_peak_bytes": smi - idle if smi is not None and idle is not None else None,
            "torch_max_allocated_bytes": max((h["max_allocated"] for h in hooks), default=None),
            "torch_max_reserved_bytes": max((h["max_reserved"] for h in hooks), default=None)}


# --------------------------------------------------------------------------- comparing the exports

SCALE_SUFFIXES = ("weight_scale_2", "weight_scale", "input_scale", "pre_quant_scale", "k_scale", "v_scale")


def _kind(key: str) -> str:
    for suf in SCALE_SUFFIXES:
        if key.endswith("." + suf):
            return suf
    return "weight" if key.endswith(".weight") else "other"


def _rel(a: Any, b: Any) -> float:
    """Largest element-wise relative difference |a-b| / max(|b|, tiny), in float64."""
    import torch

    a, b = a.double(), b.double()
    return float(((a - b).abs() / b.abs().clamp_min(torch.finfo(torch.float32).tiny)).max())


def compare_exports(ours: Path, theirs: Path) -> dict[str, Any]:
    """Tensor by tensor: bitwise equal (dtype, shape, bytes); where not, the largest relative difference per
    kind (scales element-wise; weights after dequantization, relative to the layer's largest weight); and
    whether ``config.json`` and ``hf_quant_config.json`` agree (file locations and producer left out)."""
    import torch
    from safetensors.torch import load_file

    from modelopt_typed_recipes.runtime.hf.export import decode_weight

    def tensors(folder: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    a, b = tensors(ours), tensors(theirs)
    keys = sorted(set(a) & set(b))
    equal = [k for k in keys if a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
             and torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8))]
    differing = sorted(set(keys) - set(equal))
    worst: dict[str, dict[str, Any]] = {}

    def note(kind: str, key: str, value: float) -> None:
        if kind not in worst or value > worst[kind]["max_rel_diff"]:
            worst[kind] = {"max_rel_diff": value, "at": key}

    for k in differing:
        kind = _kind(k)
        if a[k].shape != b[k].shape:
            note(kind, k, float("inf"))
        elif kind == "weight":
            prefix = k[: -len(".weight")]
            ea = {s: a[f"{prefix}.{s}"] for s in SCALE_SUFFIXES if f"{prefix}.{s}" in a}
            eb = {s: b[f"{prefix}.{s}"] for s in SCALE_SUFFIXES if f"{prefix}.{s}" in b}
            wa = decode_weight({"weight": a[k], **ea})[0] if "weight_scale" in ea else a[k].float()
            wb = decode_weight({"weight": b[k], **eb})[0] if "weight_scale" in eb else b[k].float()
            note("weight (dequantized, relative to the layer's largest)", k,
                 float((wa.double() - wb.double()).abs().max() / wb.double().abs().max().clamp_min(1e-30)))
        else:
            note(kind, k, _rel(a[k], b[k]))
    counts: dict[str, list[int]] = {}
    for k in keys:
        c = counts.setdefault(_kind(k), [0, 0])
        c[0] += 1
        c[1] += k in set(equal)

    def meta(folder: Path, name: str) -> Any:
        p = folder / name
        if not p.is_file():
            return None
        d = json.loads(p.read_text())
        if isinstance(d, dict):
            d.pop("_name_or_path", None)
            d.pop("producer", None)
        return d

    jsons = {n: meta(ours, n) == meta(theirs, n) for n in ("config.json", "hf_quant_config.json")}
    return {"tensors": len(keys), "bitwise_equal_tensors": len(equal), "only_ours": sorted(set(a) - set(b))[:10],
            "only_theirs": sorted(set(b) - set(a))[:10], "by_kind": {k: {"tensors": v[0], "bitwise_equal": v[1]}
                                                                      for k, v in sorted(counts.items())},
            "differing": worst, "json_equal": jsons,
            "bitwise_equal": not differing and set(a) == set(b) and all(jsons.values())}


def scale_rounding(hf_dir: str) -> dict[str, int]:
    """How many of an HF model's linear layers export different bytes when their scales are computed as this
    package computes them (on the GPU) and as Megatron-LM's ``export.sh`` does (on the CPU: ``export.py``
    materialises the model there), from the same weights and with ModelOpt's own formulas, run here on the CPU.

    ModelOpt derives the weight scales from the weight quantizer's amax as ``amax / 448`` (FP8) and
    ``amax / (6 * 448)`` (NVFP4's per-tensor scale), a tensor divided by a Python number. On the CPU PyTorch
    divides; on CUDA it multiplies by the divisor's float32 reciprocal (``div_true_kernel_cuda``: "may lose one
    bit of precision"), so some scales differ by one float32 step. FP8 weights are unaffected; NVFP4's per-block
    scales (rounded to FP8 E4M3) and 4-bit codes (E2M1) are coarse grids whose rounding a one-step change moves
    where a value sits on a boundary. Amax is taken over the weights Megatron-Core fuses (q/k/v, gate/up), as
    the export sees them. Returns counts of differing tensors per kind and the number of linear weights."""
    import re

    import torch
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
    from safetensors.torch import load_file

    sd: dict[str, Any] = {}
    for f in sorted(Path(hf_dir).glob("*.safetensors")):
        sd.update({k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()})
    linear = sorted(k for k in sd if re.search(r"\.(q|k|v|o|gate|up|down)_proj\.weight$", k))

    def fused_amax(key: str) -> Any:
        for names in (("q", "k", "v"), ("gate", "up")):
            m = re.search(rf"\.({'|'.join(names)})_proj\.", key)
            if m:
                keys = [key.replace(f".{m.group(1)}_proj.", f".{n}_proj.") for n in names]
                return torch.stack([sd[k].abs().amax().float() for k in keys]).amax()
        return sd[key].abs().amax().float()

    def cuda_div(a: Any, d: float) -> Any:  # what CUDA computes for ``tensor / python_number``
        return a * (torch.tensor(1.0) / torch.tensor(d, dtype=torch.float32))

    n = {"linear_weights": len(linear), "fp8_weight_scale": 0, "nvfp4_weight_scale_2": 0, "nvfp4_weight_scale": 0,
         "nvfp4_weight": 0}
    for key in linear:
        amax, w = fused_amax(key), sd[key]
        n["fp8_weight_scale"] += int(not torch.equal(amax / 448.0, cuda_div(amax, 448.0)))
        s2_cpu, s2_cuda = amax / 2688.0, cuda_div(amax, 2688.0)
        n["nvfp4_weight_scale_2"] += int(not torch.equal(s2_cpu, s2_cuda))
        (b_cpu, _), (b_cuda, _) = (NVFP4QTensor.get_weights_scaling_factor(w, 16, s) for s in (s2_cpu, s2_cuda))
        n["nvfp4_weight_scale"] += int(not torch.equal(b_cpu.view(torch.uint8), b_cuda.view(torch.uint8)))
        q_cpu, q_cuda = (NVFP4QTensor.quantize(w.clone(), 16, b, s)[0]._quantized_data
                         for b, s in ((b_cpu, s2_cpu), (b_cuda, s2_cuda)))
        n["nvfp4_weight"] += int(not torch.equal(q_cpu, q_cuda))
    return n


def export_perplexity(folder: Path, tokenizer_dir: str, *, windows: int, seq: int, device: str) -> dict[str, Any]:
    """Held-out perplexity (``reference-heldout``) of an exported checkpoint, decoded by the package's export
    check (``runtime.hf.export.load_export``: weights dequantized, activations fake-quantized at their scales)."""
    import torch

    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.runtime.hf.evaluate import perplexity
    from modelopt_typed_recipes.runtime.hf.export import load_export
    from modelopt_typed_recipes.spec.recipe import TextData

    tok = data.load_tokenizer(tokenizer_dir)
    ev = data.token_windows(TextData(dataset="reference-heldout", num_samples=windows, seq_length=seq), tok,
                            path="evaluation")
    model, counts = load_export(folder, device=device)
    try:
        with torch.no_grad():
            ppl = perplexity(model, data.batches(ev, 8), device=device, progress=False)
    finally:
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"perplexity": ppl, "layers": counts, "windows": int(ev.shape[0]), "seq_length": seq}


# --------------------------------------------------------------------------- models

def reference_hf_dir() -> str:
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR

    return str(REFERENCE_DIR)


def random_hf_config(arch: Any, tok: Any) -> dict[str, Any]:
    """The HF ``config.json`` of a random checkpoint: the architecture's (``bridges.hf_config``) with the
    tokenizer's special ids."""
    from modelopt_typed_recipes.bridges.hf_config import to_hf_config

    cfg = to_hf_config(arch)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        cfg[key] = getattr(tok, key, None)
    return cfg


def make_random_hf(arch: Any, folder: Path, *, device: str) -> dict[str, Any]:
    """An HF checkpoint of the architecture (a catalog name or a ``ModelArch``) with transformers' random
    initialisation (seed 0) in bf16, made on ``device``, and the package's reference tokenizer (its ids fit the
    vocabulary)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime import data

    t = time.perf_counter()
    arch = get_arch(arch) if isinstance(arch, str) else arch
    tok = data.load_tokenizer(None)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**random_hf_config(arch, tok)),
                                                 dtype=torch.bfloat16)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    params = sum(p.numel() for p in model.parameters())
    del model
    return {"seconds": round(time.perf_counter() - t, 2), "params": params, "device": device,
            "tokenizer": "the package's reference tokenizer (4,096 ids)"}


# --------------------------------------------------------------------------- one case

def run_case(case: str, fmt: str, reps: int, a: argparse.Namespace, mlm: Path, work: Path, out: Path,
             sampler: GpuSampler, deadline: float, te: bool,
             save: Callable[[dict[str, Any]], None] = lambda row: None) -> dict[str, Any]:
    """Repetitions of one case until ``reps`` or the budget; ``save(row)`` after each (a stream stopped from
    outside keeps its finished repetitions)."""
    import torch

    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.spec.recipe import Recipe, TextData
    from modelopt_typed_recipes.spec.serde import to_yaml

    log = out / "vs_megatron_lm.log"
    cw = work / f"{case}-{fmt}"
    shutil.rmtree(cw, ignore_errors=True)
    cw.mkdir(parents=True)
    row: dict[str, Any] = {"case": case, "format": fmt, "preset": FORMATS[fmt], "windows": a.windows, "seq": a.seq,
                           "batch": a.batch, "te": te, "reps": []}
    if case == "reference-llama":
        hf_dir = reference_hf_dir()
        conf = write_conf(mlm, case, hf_dir)
        row["conf"] = f"conf/{conf}.sh (from `mtrecipes flags {case}`)"
    else:
        hf_dir = str(work / f"hf-{case}")
        if not (Path(hf_dir) / "config.json").is_file():
            row["hf_checkpoint"] = make_random_hf(case, Path(hf_dir), device="cuda")
            torch.cuda.empty_cache()
        conf = CASES[case]["conf"]
        row["conf"] = f"conf/{conf}.sh (Megatron-LM's own)"
    if AS_SHIPPED_FAILED:
        row["no_te"] = (f"their flow as shipped failed under TE in {AS_SHIPPED_FAILED[0]}; here their scripts ran with "
                        "--export-force-local-attention --no-persist-layer-norm --no-rope-fusion and torch norms in "
                        "ModelOpt's layer spec")
    elif not te:
        row["no_te"] = ("smoke only: their scripts ran with --export-force-local-attention --no-persist-layer-norm "
                        "--no-rope-fusion and torch norms in ModelOpt's layer spec (it takes them from TE)")
    row["their_model_args"] = source_conf(mlm, conf, hf_dir)
    tok = data.load_tokenizer(hf_dir)
    windows = data.token_windows(TextData(dataset="reference-train", num_samples=a.windows, seq_length=a.seq), tok)
    calib = cw / "calibration.jsonl"
    row["calibration"] = calibration_jsonl(windows, tok, calib) | {"hash": data.data_hash(windows)}
    # their flow as shipped needs TE; without it (or once it failed with TE): the smoke variant
    patched = not te or bool(AS_SHIPPED_FAILED)

    def extras() -> tuple[str, str]:
        return their_extra_args(case, windows=a.windows, seq=a.seq, batch=a.batch, calib=calib,
                                local_attention=patched, generate=a.their_generate)

    row["their_extra_args"] = dict(zip(("quantize", "export"), extras()))
    recipe = Recipe.from_dict(our_recipe(case, fmt, hf_dir, windows=a.windows, seq=a.seq, batch=a.batch,
                                         out=cw / "ours"))
    (cw / "recipe.yaml").write_text(to_yaml(recipe))
    ours_env = {**os.environ, **ENV, "PYTHONPATH": _pythonpath()}
    if a.master_port:  # our process starts a process group of one: its own port beside the other stream's
        ours_env["MASTER_PORT"] = str(a.master_port)
    ours_cmd = [sys.executable, "-m", "modelopt_typed_recipes", "run", str(cw / "recipe.yaml"), "--json",
                "--no-progress"]
    cmds = their_commands(mlm, conf, fmt)
    paths = {"MLM_MODEL_SAVE": str(cw / "theirs-quant"), "MLM_MODEL_CKPT": "", "EXPORT_DIR": str(cw / "theirs-export")}
    def theirs(rep: int) -> dict[str, Any]:
        shutil.rmtree(cw / "theirs-quant", ignore_errors=True)
        shutil.rmtree(cw / "theirs-export", ignore_errors=True)
        steps: dict[str, Any] = {}
        for step, extra in zip(("quantize", "export"), extras()):
            env = their_env(mlm, hf_dir, cw, extra, torch_norm=patched,
                            port=a.master_port + 1 if a.master_port else None, **paths)
            if step == "export":
                env["MLM_MODEL_CKPT"] = paths["MLM_MODEL_SAVE"]
            steps[step] = timed(cmds[step], env, log=log, label=f"{case} {fmt} rep{rep} theirs {step}",
                                sampler=sampler, peak_dir=work / "peaks", timeout=max(deadline - time.time(), 10))
            if steps[step]["rc"] != 0:
                break
        return steps

    for rep in range(reps):
        order = ("ours", "theirs") if rep % 2 == 0 else ("theirs", "ours")
        r: dict[str, Any] = {"rep": rep, "order": list(order)}
        rep_start = time.time()
        guess = next_rep_guess(row["reps"], a.first_guess_s)
        if deadline - time.time() < guess:
            row["stopped"] = f"rep {rep} not started: {deadline - time.time():.0f} s left, a pair takes about {guess:.0f} s"
            break
        for who in order:
            left = max(deadline - time.time(), 10)
            if who == "ours":
                shutil.rmtree(cw / "ours", ignore_errors=True)
                r["ours"] = timed(ours_cmd, ours_env, log=log, label=f"{case} {fmt} rep{rep} ours", sampler=sampler,
                                  peak_dir=work / "peaks", timeout=left)
                manifest = cw / "ours" / "manifest.json"
                if manifest.is_file():
                    man = json.loads(manifest.read_text())
                    res = man["result"]
                    r["ours"]["saved"] = man.get("saved")
                    r["ours"]["versions"] = man.get("versions")
                    r["ours"]["stages"] = {s["name"]: {"seconds": round(s["seconds"], 3),
                                                       "peak_memory_bytes": s["peak_memory_bytes"]} for s in res["stages"]}
                    r["ours"]["timings"] = {k: round(v, 3) for k, v in res["timings"].items()}
                    r["ours"]["in_process_s"] = round(res["seconds"], 3)
                    r["ours"]["calibration_hash"] = res["calibration_hash"]
                    r["ours"]["export"] = str(cw / "ours" / res["stages"][-1]["outputs"][0])
            else:
                r["theirs"] = theirs(rep)
                failed = any(v["rc"] != 0 for v in r["theirs"].values())
                if failed and not patched and rep == 0 and deadline - time.time() > 60:
                    # their flow as shipped failed under TE: record it, then once more with the smoke variant
                    row["their_failure_as_shipped"] = r["theirs"]
                    AS_SHIPPED_FAILED.append(f"{case} {fmt}")
                    patched = True
                    row["their_extra_args"] = dict(zip(("quantize", "export"), extras()))
                    row["no_te"] = ("after their flow failed as shipped (their_failure_as_shipped): their scripts ran "
                                    "with --export-force-local-attention --no-persist-layer-norm --no-rope-fusion and "
                                    "torch norms in ModelOpt's layer spec")
                    r["theirs"] = theirs(rep)
        ours_export = Path(r.get("ours", {}).get("export", cw / "missing"))
        theirs_export = cw / "theirs-export"
        if ours_export.is_dir() and (theirs_export / "config.json").is_file():
            r["compare"] = compare_exports(ours_export, theirs_export)
            r["pair_s"] = round(time.time() - rep_start, 1)  # the two flows and the comparison
            if "perplexity" not in row and a.eval_windows:
                row["perplexity"] = {
                    who: export_perplexity(folder, hf_dir, windows=a.eval_windows, seq=a.seq, device="cuda")
                    for who, folder in (("ours", ours_export), ("theirs", theirs_export))}
                row["perplexity"]["rep"] = rep
        r["elapsed_s"] = round(time.time() - rep_start, 1)  # the pair, the comparison and (first) the perplexities
        ELAPSED.append(r["elapsed_s"])
        row["reps"].append(r)
        summarize(row)
        save(row)
        with open(log, "a") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {case} {fmt} rep {rep}: {json.dumps(r, default=str)}\n")
        print(f"[{time.strftime('%H:%M:%S')}] {case} {fmt} rep {rep}: ours {r.get('ours', {}).get('wall_s')} s, "
              f"theirs {[(k, v.get('wall_s'), v.get('rc')) for k, v in r.get('theirs', {}).items()]}, "
              f"bitwise {r.get('compare', {}).get('bitwise_equal_tensors')}/{r.get('compare', {}).get('tensors')}",
              flush=True)
        bad = [v for v in (r.get("ours"), *r.get("theirs", {}).values()) if v and v["rc"] != 0]
        if bad or "theirs" not in r or "ours" not in r:
            for v in bad:
                print("\n".join(v.get("failure_tail") or []), flush=True)
            row["stopped"] = f"rep {rep} failed; no further repetitions of this case"
            break
    shutil.rmtree(cw, ignore_errors=True)
    return row


def next_rep_guess(done: list[dict[str, Any]], first_guess_s: float) -> float:
    """Seconds the next repetition is assumed to take: the slowest pair so far (two flows and the comparison;
    the perplexities run once and are not repeated) plus 5 % and 5 s; before any, the last case's or the guess."""
    pairs = [x.get("pair_s") or x["elapsed_s"] for x in done]
    return max(pairs or ELAPSED or [first_guess_s]) * 1.05 + 5


def summarize(row: dict[str, Any]) -> None:
    done = [r for r in row["reps"] if r.get("ours", {}).get("rc") == 0
            and all(s.get("rc") == 0 for s in r.get("theirs", {}).values()) and len(r.get("theirs", {})) == 2]
    row["reps_done"] = len(done)
    if not done:
        return

    def med(values: list[float | None]) -> float | None:
        v = [x for x in values if x is not None]
        return round(statistics.median(v), 3) if v else None

    theirs_total = [sum(s["wall_s"] for s in r["theirs"].values()) for r in done]
    ours_total = [r["ours"]["wall_s"] for r in done]
    stage_names = list(done[-1]["ours"].get("stages", {}))
    row["median"] = {
        "ours_wall_s": med(ours_total), "theirs_wall_s": med(theirs_total),
        "ratio": round(statistics.median(ours_total) / statistics.median(theirs_total), 4),
        "theirs_step_wall_s": {s: med([r["theirs"][s]["wall_s"] for r in done]) for s in ("quantize", "export")},
        "ours_stage_s": {s: med([r["ours"].get("stages", {}).get(s, {}).get("seconds") for r in done])
                         for s in stage_names},
        "ours_timings_s": {k: med([r["ours"].get("timings", {}).get(k) for r in done])
                           for k in done[-1]["ours"].get("timings", {})},
        "ours_in_process_s": med([r["ours"].get("in_process_s") for r in done]),
        "ours_wall_range_s": [min(ours_total), max(ours_total)],
        "theirs_wall_range_s": [round(min(theirs_total), 2), round(max(theirs_total), 2)],
    }
    row["peak"] = {
        "ours_gpu_used_bytes": max((r["ours"]["gpu_used_peak_bytes"] or 0) for r in done),
        "ours_torch_stage_peak_bytes": {s: max(r["ours"].get("stages", {}).get(s, {}).get("peak_memory_bytes") or 0
                                               for r in done) for s in stage_names},
        "theirs_gpu_used_bytes": {s: max((r["theirs"][s]["gpu_used_peak_bytes"] or 0) for r in done)
                                  for s in ("quantize", "export")},
        "theirs_torch_max_allocated_bytes": {s: max((r["theirs"][s]["torch_max_allocated_bytes"] or 0) for r in done)
                                             for s in ("quantize", "export")},
    }
    compared = [r["compare"] for r in done if "compare" in r]
    if compared:
        row["bitwise_equal"] = all(c["bitwise_equal"] for c in compared)
        row["bitwise_equal_tensors_per_rep"] = [c["bitwise_equal_tensors"] for c in compared]
        row["compare_last"] = compared[-1]


# --------------------------------------------------------------------------- main

def _mib(b: Any) -> str:
    return "-" if not b else f"{b / 2**20:,.0f}"


def _range(r: list[float] | None) -> str:
    return f"{r[0]:g}-{r[1]:g}" if r else "-"


def table(result: dict[str, Any]) -> str:
    """Markdown tables of a result JSON (``--table FILE``, ``--collect``): per case the medians of the whole
    flows and of each step with their ranges, the peaks, the exports compared and their perplexities."""
    lines: list[str] = []
    streams = result.get("streams")
    if streams:
        lines += [("Streams run at the same time on one host, one GPU each (each pair alternates its order, so both "
                   "sides of a case share the same conditions):"), ""]
        lines += [f"- {st['name']}: GPU {st['gpu']}, {st['cases']}, {st.get('started', '?')} -> "
                  f"{st.get('finished', '?')}, rc {st.get('rc')}" for st in streams]
        lines.append("")
    lines += [("| case | GPU | reps | ours total s, median (range) | theirs total s, median (range) | ratio | "
               "theirs quantize.sh + export.sh s | ours stages s (in-process total) | bitwise equal tensors | "
               "largest relative difference |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["cases"]:
        m = row.get("median")
        gpu = row.get("gpu", "0")
        if not m:
            lines.append(f"| {row['case']} {row['format']} | {gpu} | 0 | - | - | - | - | - | - | "
                         f"{row.get('stopped', 'failed')} |")
            continue
        c = row.get("compare_last", {})
        worst = "; ".join(f"{k}: {v['max_rel_diff']:.3g}" for k, v in c.get("differing", {}).items()) or "none"
        stages = ", ".join(f"{k} {v}" for k, v in m["ours_stage_s"].items())
        mark = " (their flow patched: see no_te)" if row.get("no_te") else ""
        lines.append(f"| {row['case']} {row['format']}{mark} | {gpu} | {row['reps_done']} | {m['ours_wall_s']} "
                     f"({_range(m.get('ours_wall_range_s'))}) | {m['theirs_wall_s']} "
                     f"({_range(m.get('theirs_wall_range_s'))}) | {m['ratio']} | "
                     f"{m['theirs_step_wall_s']['quantize']} + {m['theirs_step_wall_s']['export']} | "
                     f"{stages} ({m['ours_in_process_s']}) | {c.get('bitwise_equal_tensors')}/{c.get('tensors')} | "
                     f"{worst} |")
    stopped = [f"{row['case']} {row['format']}: {row['stopped']}" for row in result["cases"]
               if row.get("median") and row.get("stopped")]
    if stopped:
        lines += ["", *[f"- {x}" for x in stopped]]
    head = ("| case | ours GPU used MiB (nvidia-smi) | ours torch peak MiB per stage | theirs GPU used MiB "
            "quantize / export | theirs torch peak MiB quantize / export |")
    lines += ["", head, "|---|---|---|---|---|"]
    for row in result["cases"]:
        pk = row.get("peak")
        if not pk:
            continue
        ours_st = ", ".join(f"{k} {_mib(v)}" for k, v in pk["ours_torch_stage_peak_bytes"].items())
        tg, tt = pk["theirs_gpu_used_bytes"], pk["theirs_torch_max_allocated_bytes"]
        lines.append(f"| {row['case']} {row['format']} | {_mib(pk['ours_gpu_used_bytes'])} | {ours_st} | "
                     f"{_mib(tg['quantize'])} / {_mib(tg['export'])} | {_mib(tt['quantize'])} / {_mib(tt['export'])} |")
    lines += ["", ("| case | exported tensors: by kind, bitwise equal / compared (last repetition) | "
                   "bitwise equal per repetition | config.json, hf_quant_config.json equal |"), "|---|---|---|---|"]
    for row in result["cases"]:
        c = row.get("compare_last")
        if c:
            kinds = ", ".join(f"{k} {v['bitwise_equal']}/{v['tensors']}" for k, v in c["by_kind"].items())
            js = ", ".join(str(v) for v in c["json_equal"].values())
            lines.append(f"| {row['case']} {row['format']} | {kinds} | {row.get('bitwise_equal_tensors_per_rep')} | "
                         f"{js} |")
    lines += ["", "| case | held-out perplexity, our export | their export | layers decoded |", "|---|---|---|---|"]
    for row in result["cases"]:
        ppl = row.get("perplexity")
        if ppl:
            lines.append(f"| {row['case']} {row['format']} | {ppl['ours']['perplexity']:.4f} | "
                         f"{ppl['theirs']['perplexity']:.4f} | {ppl['ours']['layers']} / {ppl['theirs']['layers']} |")
    return "\n".join(lines)


def collect(paths: list[Path], streams: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One result from several runs' JSONs (the streams of ``--streams``, or files named on the command line):
    their cases in order, each marked with its stream and GPU, and the runs' own info kept per stream."""
    merged: dict[str, Any] = {"streams": [], "cases": []}
    for i, path in enumerate(paths):
        st = dict(streams[i]) if streams else {"name": path.parent.name, "gpu": "?", "cases": "?"}
        if not path.is_file():
            st["missing"] = str(path)
            merged["streams"].append(st)
            continue
        res = json.loads(path.read_text())
        info = res.get("info", {})
        st.update(started=info.get("started"), finished=res.get("finished", "not finished (stopped)"), info=info,
                  megatron_lm_prepare=res.get("megatron_lm_prepare"))
        if streams is None:
            st.update(gpu=info.get("visible_gpu", "?"), cases=info.get("args", {}).get("cases", "?"))
        merged["streams"].append(st)
        merged["cases"] += [{**row, "stream": st["name"], "gpu": st["gpu"]} for row in res.get("cases", [])]
    return merged


def _their_core_version(mlm: Path) -> str:
    """``megatron.core``'s version in the Megatron-LM files (their scripts import it, not the wheel's)."""
    import re

    text = (mlm / "megatron" / "core" / "package_info.py").read_text()
    parts = [re.search(rf"^{k} = (\d+)", text, re.MULTILINE) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts if m) or "unknown"


def _version(module: str) -> str | None:
    """A module's ``__version__`` (None when it has none or does not import)."""
    import importlib

    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # no version is not an error here
        return None


def has_te() -> bool:
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # a broken TE install is no TE
        return False
    return True


STREAM_SCRIPT = Path(__file__).resolve()
"""What each stream of ``--streams`` runs (this script; the CPU test puts a stand-in here)."""

STREAM_GRACE_S = 25
"""Seconds a stream may run past its budget (a repetition cut at the deadline is killed, its files removed)
before ``--streams`` kills it."""


def stream_plan(cases: list[str], gpus: list[str], *, out: Path, work: Path, port_base: int) -> list[dict[str, Any]]:
    """One stream per ``CASE:FORMAT``, on its own GPU, with its own output folder, work folder and ports (ours
    ``MASTER_PORT``, theirs ``PET_MASTER_PORT`` one above)."""
    if len(cases) > len(gpus):
        raise SystemExit(f"--streams: {len(cases)} cases need {len(cases)} GPUs in --gpus, got {gpus}")
    plan = []
    for i, (spec, gpu) in enumerate(zip(cases, gpus)):
        case, fmt = spec.split(":")
        if case not in CASES or fmt not in FORMATS:
            raise SystemExit(f"--cases: unknown {spec!r} (cases: {', '.join(CASES)}; formats: {', '.join(FORMATS)})")
        name = f"gpu{gpu}-{case}-{fmt}"
        plan.append({"name": name, "gpu": gpu, "cases": spec, "out": str(out / name), "work": f"{work}-{name}",
                     "master_port": port_base + 10 * i})
    return plan


def run_streams(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``--streams``: each case of ``--cases`` in a process of its own on its own GPU (``CUDA_VISIBLE_DEVICES``),
    all at once; each child's output goes to its ``run.log`` and, without warnings, here with its name in front;
    a child still running ``STREAM_GRACE_S`` after its budget is killed with its whole tree. Then the children's
    JSONs are collected into one result and its tables."""
    plan = stream_plan(a.cases.split(","), a.gpus.split(","), out=out, work=Path(a.work), port_base=a.port_base)
    procs = []
    for st in plan:
        Path(st["out"]).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(STREAM_SCRIPT), "--cases", st["cases"], "--reps", str(a.reps),
               "--windows", str(a.windows), "--seq", str(a.seq), "--batch", str(a.batch),
               "--eval-windows", str(a.eval_windows), "--mlm", a.mlm, "--work", st["work"], "--out", st["out"],
               "--budget-s", str(a.budget_s), "--first-guess-s", str(a.first_guess_s),
               "--master-port", str(st["master_port"]), *(["--their-generate"] if a.their_generate else [])]
        token = uuid.uuid4().hex
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": st["gpu"], MARK: token}
        st["command"] = f"CUDA_VISIBLE_DEVICES={st['gpu']} " + " ".join(shlex.quote(c) for c in cmd)
        print(f"[{time.strftime('%H:%M:%S')}] stream {st['name']}: {st['command']}", flush=True)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", cwd=ROOT, start_new_session=True)
        thread = threading.Thread(target=_relay, args=(proc, st["name"], Path(st["out"]) / "run.log"), daemon=True)
        thread.start()
        procs.append((st, proc, token, thread))
    stop = time.time() + a.budget_s + STREAM_GRACE_S
    signalled: list[int] = []

    def on_term(signum: int, frame: Any) -> None:  # a `timeout` around us: stop the streams, keep what they saved
        signalled.append(signum)
        raise _Stopped

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for st, proc, token, thread in procs:
            try:
                st["rc"] = proc.wait(timeout=max(stop - time.time(), 1))
            except subprocess.TimeoutExpired:
                kill_tree(proc, token)
                st["rc"] = 124
                print(f"[{time.strftime('%H:%M:%S')}] stream {st['name']}: killed {STREAM_GRACE_S} s after its budget",
                      flush=True)
            thread.join(timeout=5)
    except _Stopped:
        for st, proc, token, _thread in procs:
            if proc.poll() is None:
                kill_tree(proc, token)
                st["rc"] = 128 + signalled[0]
            else:
                st["rc"] = proc.returncode
        print(f"[{time.strftime('%H:%M:%S')}] stopped by signal {signalled[0]}: streams killed", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    keep = ("name", "gpu", "cases", "master_port", "command", "rc")
    result = collect([Path(st["out"]) / "vs_megatron_lm.json" for st in plan],
                     [{k: st[k] for k in keep} for st in plan])
    if signalled:
        result["stopped_by_signal"] = signalled[0]
    result["concurrent"] = ("the streams ran at the same time on one host, each on its own GPU; each pair alternates "
                            "its order (ours first on even repetitions), so both sides of a case share the conditions")
    return result


class _Stopped(Exception):
    """SIGTERM while streams run."""


def _relay(proc: subprocess.Popen[str], name: str, log: Path) -> None:
    assert proc.stdout is not None
    with open(log, "a") as f:
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if "warn" not in line.lower() and "Token indices sequence length" not in line:
                print(f"[{name}] {line.rstrip()[:2000]}", flush=True)


def write_collected(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "vs_megatron_lm.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "tables.md").write_text(table(result) + "\n")


@contextlib.contextmanager
def mlm_lock(mlm: Path) -> Any:
    """One stream at a time prepares the shared Megatron-LM files (byte-compiling, their helper's ``make``)."""
    import fcntl

    with open(mlm / ".vsmlm.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="reference-llama:fp8,reference-llama:nvfp4,qwen3-0.6b:fp8,qwen3-0.6b:nvfp4",
                   help=f"CASE:FORMAT,... (cases: {', '.join(CASES)}; formats: {', '.join(FORMATS)})")
    p.add_argument("--reps", type=int, default=3, help="repetitions per case (the order alternates)")
    p.add_argument("--windows", type=int, default=128, help="calibration windows (both flows)")
    p.add_argument("--seq", type=int, default=256, help="calibration sequence length (both flows)")
    p.add_argument("--batch", type=int, default=8, help="calibration batch size (both flows)")
    p.add_argument("--eval-windows", type=int, default=32, help="held-out windows for the exports' perplexity (0: none)")
    p.add_argument("--their-generate", action="store_true", help="let quantize.sh run its sanity generation")
    p.add_argument("--smoke", action="store_true", help="the Qwen3 checkpoint, then reference-llama NVFP4 and FP8, one repetition each")
    p.add_argument("--mlm", default=str(ROOT / ".mlm"), help="the Megatron-LM files (vs_megatron_lm_fetch.sh)")
    p.add_argument("--work", default="/tmp/vsmlm_work")
    p.add_argument("--out", type=Path, help="where the JSON, log and tables go (default: $OUT/vsmlm)")
    p.add_argument("--budget-s", type=float, default=520, help="start no repetition that would end after this")
    p.add_argument("--first-guess-s", type=float, default=60, help="assumed wall of a first pair")
    p.add_argument("--master-port", type=int, help="our process's MASTER_PORT; their torchrun gets the next one "
                   "(PET_MASTER_PORT); default: ours a free port, theirs torchrun's default")
    p.add_argument("--streams", action="store_true",
                   help="each case of --cases at once on its own GPU (--gpus), then --collect their results")
    p.add_argument("--gpus", default="0,1", help="GPUs of --streams, one per case, as CUDA_VISIBLE_DEVICES names them")
    p.add_argument("--port-base", type=int, default=29600, help="--streams: stream i's --master-port is BASE+10*i")
    p.add_argument("--table", type=Path, help="print the markdown tables of a result JSON (no GPU) and exit")
    p.add_argument("--collect", type=Path, nargs="+", metavar="JSON",
                   help="merge runs' result JSONs into one (written to --out when given) and print its tables")
    a = p.parse_args(argv)
    if a.table:
        print(table(json.loads(a.table.read_text())))
        return
    if a.collect:
        merged = collect(a.collect)
        if a.out:
            write_collected(merged, a.out)
        print(table(merged))
        return
    out = a.out or Path(os.environ.get("OUT") or ROOT / "benchmarks" / "raw" / "session6") / "vsmlm"
    if a.streams:
        mlm_root(a.mlm)
        merged = run_streams(a, out)
        write_collected(merged, out)
        print(table(merged), flush=True)
        if merged.get("stopped_by_signal"):
            raise SystemExit(128 + merged["stopped_by_signal"])
        return
    deadline = time.time() + a.budget_s
    mlm = mlm_root(a.mlm)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "hook").mkdir(parents=True)
    (work / "hook" / "sitecustomize.py").write_text(PEAK_HOOK)
    te = has_te()
    cases = "reference-llama:nvfp4,reference-llama:fp8" if a.smoke else a.cases
    reps = 1 if a.smoke else a.reps
    import torch

    gpu = visible_gpu()
    smi = subprocess.run(["nvidia-smi", "-i", gpu, "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         check=False).stdout.strip() if shutil.which("nvidia-smi") else None
    info = {"gpu": smi, "visible_gpu": gpu, "python": sys.version.split()[0], "torch": torch.__version__,
            "transformer_engine": te, "transformer_engine_version": _version("transformer_engine") if te else None, "megatron_lm_commit": (mlm / "COMMIT").read_text().strip(),
            "args": {k: str(v) for k, v in vars(a).items()}, "their_megatron_core": _their_core_version(mlm),
            "torchrun": shutil.which("torchrun"), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    print(json.dumps(info), flush=True)
    result: dict[str, Any] = {"info": info, "cases": []}
    path = out / "vs_megatron_lm.json"

    def save() -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        tmp.replace(path)

    t = time.perf_counter()
    with mlm_lock(mlm):
        info["prepare_lock_wait_s"] = round(time.perf_counter() - t, 2)
        result["megatron_lm_prepare"] = prepare_megatron_lm(mlm, work)
    print(json.dumps(result["megatron_lm_prepare"]), flush=True)
    save()
    with GpuSampler(gpu) as sampler:
        time.sleep(0.5)
        if a.smoke:
            t = time.perf_counter()
            qdir = work / "hf-qwen3-0.6b"
            result["qwen3_checkpoint"] = make_random_hf("qwen3-0.6b", qdir, device="cuda")
            result["qwen3_checkpoint"]["files"] = sorted(f.name for f in qdir.iterdir())
            result["qwen3_checkpoint"]["wall_s"] = round(time.perf_counter() - t, 2)
            torch.cuda.empty_cache()
            print(json.dumps(result["qwen3_checkpoint"]), flush=True)
        for spec in cases.split(","):
            case, fmt = spec.split(":")
            if time.time() > deadline - 20:
                result["cases"].append({"case": case, "format": fmt, "stopped": "not started (budget)"})
                continue
            result["cases"].append({"case": case, "format": fmt, "reps": [], "stopped": "running"})

            def keep(row: dict[str, Any]) -> None:
                result["cases"][-1] = {**row, "stopped": row.get("stopped", "running")}
                save()

            row = run_case(case, fmt, reps, a, mlm, work, out, sampler, deadline, te, save=keep)
            result["cases"][-1] = row
            save()
            print(json.dumps({k: row.get(k) for k in ("case", "format", "reps_done", "median", "bitwise_equal",
                                                      "perplexity", "stopped")}, default=str), flush=True)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    save()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
