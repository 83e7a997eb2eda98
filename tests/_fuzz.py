"""Test helper: the adversarial-input fuzzer of issue 11, shared by ``tests/test_fuzz.py`` (a short run in CI)
and ``benchmarks/fuzz.py`` (the long run behind ``benchmarks/fuzz.md``).

Inputs are hypothesis strategies: recipe documents (valid recipes of every stage and source kind, mutated
structurally, then written as YAML or JSON and sometimes damaged as text or bytes: alias bombs, deep
nesting, huge numbers, duplicate keys, non-UTF-8, control characters), ``--set`` overrides, ``plan``
arguments and launch environments. Each input runs in this process (the CLI's own ``main`` for commands)
under a clock and ``tracemalloc`` and gets one outcome:

- ``ok``: the call returned (exit 0), or ``typed``: a :class:`RecipeError` / exit 2 with one ``error:`` line;
- ``traceback``: any other exception (or exit code);
- ``hang``: over :data:`SECONDS` (an interval timer interrupts it), ``blowup``: over :data:`BYTES` allocated
  at peak or an error message over :data:`MESSAGE_CHARS`;
- ``lost``: a file of the user's sentinel folder (which recipes point at) changed or disappeared.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml
from hypothesis import strategies as st

from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import RecipeError
from modelopt_typed_recipes.plan.check import Environment, check_recipe
from modelopt_typed_recipes.spec.recipe import Recipe
from modelopt_typed_recipes.spec.serde import apply_overrides, to_dict

SECONDS = 5.0
BYTES = 500 * 2**20
MESSAGE_CHARS = 2000
KINDS = ("ok", "typed", "traceback", "hang", "blowup", "lost")

ENVIRONMENTS = {
    "cpu": Environment(megatron_core="0.16.1", modelopt="0.47.0"),
    "gpu": Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=8, transformer_engine=True),
}


@attrs.frozen
class Outcome:
    kind: str
    detail: str = ""
    seconds: float = 0.0
    """CPU seconds of this process (what the input cost; wall time on a shared machine measures the others)."""
    peak_bytes: int = 0
    wall_seconds: float = 0.0


class TimeLimitExceeded(BaseException):
    """Raised by the interval timer inside a call that ran past :data:`SECONDS` (a BaseException, so that
    no ``except Exception`` in the code under test swallows it)."""


def _alarm(_signum: int, _frame: Any) -> None:
    raise TimeLimitExceeded


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


WALL_LIMIT = 60.0
"""Wall seconds after which an input is interrupted as a hang whatever its CPU time (an endless wait)."""


def measure(fn: Callable[[], Outcome | None], *, seconds: float = SECONDS) -> Outcome:
    """Run ``fn`` under the clocks and ``tracemalloc``; classify what happened. The limit is on CPU time:
    on a shared machine (load 40 on two cores while this ran) wall time mostly measures the neighbours."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    t, cpu = time.perf_counter(), time.process_time()
    try:
        with time_limit(WALL_LIMIT):
            got = fn() or Outcome("ok")
    except TimeLimitExceeded:
        got = Outcome("hang", f"interrupted after {WALL_LIMIT:g} s wall")
    except RecipeError as err:
        text = str(err)
        got = (Outcome("typed", text[:300]) if "\n" not in text and len(text) <= MESSAGE_CHARS
               else Outcome("blowup", f"error message of {len(text)} characters: {text[:200]!r}"))
    except MemoryError:
        got = Outcome("blowup", "MemoryError")
    except RecursionError as exc:
        got = Outcome("traceback", f"RecursionError: {exc}"[:300])
    except Exception as exc:  # noqa: BLE001 - every other exception is the finding
        got = Outcome("traceback", f"{type(exc).__name__}: {exc}"[:300])
    wall, elapsed = time.perf_counter() - t, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    if started:
        tracemalloc.stop()
    if got.kind in ("ok", "typed") and elapsed > seconds:
        got = Outcome("hang", f"{elapsed:.1f} CPU s")
    if got.kind in ("ok", "typed") and peak > BYTES:
        got = Outcome("blowup", f"{peak / 2**20:.0f} MiB at peak")
    return attrs.evolve(got, seconds=elapsed, peak_bytes=peak, wall_seconds=wall)


