"""Registry architectures at real size, random weights, through ``run_post_training`` next to a hand-written
ModelOpt script (``scale_direct.py``), each timed from outside as a whole process.

One command per machine kind (the wheel install line of the device README first)::

    python3 benchmarks/scale_gpu.py --kind nvidia-h200       # qwen3-8b TP1, llama-3.1-8b TP1
    python3 benchmarks/scale_gpu.py --kind nvidia-h200-x2    # + qwen3-8b TP2, qwen3-30b-a3b EP2

``--cases NAME:FORMAT:REPS[:ours],...`` picks cases (names in ``CASES``; ``:ours`` runs ours alone),
``--windows/--seq/--batch`` the calibration windows (the reference tokenizer; the built-in corpus, or ``--text``,
a ``.jsonl`` both programs read, which ``--make-text`` writes first with ``scale_text.py`` when more windows are
asked than the built-in corpus holds), ``--budget-s`` stops starting runs that would not finish in time (a
time-out ends a process with its whole group: torchrun's workers too). ``--dry-run`` writes and checks every
recipe and logs the commands without starting them (a CPU test). For each repetition the order alternates (ours first on even repetitions). Our run is
``python -m modelopt_typed_recipes run RECIPE.yaml`` (under ``torchrun`` on 2 GPUs); its figures come from the
manifest it writes. Exported tensors are hashed (sha256 of each tensor's bytes) and compared between the two,
then deleted. ``--deterministic`` runs both bitwise reproducibly (the recipe's ``deterministic: true``, the
direct script's ``--deterministic``) and compares each program's export with its own first repetition
(``ours_same_as_rep0``, ``direct_same_as_rep0``). Writes ``$OUT/scale_gpu.json`` (one object per case, after every repetition) and appends every
line the processes print to ``$OUT/scale_raw.log``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES: dict[str, dict] = {  # guess_s: one process's wall with 512 windows of 2,048 (budget guard; measured or estimated)
    "qwen3-8b-tp1": dict(model="qwen3-8b", gpus=1, layout={}, direct=dict(tp=1, ep=1), guess_s=140),
    "llama3.1-8b-tp1": dict(model="llama3.1-8b", gpus=1, layout={}, direct=dict(tp=1, ep=1), guess_s=140),
    "qwen3-8b-tp2": dict(model="qwen3-8b", gpus=2, layout={"tensor_parallel": 2}, direct=dict(tp=2, ep=1),
                         guess_s=170),
    "qwen3-30b-a3b-ep2": dict(model="qwen3-30b-a3b", gpus=2, layout={"expert_parallel": 2, "data_parallel": 2},
                              direct=dict(tp=1, ep=2), guess_s=330),
    # the same EP=2 path on the registry's tiny Qwen3-MoE (8 experts): a minute-long check of both programs
    # before the 30 B model's calls (run it with --seq 256, the tiny model's context)
    "tiny-moe-ep2": dict(model="tiny-moe", gpus=2, layout={"expert_parallel": 2, "data_parallel": 2},
                         direct=dict(tp=1, ep=2), guess_s=40),
    # the first measurement: the package's trained reference model from its shipped Hugging Face folder
    # (source: builtin), as a new user runs it; the direct script imports it with import_mcore_gpt_from_hf
    # (run it with --windows 32 --seq 1024, the model's context)
    "reference-llama-tp1": dict(model="reference-llama", gpus=1, layout={}, direct=dict(tp=1, ep=1), guess_s=40,
                                source="builtin"),
}
KINDS = {
    "nvidia-h200": "qwen3-8b-tp1:fp8:3,qwen3-8b-tp1:nvfp4:1,llama3.1-8b-tp1:fp8:1",
    "nvidia-h200-x2": "qwen3-8b-tp1:fp8:3,qwen3-8b-tp1:nvfp4:1,llama3.1-8b-tp1:fp8:1,qwen3-8b-tp2:fp8:1,"
                      "qwen3-30b-a3b-ep2:fp8:1",
}
ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONWARNINGS": "ignore"}


def log(msg: str, out: Path) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(out / "scale_raw.log", "a") as f:
        f.write(line + "\n")


def prewarm(out: Path) -> float:
    """ModelOpt's three CUDA extensions, built in parallel before anything is timed."""
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", (f"from modelopt.torch.quantization import extensions as e; "
                                f"print('{name}', e.{name}(raise_if_failed=True) is not None)")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV})
             for name in ("get_cuda_ext_fp8", "get_cuda_ext", "get_cuda_ext_mx")]
    for p in procs:
        text, _ = p.communicate()
        log("prewarm: " + text.strip().splitlines()[-1] if text.strip() else "prewarm: (no output)", out)
    return time.perf_counter() - t


