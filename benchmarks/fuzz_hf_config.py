"""A long fuzz run of the Hugging Face config.json reader: how many inputs end in a typed error, a traceback,
a hang or a blow-up (the longer form of ``tests/test_hf_config_fuzz.py``).

Each document is written to a file and goes the user's way: ``load_hf_config(path)``, then, when that
succeeds, ``diff_hf_config`` against the same file and ``to_hf_config``. Documents come from a seeded
generator: random JSON documents with config-like keys, random bytes, structural and byte-level mutations
of the real config.json files in ``tests/data/hf-config-facts.json``, and a fixed set of hard inputs
(deep nesting, 5,000-digit integers, non-UTF-8 bytes, ``/dev/zero``). A document is a hang when it takes
more than 5 s (it is interrupted at 20 s) and a blow-up when it needs more than 500 MB (the address space
is capped at the start's size plus 500 MB, so it fails with MemoryError instead of taking the machine).

Usage: python benchmarks/fuzz_hf_config.py [--n 10000] [--seed 0] [--cli 300] [--out benchmarks/fuzz_hf_config.md]
Run it against another checkout with PYTHONPATH=/path/to/checkout to compare (only load_hf_config,
diff_hf_config and to_hf_config are used, which every version has).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from modelopt_typed_recipes.bridges.hf_config import diff_hf_config, load_hf_config, to_hf_config
from modelopt_typed_recipes.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]
FACTS = json.loads((ROOT / "tests" / "data" / "hf-config-facts.json").read_text())["models"]
REAL = {k: v for k, v in FACTS.items() if v.get("model_type")}
MODEL_TYPES = sorted({v["model_type"] for v in REAL.values()} | {"llama4_text", "kimi_k2", "bert", "my_arch"})
KEYS = sorted({k for v in REAL.values() for k in v} | {k for v in REAL.values() for k in (v.get("text_config") or {})})
HANG_S, LIMIT_S = 5.0, 20
MEMORY_MB = 500


class _Alarm(Exception):
    pass


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise _Alarm


# --------------------------------------------------------------------------- generators
def _value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth < 4 and pick < 0.12:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 4 and pick < 0.2:
        return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return rng.choice(
        [
            None,
            True,
            False,
            rng.randint(-5, 10),
            rng.randint(0, 2**20),
            rng.randint(-(2**70), 2**70),
            rng.choice([0.0, -1.5, 1e-5, 1e6, 1e308, float("inf"), float("nan")]),
            rng.random(),
            rng.choice(MODEL_TYPES),
            rng.choice(["silu", "gelu", "gelu_fast", "relu2", "tanh", "yarn", "llama3", "sigmoid", "softmax", ""]),
            "".join(rng.choice("ME*-") for _ in range(rng.randint(0, 60))),
            "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 8))),
        ]
    )


def random_document(rng: random.Random) -> bytes:
    doc = {rng.choice(KEYS): _value(rng) for _ in range(rng.randint(0, 30))}
    if rng.random() < 0.9:
        doc["model_type"] = rng.choice(MODEL_TYPES)
    if rng.random() < 0.1:
        doc["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    return json.dumps(doc).encode()


def random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 2000)))


def mutated(rng: random.Random) -> bytes:
    cfg = copy.deepcopy(REAL[rng.choice(sorted(REAL))])
    target = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    huge: list[int] = []
    nests: list[tuple[int, bytes]] = []
    for _ in range(rng.randint(1, 5)):
        if not target:
            break
        key = rng.choice(sorted(target))
        op = rng.choice(["set", "delete", "null", "nest", "huge", "negate", "scale"])
        if op == "set":
            target[key] = _value(rng)
        elif op == "delete":
            del target[key]
        elif op == "null":
            target[key] = None
        elif op == "nest":  # written as text below: json.dumps itself recurses
            nests.append((rng.choice([1, 10, 100, 1000, 10_000]), json.dumps(target[key]).encode()))
            target[key] = f"__nest{len(nests) - 1}__"
        elif op == "huge":
            huge.append(rng.choice([20, 400, 4299, 4301, 10_000]))
            target[key] = f"__huge{len(huge) - 1}__"
        elif op == "negate" and isinstance(target[key], int | float) and not isinstance(target[key], bool):
            target[key] = -target[key]
        elif op == "scale" and isinstance(target[key], int) and not isinstance(target[key], bool):
            target[key] = target[key] * rng.choice([0, 2, 3, 1000, 10**9])
    data = json.dumps(cfg).encode()
    for i, digits in enumerate(huge):
        data = data.replace(f'"__huge{i}__"'.encode(), b"9" * digits)
    for i, (depth, inner) in enumerate(nests):
        data = data.replace(f'"__nest{i}__"'.encode(), b"[" * depth + inner + b"]" * depth)
    if rng.random() < 0.3:  # byte-level edits on top
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at = rng.randint(0, len(buf))
            buf[at : at + rng.randint(0, 3)] = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 3)))
        data = bytes(buf)
    return data


HARD: list[bytes | str] = [
    b"[" * 100_000,
    b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b'{"model_type": "llama", "vocab_size": 1' + b"0" * 5_000 + b"}",
    b'{"model_type": "llama\xff\xfe"}',
    b"\xff\xfe{\x00}\x00",
    b'{"model_type": "' + b"x" * 1_000_000 + b'"}',
    b'{"model_type": "nemotron_h", "hybrid_override_pattern": "' + b"M" * 1_000_000 + b'"}',
    b'{"model_type": "my_arch", "auto_map": {"AutoConfig": "x.Y"}}',
    b'{"model_type": "llama", "_name_or_path": "\\udfff"}',
    "/dev/zero",
]


# --------------------------------------------------------------------------- running one document
def run_one(path: Path) -> tuple[str, str]:
    """(outcome, detail): ok | typed | traceback | hang."""
    signal.alarm(LIMIT_S)
    try:
        arch = load_hf_config(path)
        config = json.loads(path.read_bytes())
        diffs = diff_hf_config(arch, config)
        if diffs:
            return "traceback", f"AssertionError: reads back differently: {diffs[0]}"
        try:
            to_hf_config(arch)
        except RecipeError:
            pass
        return "ok", ""
    except RecipeError as err:
        if len(str(err)) > 2000:
            return "traceback", "a typed error longer than 2,000 characters (a value's whole repr)"
        return "typed", type(err).__name__
    except _Alarm:
        return "hang", f"interrupted at {LIMIT_S} s"
    except MemoryError:
        return "blow-up", f"MemoryError (over {MEMORY_MB} MB more than at the start)"
    except Exception as exc:  # what this benchmark counts
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        return "traceback", f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
    finally:
        signal.alarm(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cli", type=int, default=300, help="documents also run through `from-hf` in a subprocess")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sys.setrecursionlimit(1000)
    signal.signal(signal.SIGALRM, _on_alarm)
    vm_kb = next(int(ln.split()[1]) for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmSize"))
    cap = vm_kb * 1024 + MEMORY_MB * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    rng = random.Random(args.seed)
    kinds = [("random JSON document", random_document), ("random bytes", random_bytes), ("mutated real config", mutated)]
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    details: collections.Counter[str] = collections.Counter()
    slowest, slowest_kind = 0.0, ""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cli_docs: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        docs: list[tuple[str, Path]] = []
        for i, data in enumerate(HARD):
            if isinstance(data, str):
                docs.append(("hard input", Path(data)))
                continue
            p = Path(tmp) / f"hard{i}.json"
            p.write_bytes(data)
            docs.append(("hard input", p))
        for i in range(args.n):
            kind, make = kinds[i % 3] if i % 10 else kinds[2]
            p = Path(tmp) / f"doc{i}.json"
            p.write_bytes(make(rng))
            docs.append((kind, p))
        for kind, p in docs:
            t = time.perf_counter()
            outcome, detail = run_one(p)
            took = time.perf_counter() - t
            if took > HANG_S and outcome not in ("hang", "blow-up"):
                outcome, detail = "hang", f"{took:.1f} s"
            counts[kind][outcome] += 1
            if detail and outcome != "typed":
                details[f"{outcome}: {detail}"] += 1
            if took > slowest:
                slowest, slowest_kind = took, kind
        rss_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        # the CLI: exit 0 or 2, at most one stderr line that is not a "# note:"
        cli = collections.Counter[str]()
        pick = random.Random(args.seed + 1).sample([p for _, p in docs], min(args.cli, len(docs)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        for p in pick:
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "modelopt_typed_recipes", "from-hf", str(p)],
                    capture_output=True, text=True, timeout=60, env=env, errors="replace",
                )
            except subprocess.TimeoutExpired:
                cli["over 60 s"] += 1
                continue
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("# note:")]
            good = proc.returncode in (0, 2) and len(lines) <= 1
            cli["exit 0 or 2, one line" if good else f"rc {proc.returncode}, {len(lines)} stderr lines"] += 1
        cli_docs = pick
    rows = []
    total: collections.Counter[str] = collections.Counter()
    for kind, c in counts.items():
        total.update(c)
        rows.append((kind, sum(c.values()), c["ok"], c["typed"], c["traceback"], c["hang"], c["blow-up"]))
    rows.append(("all", sum(total.values()), total["ok"], total["typed"], total["traceback"], total["hang"],
                 total["blow-up"]))
    lines = [
        (f"# config.json reader fuzz run ({platform.python_implementation()} {platform.python_version()}, "
         f"{os.cpu_count()} cores, seed {args.seed})"),
        "",
        f"`python benchmarks/fuzz_hf_config.py --n {args.n} --seed {args.seed} --cli {args.cli}`",
        "",
        f"| documents | tried | ok | typed error | traceback | hang (> 5 s) | blow-up (> {MEMORY_MB} MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {k} | {n:,} | {ok:,} | {ty:,} | {tb:,} | {hg:,} | {bu:,} |" for k, n, ok, ty, tb, hg, bu in rows),
        "",
        f"Slowest document: {slowest:.2f} s ({slowest_kind}); peak memory growth of the whole run: {rss_mb:.0f} MB.",
        f"CLI `from-hf` on {len(cli_docs)} of them: "
        + ", ".join(f"{v} {k}" for k, v in sorted(cli.items())),
        "",
    ]
    if details:
        lines += ["Failures by kind:", "", *(f"- {n} x {d}" for d, n in details.most_common(20)), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if total["traceback"] == total["hang"] == total["blow-up"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