# --------------------------------------------------------------------------- the user's files
class Sentinel:
    """A folder of a user's own files that fuzzed recipes point ``output_dir`` and sources at; any change
    to it is data lost."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.restore()
        self.digest = self._digest()

    def restore(self) -> None:
        (self.root / "src").mkdir(parents=True, exist_ok=True)
        (self.root / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}')
        (self.root / "README.md").write_text("my notes\n")
        (self.root / "src" / "index.js").write_text("console.log('hi')\n")

    def _digest(self) -> str:
        h = hashlib.sha256()
        for p in sorted(self.root.rglob("*")):
            h.update(str(p.relative_to(self.root)).encode())
            if p.is_file():
                h.update(p.read_bytes())
        return h.hexdigest()

    def intact(self) -> bool:
        return self._digest() == self.digest


# --------------------------------------------------------------------------- recipe documents
def base_documents(sentinel: str, data_file: str) -> list[dict[str, Any]]:
    """Valid recipes of every stage kind (quantize, auto_quantize, prune, export) and source kind."""
    cal = {"dataset": "reference-train", "num_samples": 4, "seq_length": 32, "batch_size": 2}
    inline = to_dict(get_arch("tiny-dense"))
    return [
        {"model": "reference-llama", "source": {"type": "builtin"}, "backend": "hf", "device": "cpu",
         "stages": [{"technique": "quantize", "format": "fp8"}, {"technique": "export", "format": "hf"}],
         "calibration": cal, "evaluation": {"dataset": "reference-heldout"}, "output_dir": sentinel},
        {"model": "reference-llama", "source": {"type": "builtin"}, "backend": "hf", "device": "cpu",
         "stages": [{"technique": "auto_quantize", "formats": ["int4_awq", "fp8"], "effective_bits": 6.5}],
         "output_dir": "out/aq", "seed": 7},
        {"model": "tiny-moe", "source": {"type": "random", "seed": 3}, "backend": "megatron",
         "stages": [{"technique": "quantize", "format": "fp8", "kv_cache": "fp8", "exclude": ["*layers.1.*"]}],
         "layout": {"tensor_parallel": 2, "expert_parallel": 2}, "output_dir": "out/moe"},
        {"model": "tiny-dense", "source": {"type": "megatron", "path": sentinel}, "backend": "megatron",
         "stages": [{"technique": "prune", "num_layers": 1}, {"technique": "quantize", "format": "int4_awq"},
                    {"technique": "export", "subdir": "hf"}],
         "evaluation": {"dataset": "reference-heldout", "num_samples": 2}, "output_dir": "out/prune"},
        {"model": inline, "source": {"type": "random"}, "backend": "hf", "device": "cpu",
         "stages": [{"technique": "quantize", "recipe": "general/ptq/fp8_default-kv_fp8"}],
         "calibration": {"files": [data_file], "text_field": "text"}, "output_dir": "out/inline"},
        {"model": "qwen3-8b", "source": {"type": "hf", "path": sentinel}, "backend": "auto",
         "stages": [{"technique": "auto_quantize", "recipe": "general/auto_quantize/w4a8_awq_beta_fp8_at_6p0bits"},
                    {"technique": "export", "format": "vllm_fakequant", "dtype": "fp16"}],
         "layout": {"tensor_parallel": 8}, "output_dir": "out/qwen"},
    ]


WORDS = [
    "reference-llama", "tiny-dense", "tiny-moe", "tiny-mla", "qwen3-8b", "Qwen/Qwen3-8B", "deepseek-r1", "fp8",
    "nvfp4", "int4_awq", "w4a8_awq", "int8_sq", "mxfp8", "FP8_DEFAULT_CFG", "quantize", "auto_quantize", "prune",
    "export", "hf", "megatron", "builtin", "random", "cuda", "cpu", "auto", "bf16", "fp16", "reference-train",
    "reference-heldout", "~nosuchuser/x", "~", "../../etc", "/dev/zero", "/", "manifest.json", ".lock",
    "01-quantize-fp8", ".", "nan", "1e21", "-0", "0x10", "1_000", "6B", "1.5M", "*", "*layers.0.*", "[", "{",
    "general/ptq/fp8_default-kv_fp8", "general/auto_quantize/nvfp4_fp8_kl_div_at_5p4bits", "\t", "é", "\u2028",
    "x" * 300,
]
FIELDS = [
    "model", "source", "stages", "calibration", "evaluation", "layout", "output_dir", "backend", "device", "dtype",
    "seed", "deterministic", "schema_version", "name", "type", "path", "technique", "format", "recipe", "formats", "effective_bits",
    "exclude", "kv_cache", "algorithm", "subdir", "num_layers", "hidden_size", "params", "dataset", "files",
    "num_samples", "seq_length", "batch_size", "tensor_parallel", "pipeline_parallel", "expert_parallel",
    "expert_tensor_parallel", "data_parallel", "context_parallel", "virtual_pipeline", "first_stage_layers",
]
NUMBERS = [0, 1, -1, 2, 3, 7, 255, 256, 257, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), 10**21, 10**30]

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(NUMBERS), st.integers(-(2**70), 2**70), st.floats(),
    st.text(max_size=20), st.sampled_from(WORDS),
)
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


def laughs(levels: int, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ",".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nmodel: *a{levels - 1}\n"


PAYLOADS: list[str | bytes] = [
    laughs(9), laughs(12, 4), "[" * 3000 + "]" * 3000, "{a: " * 300 + "1" + "}" * 300, "9" * 5000, "-" + "7" * 4400,
    "0x" + "f" * 5000, "1:" * 3000 + "1", "1e999", ".nan", "2001-13-45", "!!python/object/apply:os.system ['true']",
    "!!binary AAA*", "&a [*a]", "<<: *undefined", "%YAML 1.1\n---\n", "---\n---\n", "\x00", "\x1f", "\t\t",
    "\ufeff", "\u2028", "stages: []\nstages: []\n", "model: a\nmodel: b\n", "? [a, b]\n: c\n",
    b"\xff\xfe\x00", b"\xc3\x28", b"\xed\xa0\x80", "x" * 20_000,
]


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((node, k))
            _slots(v, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((node, i))
            _slots(v, out)
    return out


@st.composite
def recipe_documents(draw: Any, sentinel: str = "/nonexistent", data_file: str = "data.jsonl") -> tuple[str, bytes]:
    """(file suffix, file bytes) of a recipe: a valid one changed by a few structural and textual mutations."""
    doc = copy.deepcopy(draw(st.sampled_from(base_documents(sentinel, data_file))))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3, 4]))):
        slots = _slots(doc, [])
        if not slots:
            break
        parent, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["set", "set", "delete", "add", "wrap"]))
        if action == "set":
            parent[key] = draw(junk)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(FIELDS) | st.text(max_size=8))] = draw(junk)
        elif action == "wrap":
            parent[key] = [parent[key]]
    suffix = draw(st.sampled_from([".yaml", ".yaml", ".json", ".yml"]))
    try:
        text = json.dumps(doc) if suffix == ".json" else yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except (ValueError, TypeError):  # an integer beyond what str() prints
        text = "model: reference-llama\n"
    data = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        cut = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            piece = draw(st.sampled_from(PAYLOADS))
            piece = piece if isinstance(piece, bytes) else piece.encode("utf-8", "surrogatepass")
        else:
            piece = draw(st.binary(max_size=8) | st.text(max_size=8).map(lambda s: s.encode("utf-8", "surrogatepass")))
        end = min(len(data), cut + draw(st.integers(0, 12)))
        data = data[:cut] + piece + data[end:]
    return suffix, data


def warm_up(folder: Path, sentinel: str, data_file: str) -> None:
    """Check every base recipe once on both machines: the first check of a model or stage kind imports
    modules and reads ModelOpt's YAML files, a one-time cost the per-input clock should not carry."""
    for i, doc in enumerate(base_documents(sentinel, data_file)):
        f = folder / f"warm{i}.yaml"
        f.write_text(yaml.safe_dump(doc))
        for env in ENVIRONMENTS:
            with contextlib.suppress(RecipeError):
                check_file(f, env)


