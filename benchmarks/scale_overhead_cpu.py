"""What our process spends beyond the hand-written script, measured on the CPU, before and after (issue 9).

Two A/B measurements, alternating the order, in fresh processes where it matters:

1. ``exit``: a whole ``run RECIPE --json`` (the reference FP8 recipe, Hugging Face backend, no evaluation), and
   the seconds from the run's manifest written to the process gone: before = ``cli.main`` with the
   interpreter's full exit, after = ``cli.command_line`` (``gc.freeze`` once the output is out).
2. ``tokenise``: the ids of 512 windows of 2,048 tokens from a ``.jsonl`` (``scale_text.py``), one document
   per call (before) against ``runtime.data._token_ids``'s batches (after); the ids are checked equal.

    python benchmarks/scale_overhead_cpu.py --reps 4 --text /tmp/scale_calib.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE = """name: reference-fp8-no-eval
model: reference-llama
source: {type: builtin}
stages: [{technique: quantize, format: fp8}, {technique: export, format: hf}]
calibration: {dataset: reference-train, num_samples: 32, seq_length: 256, batch_size: 8}
output_dir: out
backend: hf
device: cpu
"""
EXITS = {"before": "from modelopt_typed_recipes.cli import main; raise SystemExit(main())",
         "after": "from modelopt_typed_recipes.cli import command_line; command_line()"}


def exit_ab(reps: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="exit_ab_"))
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = work / "out"
    rows: dict[str, list[dict]] = {m: [] for m in EXITS}
    for i in range(reps):
        for mode in ("before", "after") if i % 2 == 0 else ("after", "before"):
            shutil.rmtree(out, ignore_errors=True)
            t = time.time()
            p = subprocess.run([sys.executable, "-c", EXITS[mode], "run", str(recipe), "--json", "--no-progress",
                                "--output-dir", str(out)], capture_output=True, text=True, check=True, cwd=ROOT)
            end = time.time()
            res = json.loads(p.stdout)
            rows[mode].append({"wall_s": round(end - t, 2), "in_run_s": round(res["seconds"], 2),
                               "manifest_to_exit_s": round(end - (out / "manifest.json").stat().st_mtime, 2)})
            print("exit", mode, rows[mode][-1], flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return {m: {"median_wall_s": statistics.median(r["wall_s"] for r in v),
                "median_manifest_to_exit_s": statistics.median(r["manifest_to_exit_s"] for r in v), "runs": v}
            for m, v in rows.items()}


def tokenise_ab(text: str, reps: int) -> dict:
    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.spec.recipe import TextData

    tok = data.load_tokenizer(None)
    docs = data.read_documents(TextData(files=(text,), num_samples=512, seq_length=2048))
    need = 512 * 2048

    def one_at_a_time(docs: list[str], tokenizer, need: int) -> list[int]:
        ids: list[int] = []
        for d in docs:
            ids += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            if len(ids) >= need:
                break
        return ids

    assert one_at_a_time(docs, tok, need) == data._token_ids(docs, tok, need)
    rows: dict[str, list[float]] = {"before": [], "after": []}
    fns = {"before": one_at_a_time, "after": data._token_ids}
    for i in range(reps):
        for mode in ("before", "after") if i % 2 == 0 else ("after", "before"):
            t = time.perf_counter()
            fns[mode](docs, tok, need)
            rows[mode].append(round(time.perf_counter() - t, 2))
    print("tokenise", rows, flush=True)
    return {m: {"median_s": statistics.median(v), "runs": v} for m, v in rows.items()} | {
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"), "cores": os.cpu_count()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--text", help="a .jsonl of 512 windows (scale_text.py); without it the tokenising A/B is skipped")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    a = p.parse_args()
    res = {"exit": exit_ab(a.reps)}
    if a.text:
        res["tokenise"] = tokenise_ab(a.text, a.reps)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
