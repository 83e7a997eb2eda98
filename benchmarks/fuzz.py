"""The long run of the fuzzer behind ``tests/test_fuzz.py`` (issue 11): every input a user controls except
``config.json`` (which has its own fuzz test), 10,000+ inputs in all, each classified as in ``tests/_fuzz.py``.

    nice .venv/bin/python benchmarks/fuzz.py            # ~10-20 min on a shared 2-core CPU
    .venv/bin/python benchmarks/fuzz.py --scale 0.05    # a quick look

Writes ``benchmarks/fuzz.md`` (the table of issue 11) and ``benchmarks/fuzz_raw.json`` (counts, timings,
memory peaks and every finding with its input).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared harness (_fuzz) lives with the tests

import attrs
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from _fuzz import (
    BYTES,
    KINDS,
    SECONDS,
    WALL_LIMIT,
    Outcome,
    Sentinel,
    apply_to_base,
    check_file,
    environments,
    measure,
    overrides,
    plan_argvs,
    recipe_documents,
    run_cli,
    run_cli_subprocess,
    warm_up,
)

FAMILIES = {
    # name: (label in the table, examples at scale 1)
    "recipes": ("recipe loader in-process (`Recipe.load` + `check_recipe`), CPU and GPU machines", 7000),
    "overrides": ("`--set` overrides in-process (`apply_overrides` + `check_recipe`)", 1500),
    "plan": ("`plan` arguments and environment (CLI `main` in-process)", 1500),
    "env": ("`env --json` with fuzzed launch environments (CLI `main` in-process)", 500),
    "cli": ("CLI `check --json` in a child process", 150),
}


class Tally:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, family: str, outcome: Outcome, given_input: Any) -> None:
        row = self.rows.setdefault(family, {"tried": 0, **{k: 0 for k in KINDS}, "seconds": [], "walls": [],
                                            "peaks": [], "findings": []})
        row["tried"] += 1
        row[outcome.kind] += 1
        row["seconds"].append(outcome.seconds)
        row["walls"].append(outcome.wall_seconds)
        row["peaks"].append(outcome.peak_bytes)
        if outcome.kind not in ("ok", "typed"):
            text = given_input if isinstance(given_input, str) else repr(given_input)
            row["findings"].append({"kind": outcome.kind, "detail": outcome.detail, "input": text[:2000]})


def _run(test: Callable[..., None], examples: int) -> None:
    settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
             suppress_health_check=list(HealthCheck))(test)()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every family's example count")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    counts = {k: max(1, int(n * args.scale)) for k, (_label, n) in FAMILIES.items()}
    tally = Tally()
    work = Path(tempfile.mkdtemp(prefix="mtr-fuzz-"))
    data = work / "data.jsonl"
    data.write_text('{"text": "some calibration text"}\n')
    sentinel = Sentinel(work / "user-files")
    warm_up(work, str(sentinel.root), str(data))

    def guard(family: str, outcome: Outcome, given_input: Any) -> None:
        if not sentinel.intact():
            outcome = attrs.evolve(outcome, kind="lost", detail="the user's sentinel folder changed")
            sentinel.restore()  # the user's files again, for the next input
        tally.add(family, outcome, given_input)

    docs = recipe_documents(sentinel=str(sentinel.root), data_file=str(data))

    @given(doc=docs, env=st.sampled_from(["cpu", "gpu"]))
    def recipes(doc: tuple[str, bytes], env: str) -> None:
        suffix, payload = doc
        f = work / f"recipe{suffix}"
        f.write_bytes(payload)
        guard("recipes", measure(lambda: check_file(f, env)), payload.decode("utf-8", "backslashreplace"))

    @given(items=overrides)
    def overrides_(items: list[str]) -> None:
        guard("overrides", measure(lambda: apply_to_base(items, str(sentinel.root))), items)

    @given(argv=plan_argvs(), environ=environments)
    def plan(argv: list[str], environ: dict[str, str]) -> None:
        guard("plan", measure(lambda: run_cli(argv, environ)), {"argv": argv, "env": environ})

    @given(environ=environments)
    def env(environ: dict[str, str]) -> None:
        guard("env", measure(lambda: run_cli(["env", "--json"], environ)), environ)

    @given(doc=docs)
    def cli(doc: tuple[str, bytes]) -> None:
        suffix, payload = doc
        f = work / f"cli{suffix}"
        f.write_bytes(payload)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out = run_cli_subprocess(["check", str(f), "--json"], cwd=work)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
        if out.kind in ("ok", "typed") and peak > BYTES and peak > before * 1024:
            out = attrs.evolve(out, kind="blowup", detail=f"child peak RSS {peak / 2**20:.0f} MiB")
        guard("cli", attrs.evolve(out, peak_bytes=peak), payload.decode("utf-8", "backslashreplace"))

    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    for name, test in (("recipes", recipes), ("overrides", overrides_), ("plan", plan), ("env", env), ("cli", cli)):
        t = time.perf_counter()
        _run(test, counts[name])
        row = tally.rows.get(name, {"tried": 0})
        print(f"{name}: {row['tried']} inputs in {time.perf_counter() - t:.0f} s", flush=True)
    wall = time.perf_counter() - t0
    write(tally, args.out, wall=wall, load=(load0, os.getloadavg()[0]))
    bad = sum(r["traceback"] + r["hang"] + r["blowup"] + r["lost"] for r in tally.rows.values())
    print(f"{sum(r['tried'] for r in tally.rows.values())} inputs, {bad} findings, {wall:.0f} s")
    return 0 if bad == 0 else 1


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def write(tally: Tally, out: Path, *, wall: float, load: tuple[float, float]) -> None:
    raw: dict[str, Any] = {"load": load, "python": platform.python_version(), "machine": platform.machine(), "wall_seconds": wall,
                           "limits": {"seconds": SECONDS, "bytes": BYTES}, "families": {}}
    lines = [
        "# Fuzzing every input a user controls (issue 11)",
        "",
        "Made by `nice .venv/bin/python benchmarks/fuzz.py` (strategies in `tests/_fuzz.py`; the CI test",
        "`tests/test_fuzz.py` runs the same strategies with fewer examples). `config.json` is fuzzed by its own",
        "test. Each input gets one outcome: it returned or exited 0, or raised a typed error / exited 2 with one",
        f"`error:` line (**typed error or ok**); any other exception (**raw traceback**); over {SECONDS:g} s of CPU",
        f"time (interrupted at {WALL_LIMIT:g} s of wall time; CPU time because a shared machine's load stretches",
        (f"wall time many-fold: load average {raw['load'][0]:.0f} at the start, {raw['load'][1]:.0f} at the end, on "
         f"{os.cpu_count()} cores), or over"),
        f"{BYTES // 2**20} MB allocated at peak (tracemalloc; child processes: peak RSS), or an error message over",
        "2,000 characters (**hang / memory blow-up**); a change to a folder of the user's own files that the",
        "recipes point `output_dir` and checkpoint paths at (**data lost**).",
        "",
        "| test | tried | typed error or ok | raw traceback | hang / memory blow-up | data lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    total = {k: 0 for k in ("tried", "ok", "typed", "traceback", "hang", "blowup", "lost")}
    for name, (label, _n) in FAMILIES.items():
        row = tally.rows.get(name)
        if row is None:
            continue
        for k in total:
            total[k] += row[k]
        lines.append(f"| {label} | {row['tried']:,} | {row['ok'] + row['typed']:,} | {row['traceback']:,} | "
                     f"{row['hang'] + row['blowup']:,} | {row['lost']:,} |")
        raw["families"][name] = {
            "label": label, **{k: row[k] for k in ("tried", "ok", "typed", "traceback", "hang", "blowup", "lost")},
            "seconds_p50": _quantile(row["seconds"], 0.5), "seconds_p99": _quantile(row["seconds"], 0.99),
            "seconds_max": max(row["seconds"], default=0.0), "wall_seconds_p50": _quantile(row["walls"], 0.5),
            "wall_seconds_max": max(row["walls"], default=0.0), "peak_bytes_max": max(row["peaks"], default=0),
            "findings": row["findings"],
        }
    lines.append(f"| **all** | **{total['tried']:,}** | **{total['ok'] + total['typed']:,}** | "
                 f"**{total['traceback']:,}** | **{total['hang'] + total['blowup']:,}** | **{total['lost']:,}** |")
    lines += ["", "Of the accepted inputs, ok / typed error by family, and the slowest and largest of each:", "",
              "| family | ok | typed error | median CPU s | p99 CPU s | max CPU s | max wall s | max peak MB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, fam in raw["families"].items():
        lines.append(f"| {name} | {fam['ok']:,} | {fam['typed']:,} | {fam['seconds_p50']:.3f} | "
                     f"{fam['seconds_p99']:.3f} | {fam['seconds_max']:.2f} | {fam['wall_seconds_max']:.2f} | "
                     f"{fam['peak_bytes_max'] / 2**20:.1f} |")
    findings = [(n, f) for n, fam in raw["families"].items() for f in fam["findings"]]
    lines += ["", f"Wall time {wall / 60:.1f} min (Python {raw['python']}, a shared CPU). Findings: {len(findings)}."]
    for n, f in findings[:20]:
        lines.append(f"- {n}: {f['kind']}: {f['detail']}")
    (out / "fuzz.md").write_text("\n".join(lines) + "\n")
    (out / "fuzz_raw.json").write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