def check_file(path: Path, env: str) -> Outcome | None:
    """``Recipe.load`` then ``check_recipe``: the in-process twin of ``check FILE --json``."""
    recipe = Recipe.load(path)
    report = check_recipe(recipe, env=ENVIRONMENTS[env])
    json.dumps(report.to_dict())
    long = [e for e in report.errors if "\n" in str(e) or len(str(e)) > MESSAGE_CHARS]
    if long:
        return Outcome("blowup", f"report error of {len(str(long[0]))} characters")
    return Outcome("ok" if report.ok else "typed", "" if report.ok else str(report.errors[0])[:300])


# --------------------------------------------------------------------------- --set overrides
override_keys = st.one_of(
    st.sampled_from(["seed", "output_dir", "calibration.num_samples", "stages.0.format", "stages.0", "stages.9.x",
                     "stages.-1.technique", "layout", "layout.data_parallel", "model", "source.path", "stages",
                     "calibration", "evaluation.dataset", "backend", "name", "a.b.c", "", ".", "stages." + "9" * 5000]),
    st.text(max_size=20),
)
override_values = st.one_of(
    st.sampled_from([str(n) for n in NUMBERS] + WORDS + [p for p in PAYLOADS if isinstance(p, str)]),
    st.text(max_size=30),
    junk.map(lambda v: json.dumps(v, default=str)),
)
overrides = st.lists(st.tuples(override_keys, override_values).map(lambda kv: f"{kv[0]}={kv[1]}")
                     | st.text(max_size=20), min_size=1, max_size=3)