def tensor_digests(folder: Path) -> dict[str, object]:
    """sha256 of every tensor's bytes (with dtype and shape) and the JSON files, for a bitwise comparison."""
    from safetensors import safe_open

    def one(f: Path) -> dict[str, str]:
        out = {}
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is no mapping: it has keys() but no iteration
                t = st.get_tensor(k)
                raw = t.contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes()
                out[k] = f"{t.dtype}:{tuple(t.shape)}:{hashlib.sha256(raw).hexdigest()}"
        return out

    files = sorted(folder.glob("*.safetensors"))
    tensors: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        for part in pool.map(one, files):
            tensors.update(part)
    jsons = {}
    for name in ("config.json", "hf_quant_config.json"):
        p = folder / name
        jsons[name] = json.loads(p.read_text()) if p.is_file() else None
        if isinstance(jsons[name], dict):
            jsons[name].pop("_name_or_path", None)  # where the source folder was, not what was exported
    return {"tensors": tensors, "json": jsons, "bytes": sum(f.stat().st_size for f in files)}


def compare(a: dict, b: dict) -> dict[str, object]:
    ta, tb = a["tensors"], b["tensors"]
    differ = sorted(k for k in set(ta) | set(tb) if ta.get(k) != tb.get(k))
    return {"tensors": len(ta), "tensors_differing": len(differ), "first_differing": differ[:5],
            "json_equal": a["json"] == b["json"], "bitwise_equal": not differ and bool(ta) and a["json"] == b["json"]}


def run_processes(jobs: list[tuple[str, list[str], dict[str, str]]], out: Path, timeout: float) -> dict:
    """Start every (label, argv, env) at once, each timed from its start to its exit: {label: (wall, rc)}."""
    procs = {}
    for label, cmd, env in jobs:
        log(f"{label}: CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')} {' '.join(cmd)}", out)
    if DRY_RUN:
        return {label: (0.0, 0) for label, _cmd, _env in jobs}
    for label, cmd, env in jobs:
        f = open(out / f"scale_{label.replace(' ', '_')}.tmp", "w")  # noqa: SIM115 - closed after the process ends
        # own session: a time-out ends torchrun's workers too, not only the launcher
        procs[label] = (subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True),
                        time.perf_counter(), f)
        LIVE.append(procs[label][0])
    done: dict[str, tuple[float, int]] = {}
    start = time.perf_counter()
    while len(done) < len(procs):  # poll, so that each process's wall ends at its own exit
        for label, (p, t, f) in procs.items():
            if label in done:
                continue
            rc = p.poll()
            if rc is None and time.perf_counter() - start > timeout:
                kill_group(p)
                p.wait()
                rc = 124
            if rc is not None:
                done[label] = (time.perf_counter() - t, rc)
                LIVE.remove(p)
        time.sleep(0.05)
    for label, (p, t, f) in procs.items():
        f.close()
        text = Path(f.name).read_text(errors="replace")
        Path(f.name).unlink()
        with open(out / "scale_raw.log", "a") as raw:
            raw.write(f"----- {label} output\n{text}")
        log(f"{label}: rc={done[label][1]} wall={done[label][0]:.1f}s", out)
    return done


LIVE: list[subprocess.Popen] = []
"""Processes started and not yet reaped (ended with their groups when the driver is stopped)."""


def kill_group(p: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_all(signum, _frame) -> None:
    """SIGTERM (the part's ``timeout``): no orphaned torchrun workers left holding the GPUs."""
    for p in LIVE:
        kill_group(p)
    raise SystemExit(128 + signum)


def run_process(cmd: list[str], env: dict[str, str], out: Path, label: str, timeout: float) -> tuple[float, int]:
    return run_processes([(label, cmd, env)], out, timeout)[label]


def launcher(gpus: int) -> list[str]:
    return [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                               f"--nproc-per-node={gpus}"]


DRY_RUN = False
"""--dry-run: everything but the processes (recipes written and checked, commands logged): a CPU test."""


def planned(arch, layout, stage: str, fmt: str, batch: int, seq: int, calibrated_on=None) -> int:
    """The memory plan's per-rank bytes; ``layout`` (and ``calibrated_on``, the quantize stage's layout, for
    the export): a ParallelLayout or a dict of its fields. The export runs in the process that calibrated; it
    still holds the calibration's attention score buffer unless the hand-over rebuilt the parallel groups
    (the backend does that when the layouts differ)."""
    import attrs

    from modelopt_typed_recipes.plan import memory
    from modelopt_typed_recipes.plan.gpus import get_gpu
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    def as_layout(value):
        return value if isinstance(value, ParallelLayout) else ParallelLayout(
            **{k: v for k, v in value.items() if k in attrs.fields_dict(ParallelLayout)})

    lay = as_layout(layout)
    same = calibrated_on is not None and as_layout(calibrated_on) == lay
    return memory.estimate(arch, lay, get_gpu("h200"), stage=stage, batch=batch, seq_length=seq,
                           quant_format=fmt, calibrated_in_process=same).per_rank_bytes


def tail_s(path: Path, end: float) -> float | None:
    """Seconds from when a process last wrote ``path`` (its result) to its exit at ``end`` (epoch)."""
    return round(end - path.stat().st_mtime, 3) if path.is_file() else None


def run_case(name: str, fmt: str, reps: int, a: argparse.Namespace, out: Path, deadline: float,
             who_runs: tuple[str, ...] = ("ours", "direct")) -> dict:
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.runtime.megatron.stages import write_hf_reference
    from modelopt_typed_recipes.spec.recipe import Recipe
    from modelopt_typed_recipes.spec.serde import to_yaml

    case = CASES[name]
    arch = get_arch(case["model"])
    gpus = case["gpus"]
    work = Path(a.work) / f"{name}-{fmt}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    builtin = case.get("source") == "builtin"  # the shipped trained weights, not random ones
    recipe = Recipe.from_dict({
        "name": f"scale-{name}-{fmt}", "model": case["model"],
        "source": {"type": "builtin"} if builtin else {"type": "random", "seed": 0},
        "stages": [{"technique": "quantize", "format": fmt}, {"technique": "export"}],
        "calibration": {**({"files": [str(Path(a.text).resolve())]} if a.text else {"dataset": "reference-train"}),
                        "num_samples": a.windows, "seq_length": a.seq, "batch_size": a.batch},
        "layout": case["layout"] or None, "output_dir": str(work / "ours"), "backend": "megatron", "device": "cuda",
        "deterministic": a.deterministic,
        **({"cpu_threads": a.cpu_threads} if a.cpu_threads is not None else {}),
    })
    recipe_file = work / "recipe.yaml"
    recipe_file.write_text(to_yaml(recipe))
    # the direct script's Hugging Face folder (a user has the model's own): config from the architecture,
    # the reference tokenizer; made once, not timed
    if builtin:  # the shipped folder: weights, config and tokenizer
        from modelopt_typed_recipes.catalog.models.reference import builtin_weights_dir

        ref = builtin_weights_dir(case["model"])
    else:
        ref = work / "hf-reference"
        write_hf_reference(ref, arch, data.random_init_tokenizer(arch.vocab.size))
    report = check_recipe(recipe, env=Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True,
                                                  gpu_count=gpus))
    layouts = [s.layout for s in report.stages]  # ParallelLayout of each stage
    devices = a.devices.split(",")
    if len(devices) < gpus:
        raise SystemExit(f"{name} needs {gpus} GPUs, --devices names {a.devices}")
    env = {**os.environ, **ENV, "CUDA_VISIBLE_DEVICES": ",".join(devices[:gpus])}
    d = case["direct"]
    direct_cmd = [*launcher(gpus), str(ROOT / "benchmarks" / "scale_direct.py"), "--model", case["model"],
                  "--format", fmt, "--tp", str(d["tp"]), "--ep", str(d["ep"]), "--hf-reference", str(ref),
                  *(["--hf-checkpoint"] if builtin else []),
                  "--text", str(Path(a.text).resolve()) if a.text else str(data.BUILTIN_FILES["reference-train"]),
                  "--windows", str(a.windows),
                  "--seq", str(a.seq), "--batch", str(a.batch), "--export-dir", str(work / "direct-export"),
                  "--result", str(work / "direct.json"), *(["--deterministic"] if a.deterministic else []),
                  *(["--cpu-threads", str(a.cpu_threads)] if a.cpu_threads is not None else [])]
    ours_cmd = [*launcher(gpus), "-m", "modelopt_typed_recipes", "run", str(recipe_file), "--json", "--no-progress"]
    row: dict = {"case": name, "model": case["model"], "gpus": gpus, "format": fmt,
                 "layout": f"TP{layouts[0].tensor_parallel} PP{layouts[0].pipeline_parallel} "
                           f"EP{layouts[0].expert_parallel}",
                 "export_layout": f"TP1 PP{layouts[1].pipeline_parallel}", "windows_asked": a.windows,
                 "text": a.text or "reference-train", "runs": list(who_runs), "deterministic": a.deterministic,
                 "cpu_threads": a.cpu_threads,
                 "seq_length": a.seq, "batch": a.batch, "reps": [], "planned_bytes_per_rank": {
                     "quantize": planned(arch, layouts[0], "quantize", fmt, a.batch, a.seq),
                     "export": planned(arch, layouts[1], "export", fmt, a.batch, a.seq, layouts[0])}}
    concurrent = a.concurrent and gpus == 1 and len(who_runs) == 2
    row["concurrent"] = concurrent
    first: dict[str, dict] = {}  # each program's first export: is a repetition bitwise the same?
    first_guess = case["guess_s"] * (0.25 + 0.75 * a.windows / 512) if a.first_guess_s is None else a.first_guess_s
    for rep in range(a.first_rep, a.first_rep + reps):
        order = ("ours", "direct") if rep % 2 == 0 else ("direct", "ours")
        order = tuple(w for w in order if w in who_runs)
        r: dict = {"rep": rep, "order": list(order)}
        digests = {}
        if concurrent:  # both at once, one GPU each; which GPU alternates with the repetition
            left = deadline - time.time()
            guess = max([max(x.get("ours_wall_s", 0), x.get("direct_wall_s", 0)) for x in row["reps"]]
                        or [first_guess]) * 1.2
            if left < guess:
                log(f"{name} {fmt} rep {rep}: skipped, {left:.0f}s left, needs about {guess:.0f}s", out)
                break
            r["gpu"] = {who: int(devices[i]) for i, who in enumerate(order)}
            jobs = [(f"{name} {fmt} rep{rep} {who}", ours_cmd if who == "ours" else direct_cmd,
                     {**env, "CUDA_VISIBLE_DEVICES": str(r["gpu"][who])}) for who in order]
            walls = run_processes(jobs, out, timeout=left)
            runs = [(who, walls[f"{name} {fmt} rep{rep} {who}"]) for who in order]
        else:
            runs = [(who, None) for who in order]
        for who, measured in runs:
            if measured is None:
                left = deadline - time.time()
                guess = max([x.get(f"{who}_wall_s", 0) for x in row["reps"]] or [first_guess]) * 1.2
                if left < guess:
                    log(f"{name} {fmt} rep {rep} {who}: skipped, {left:.0f}s left, needs about {guess:.0f}s", out)
                    r["skipped"] = True
                    break
                measured = run_process(ours_cmd if who == "ours" else direct_cmd, env, out,
                                       f"{name} {fmt} rep{rep} {who}", timeout=left)
            wall, rc = measured
            r[f"{who}_wall_s"], r[f"{who}_rc"] = round(wall, 2), rc
            ended = time.time()  # within the 50 ms poll of the exit (concurrent: of the later exit)
            if who == "ours":
                manifest = work / "ours" / "manifest.json"
                r["ours_tail_s"] = tail_s(manifest, ended)  # from the manifest written to the process gone
                if manifest.is_file():
                    res = json.loads(manifest.read_text())["result"]
                    r["ours_stages"] = [{k: s[k] for k in ("name", "seconds", "peak_memory_bytes")} |
                                        {"details": s["details"]} for s in res["stages"]]
                    r["ours_timings"] = res["timings"]
                    r["ours_in_process_s"] = res["seconds"]
                    r["ours_determinism"] = res.get("determinism")
                    r["ours_cpu_threads"] = res.get("cpu_threads")
                    r["calibration_hash"] = res["calibration_hash"]
                    exported = work / "ours" / res["stages"][-1]["outputs"][0]
                    if "direct" in who_runs or a.keep_digests:
                        digests[who] = tensor_digests(exported)
                    else:  # nothing to compare with: its size only
                        r["export_bytes"] = sum(f.stat().st_size for f in exported.glob("*.safetensors"))
                shutil.rmtree(work / "ours", ignore_errors=True)
            else:
                r["direct_tail_s"] = tail_s(work / "direct.json", ended)
                if (work / "direct.json").is_file():
                    r["direct"] = json.loads((work / "direct.json").read_text())
                    digests[who] = tensor_digests(work / "direct-export")
                shutil.rmtree(work / "direct-export", ignore_errors=True)
        if a.keep_digests:  # for a comparison with a later call (--compare-digests)
            (out / "digests").mkdir(exist_ok=True)
            for who, d in digests.items():
                (out / "digests" / f"{name}-{fmt}-rep{rep}-{who}.json").write_text(json.dumps(d))
        if len(digests) == 2:
            r.update(compare(digests["ours"], digests["direct"]))
        for who, d in digests.items():
            if who in first:
                r[f"{who}_same_as_rep0"] = compare(d, first[who])["bitwise_equal"]
            else:
                first[who] = d
        if digests:
            r["export_bytes"] = digests.get("ours", next(iter(digests.values())))["bytes"]
        row["reps"].append(r)
        summarize(row, arch)
        yield row
        if r.get("skipped"):
            break
    if not DRY_RUN:  # a dry run leaves the recipe and the reference folder to look at
        shutil.rmtree(work, ignore_errors=True)