def apply_to_base(items: list[str], sentinel: str) -> Outcome | None:
    base = Recipe.from_dict(base_documents(sentinel, "data.jsonl")[0])
    recipe = apply_overrides(base, items)
    report = check_recipe(recipe, env=ENVIRONMENTS["cpu"])
    return Outcome("ok" if report.ok else "typed")


# --------------------------------------------------------------------------- plan arguments and environments
ints_as_text = st.one_of(
    st.integers(-3, 64).map(str), st.sampled_from(NUMBERS).map(str), st.text(max_size=6),
    st.sampled_from(["", " 8 ", "+4", "08", "1e3", "0x10", "4.0", "٣", "9" * 5000]),
)
ENV_VARS = ["WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TP", "PP", "CP",
            "EP", "ETP", "DP", "MLM_EXTRA_ARGS", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_GPUS_ON_NODE",
            "SLURM_JOB_NODELIST", "SLURM_PROCID", "SLURM_LOCALID", "MLM_MODEL_CFG", "HF_MODEL_CKPT", "EXPORT_DIR"]
env_values = st.one_of(
    ints_as_text,
    st.sampled_from(["--tensor-model-parallel-size 2", "--pipeline-model-parallel-size", "--sequence-parallel",
                     "'unbalanced", "node[01-04,07],gpu5", "node[", "--expert-model-parallel-size=" + "9" * 40]),
    st.text(max_size=40),
).map(lambda s: s.replace("\x00", ""))
environments = st.dictionaries(st.sampled_from(ENV_VARS), env_values, max_size=5)