def summarize(row: dict, arch) -> None:
    both = "direct" in row.get("runs", ("ours", "direct")) and any("direct_wall_s" in r for r in row["reps"])
    done = [r for r in row["reps"] if "ours_wall_s" in r and r.get("ours_rc") == 0
            and (not both or ("direct_wall_s" in r and r.get("direct_rc") == 0))]
    if not done:
        return
    ours = statistics.median(r["ours_wall_s"] for r in done)
    direct = statistics.median(r["direct_wall_s"] for r in done) if both else None
    last = done[-1]
    stages = {s["name"].split("-")[0]: s for s in last.get("ours_stages", [])}
    q, e = stages.get("quantize"), stages.get("export")
    windows = (last.get("direct") or {}).get("windows") or row["windows_asked"]
    tokens = windows * row["seq_length"]
    flops = arch.flops_per_token(context=row["seq_length"]) * tokens
    row.update(
        wall_s=round(ours, 2), direct_wall_s=direct and round(direct, 2), ratio=direct and round(ours / direct, 4),
        reps_done=len(done), bitwise_equal=all(r.get("bitwise_equal") for r in done) if both else None,
        peak_bytes_per_rank={"quantize": q and q["peak_memory_bytes"], "export": e and e["peak_memory_bytes"]},
        direct_peak_bytes_per_rank=last.get("direct", {}).get("peaks"),
        stage_seconds={k: round(v["seconds"], 2) for k, v in stages.items()},
        direct_stage_seconds={k: round(v, 2) for k, v in last.get("direct", {}).get("timings", {}).items()},
        calib_tokens_per_s=q and round(tokens / q["seconds"]),
        tflops=q and round(flops / q["seconds"] / 1e12, 1),
        export_gb_per_s=e and last.get("export_bytes") and round(last["export_bytes"] / e["seconds"] / 1e9, 3),
        export_bytes=last.get("export_bytes"),
    )
    repeats = {who: [r[f"{who}_same_as_rep0"] for r in done if f"{who}_same_as_rep0" in r] for who in ("ours", "direct")}
    row["repeats_equal"] = {who: all(same) for who, same in repeats.items() if same}  # each vs its own rep 0
    row["planned_vs_peak"] = {k: round(row["planned_bytes_per_rank"][k] / v - 1, 4)
                              for k, v in row["peak_bytes_per_rank"].items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=sorted(KINDS), default="nvidia-h200-x2")
    p.add_argument("--cases", help="NAME:FORMAT:REPS,... (default: the kind's set)")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--first-rep", type=int, default=0, help="number the repetitions from here (an odd number starts "
                   "with the direct script): a later call continues a case's alternation")
    p.add_argument("--budget-s", type=float, default=540, help="start no run that would end after this")
    p.add_argument("--first-guess-s", type=float, default=None,
                   help="assumed wall of a case's first run (default: the case's guess_s, scaled by --windows)")
    p.add_argument("--text", help="calibration text for both (.jsonl, one {\"text\": ...} per line; default: the "
                   "built-in corpus); with --make-text it is written first (scale_text.py)")
    p.add_argument("--make-text", action="store_true", help="write --text with scale_text.py (not timed)")
    p.add_argument("--dry-run", action="store_true", help="no processes: recipes written and checked, commands "
                   "logged (a CPU test of the driver)")
    p.add_argument("--prewarm", action="store_true", help="build ModelOpt's CUDA extensions first")
    p.add_argument("--work", default="/tmp/scale_work")
    p.add_argument("--concurrent", action="store_true",
                   help="1-GPU cases: ours and the direct script at once on two GPUs (alternating GPUs)")
    p.add_argument("--devices", default="0,1", help="the GPUs this driver may use (CUDA_VISIBLE_DEVICES numbers): "
                   "two drivers can then run one 1-GPU case each at once")
    p.add_argument("--json-name", default="scale_gpu.json", help="file name of the results under $OUT")
    p.add_argument("--stop-on-failure", action="store_true", help="exit 1 at the first failed or unequal run")
    p.add_argument("--keep-digests", action="store_true", help="write each export's tensor hashes under "
                   "$OUT/digests/ (a case's two programs can then run in different calls)")
    p.add_argument("--deterministic", action="store_true", help="both programs bitwise reproducible (the recipe's "
                   "deterministic: true, the direct script's --deterministic); each repetition compared with the first")
    p.add_argument("--cpu-threads", type=int, default=None, help="CPU threads of each rank of both programs (the "
                   "recipe's cpu_threads, the direct script's --cpu-threads); default: ours auto, direct PyTorch's "
                   "own (torchrun's OMP_NUM_THREADS=1 with several processes)")
    p.add_argument("--compare-digests", nargs=2, type=Path, metavar=("OURS", "DIRECT"),
                   help="compare two files written by --keep-digests and print the result (no GPU)")
    p.add_argument("--collect", nargs="+", help="merge raw result files (PATH or PATH::MODE) into "
                   "benchmarks/scale_gpu.json (no GPU)")
    p.add_argument("--compared", nargs="*", type=Path, default=[], help="with --collect: saved --compare-digests "
                   "results (with case, format, rep) of cases whose two programs ran in separate calls")
    a = p.parse_args()
    if a.collect:
        collect(a.collect, ROOT / "benchmarks" / "scale_gpu.json", a.compared)
        return
    if a.compare_digests:
        print(json.dumps(compare(*(json.loads(f.read_text()) for f in a.compare_digests))))
        return
    deadline = time.time() + a.budget_s
    out = Path(os.environ.get("OUT", "/tmp/scale_out"))
    out.mkdir(parents=True, exist_ok=True)
    global DRY_RUN
    DRY_RUN = a.dry_run
    import signal

    signal.signal(signal.SIGTERM, stop_all)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip().replace("\n", "; ")
    except OSError:
        smi = "no nvidia-smi"
    log(f"GPUs: {smi}; python {sys.version.split()[0]}", out)
    if a.make_text:
        if not a.text:
            raise SystemExit("--make-text needs --text PATH")
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from scale_text import build

        info = build(Path(a.text), windows=a.windows, seq=a.seq, packages=["transformers", "torch", "numpy"])
        (out / "scale_text.json").write_text(json.dumps(info, indent=1))
        log(f"calibration text: {json.dumps(info)}", out)
    if a.prewarm:
        log(f"prewarm took {prewarm(out):.1f}s", out)
    rows: list[dict] = []
    path = out / a.json_name
    for spec in (a.cases or KINDS[a.kind]).split(","):
        name, fmt, reps, *only = spec.split(":")  # NAME:FORMAT:REPS[:ours|:direct]
        if time.time() > deadline - 30:
            log(f"{spec}: not started (budget)", out)
            continue
        for row in run_case(name, fmt, int(reps), a, out, deadline, tuple(only) or ("ours", "direct")):
            rows = [r for r in rows if not (r["case"] == row["case"] and r["format"] == row["format"])] + [row]
            path.write_text(json.dumps(rows, indent=1, default=str))
            log(f"{name} {fmt}: " + json.dumps({k: row.get(k) for k in ("wall_s", "direct_wall_s", "ratio",
                                                                         "bitwise_equal", "reps_done")}), out)
            last = row["reps"][-1]
            failed = last.get("ours_rc") or last.get("direct_rc") or last.get("bitwise_equal") is False
            if a.stop_on_failure and failed:
                log(f"{spec}: failed ({ {k: last.get(k) for k in ('ours_rc', 'direct_rc', 'bitwise_equal')} })", out)
                raise SystemExit(1)