ARCH_NAMES = ["gpt-neox-20b", "qwen3-8b", "qwen3-30b-a3b", "deepseek-r1", "reference-llama", "tiny-moe", "kimi-k2",
              "nemotron-h-8b", "Qwen/Qwen3-8B", "no-such-model", "", "x" * 500]
FLAGS = ["--tp", "--pp", "--cp", "--ep", "--etp", "--dp", "--nodes", "--seq-length", "--batch",
         "--first-stage-layers", "--last-stage-layers"]


@st.composite
def plan_argvs(draw: Any) -> list[str]:
    sane = draw(st.booleans())  # half the time a plausible command, so the planner's own paths run too
    gpus = str(draw(st.sampled_from([1, 2, 4, 8, 16, 64, 1024, 1_000_000]))) if sane else draw(ints_as_text)
    argv = ["plan", draw(st.sampled_from(ARCH_NAMES) | st.text(max_size=12)), "--gpus", gpus, "--json"]
    values = st.sampled_from(["1", "2", "4", "8"]) if sane else ints_as_text
    for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=1 if sane else 4, unique=True)):
        argv += [flag, draw(values)]
    if draw(st.booleans()):
        argv += ["--stage", draw(st.sampled_from(["quantize", "auto-quantize", "prune", "export", "distill"]))]
    if draw(st.booleans()):
        argv += ["--format", draw(st.sampled_from(["fp8", "nvfp4", "int4_awq", "bf16", "nope"]))]
    if draw(st.booleans()):
        argv += ["--gpu", draw(st.sampled_from(["h100-80gb", "h200-141gb", "b200-192gb", "a100-80gb", "tpu"]))]
    if draw(st.booleans()):
        argv += [draw(st.sampled_from(["--sp", "--no-sp", "--no-memory-check"]))]
    return argv


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ENV_VARS}
    for k in ENV_VARS:
        os.environ.pop(k, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_cli(argv: list[str], environ: Mapping[str, str] | None = None) -> Outcome | None:
    """The CLI's ``main`` in this process: exit 0, or exit 2 with one ``error:`` line (a failing ``check``
    prints its report instead), else a finding."""
    from modelopt_typed_recipes.cli import main

    out, err = io.StringIO(), io.StringIO()
    with patched_environ(environ or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
    return classify_exit(rc, out.getvalue(), err.getvalue(), check=argv[:1] == ["check"])


def classify_exit(rc: int, stdout: str, stderr: str, *, check: bool = False) -> Outcome:
    if "Traceback (most recent call last)" in stderr:
        return Outcome("traceback", stderr.strip().splitlines()[-1][:300])
    if rc == 0:
        return Outcome("ok")
    if rc != 2:
        return Outcome("traceback", f"exit {rc}: {stderr.strip()[-300:]}")
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if len(errors) == 1 and len(errors[0]) <= MESSAGE_CHARS:
        return Outcome("typed", errors[0][:300])
    if check and not errors and stdout.strip():
        return Outcome("typed", "check report with errors")
    if any(len(line) > MESSAGE_CHARS for line in errors):
        return Outcome("blowup", f"error line of {max(map(len, errors))} characters")
    return Outcome("traceback", f"exit 2 with {len(errors)} error lines: {stderr[-300:]!r}")


def run_cli_subprocess(argv: list[str], *, cwd: Path, environ: Mapping[str, str] | None = None,
                       timeout: float = 60) -> Outcome:
    """The real command line in a child process (its start-up, imports and streams included)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(environ or {})
    t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", *argv], capture_output=True, text=True,
                           cwd=cwd, env=env, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        return Outcome("hang", f"over {timeout:g} s wall", wall_seconds=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    out = classify_exit(p.returncode, p.stdout, p.stderr, check=argv[:1] == ["check"])
    if out.kind in ("ok", "typed") and cpu > SECONDS:
        out = Outcome("hang", f"{cpu:.1f} CPU s")
    return attrs.evolve(out, seconds=cpu, wall_seconds=time.perf_counter() - t)