def merge_split_runs(rows: list[tuple[str, dict]], compared: list[dict]) -> list[tuple[str, dict]]:
    """One case whose two programs ran in separate calls (``:ours`` and ``:direct``, ``--keep-digests``) made one
    row again: repetitions joined by number, the tensor comparison of ``--compare-digests`` (saved with the case,
    format and repetition it belongs to) put in, the medians and ratio computed as for a case run in one call."""
    from modelopt_typed_recipes.catalog import get_arch

    def key(row: dict) -> tuple:
        return row["case"], row["format"], row["windows_asked"], row["seq_length"], row["batch"]

    halves: dict[tuple, dict[str, tuple[str, dict]]] = {}
    for src, row in rows:
        if row.get("runs") in (["ours"], ["direct"]):
            halves.setdefault(key(row), {})[row["runs"][0]] = (src, row)
    out = []
    for src, row in rows:
        pair = halves.get(key(row), {})
        if row.get("runs") not in (["ours"], ["direct"]) or len(pair) < 2:
            out.append((src, row))
            continue
        if row["runs"] == ["direct"]:
            continue  # joined into its ours row below
        (osrc, ours), (dsrc, direct) = pair["ours"], pair["direct"]
        joined = {**ours, "runs": ["ours", "direct"], "reps": []}
        for r_o, r_d in zip(ours["reps"], direct["reps"]):
            r = {**r_d, **r_o, "order": ["ours (own driver)", "direct (own driver)"]}
            for c in compared:  # a saved comparison names its case, format, repetition, windows and mode
                if (c["case"], c["format"], c.get("rep", 0), c.get("windows"), bool(c.get("deterministic"))) == (
                        ours["case"], ours["format"], r["rep"], ours["windows_asked"], bool(ours.get("deterministic"))):
                    r.update({k: c[k] for k in ("tensors", "tensors_differing", "json_equal")},
                             bitwise_equal=c["tensors_differing"] == 0 and c["json_equal"] and c["tensors"] > 0)
            joined["reps"].append(r)
        summarize(joined, get_arch(joined["model"]))
        out.append((f"{osrc} + {dsrc}", joined))
    return out


def join_repetitions(rows: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """One case whose alternating repetitions ran in different calls (``--first-rep``) made one row again: rows of
    both programs with the same case, format, windows, sequence, batch, ``deterministic`` and CPU threads, whose
    repetition numbers do not overlap, joined and their medians recomputed. Rows whose numbers overlap (the same
    repetition run twice, e.g. in two sessions) stay apart."""
    from modelopt_typed_recipes.catalog import get_arch

    def key(row: dict) -> tuple:
        return (row["case"], row["format"], row["windows_asked"], row["seq_length"], row["batch"],
                bool(row.get("deterministic")), row.get("cpu_threads"))

    groups: dict[tuple, list[int]] = {}
    for i, (_, row) in enumerate(rows):
        if row.get("runs", ["ours", "direct"]) == ["ours", "direct"]:
            groups.setdefault(key(row), []).append(i)
    joined: dict[int, tuple[str, dict]] = {}
    dropped: set[int] = set()
    for members in groups.values():
        numbers = [r["rep"] for i in members for r in rows[i][1]["reps"]]
        if len(members) < 2 or len(numbers) != len(set(numbers)):
            continue
        first = rows[members[0]][1]
        row = {**first, "reps": sorted((r for i in members for r in rows[i][1]["reps"]), key=lambda r: r["rep"])}
        summarize(row, get_arch(row["model"]))
        joined[members[0]] = (" + ".join(rows[i][0] for i in members), row)
        dropped.update(members[1:])
    return [joined.get(i, pair) for i, pair in enumerate(rows) if i not in dropped]


def collect(raw: list[str | Path], out: Path, compared: list[Path] = ()) -> list[dict]:
    """``benchmarks/scale_gpu.json`` from the device's raw files: one object per case and run mode, with the
    memory plan of the current code next to the one the run was compared with. ``PATH::MODE`` says how a file's
    runs were made where the file cannot (e.g. two drivers at once, one case on each GPU)."""
    from modelopt_typed_recipes.catalog import get_arch

    loaded: list[tuple[str, dict]] = []
    modes: dict[str, str] = {}
    for spec in raw:
        path, _, mode = str(spec).partition("::")
        f = Path(path)
        src = str(f.resolve().relative_to(ROOT)) if f.resolve().is_relative_to(ROOT) else f.name
        if mode:
            modes[src] = mode
        loaded += [(src, row) for row in json.loads(f.read_text())]
    pairs = join_repetitions(merge_split_runs(loaded, [json.loads(Path(c).read_text()) for c in compared]))
    rows = []
    for src, row in pairs:
        arch = get_arch(row["model"])
        if row.get("wall_s") is None:
            summarize(row, arch)  # e.g. a case whose direct script was skipped for time: our side still counts
        export_layout = {"pipeline_parallel": int(row["export_layout"].split("PP")[1])}
        quant_layout = dict(zip(("tensor_parallel", "pipeline_parallel", "expert_parallel"),
                                (int(x[2:]) for x in row["layout"].split())))
        if quant_layout["expert_parallel"] > 1:
            quant_layout["data_parallel"] = row["gpus"]
        now = {"quantize": planned(arch, quant_layout, "quantize", row["format"], row["batch"], row["seq_length"]),
               "export": planned(arch, export_layout, "export", row["format"], row["batch"], row["seq_length"],
                                 quant_layout)}
        done = [r for r in row["reps"] if "bitwise_equal" in r]
        rows.append({
            "model": row["model"], "gpus": row["gpus"], "layout": row["layout"],
            "export_layout": row["export_layout"], "format": row["format"],
            "mode": "concurrent pairs" if row.get("concurrent") else next((modes[p] for p in src.split(" + ") if p in modes), "sequential"),
            "deterministic": bool(row.get("deterministic")), "cpu_threads_asked": row.get("cpu_threads"),
            "reps": row.get("reps_done"), "wall_s": row.get("wall_s"), "direct_wall_s": row.get("direct_wall_s"),
            "ratio": row.get("ratio"),
            "bitwise_equal": row.get("bitwise_equal") if done and all(r["tensors"] for r in done) else None,
            "tensors_compared": done[-1]["tensors"] if done else 0,
            "peak_bytes_per_rank": row.get("peak_bytes_per_rank"),
            "direct_peak_bytes_per_rank": row.get("direct_peak_bytes_per_rank"),
            "planned_bytes_per_rank": now, "planned_bytes_per_rank_at_run": row["planned_bytes_per_rank"],
            "planned_vs_peak": {k: round(now[k] / v - 1, 4) for k, v in (row.get("peak_bytes_per_rank") or {}).items()
                                if v},
            "calib_tokens_per_s": row.get("calib_tokens_per_s"), "tflops": row.get("tflops"),
            "export_gb_per_s": row.get("export_gb_per_s"), "export_bytes": row.get("export_bytes"),
            "stage_seconds": row.get("stage_seconds"), "direct_stage_seconds": row.get("direct_stage_seconds"),
            "windows": row["windows_asked"], "seq_length": row["seq_length"], "batch": row["batch"],
            "per_rep": [{k: r.get(k) for k in ("order", "gpu", "ours_wall_s", "direct_wall_s", "ours_in_process_s",
                                              "ours_timings", "ours_tail_s", "direct_tail_s", "bitwise_equal",
                                          "tensors", "tensors_differing", "ours_same_as_rep0",
                                          "direct_same_as_rep0")} | {
                "ours_stage_seconds": {s["name"]: s["seconds"] for s in r.get("ours_stages", [])},
            "ours_handover_s": next((s["details"]["handover"]["seconds"] for s in r.get("ours_stages", [])
                                     if s.get("details", {}).get("handover")), None),
                "direct_timings": r.get("direct", {}).get("timings"),
                "ours_cpu_threads": (r.get("ours_cpu_threads") or {}).get("threads"),
                "direct_cpu_threads": (r.get("direct", {}).get("cpu_threads") or {}).get("threads")}
                for r in row["reps"]],
            "raw": src,
        })
    out.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
