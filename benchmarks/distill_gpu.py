"""Distillation on the Megatron-Core backend, on one GPU, with reference-llama (the 6.8 M model shipped
with the package) and held-out perplexity on reference-heldout (32 windows x 256 tokens, batch 8: the
windows of benchmarks/megatron_gpu.py's accuracy part).

Parts (``--parts``, comma-separated; default ``qad,depth,minitron,speed``):
  qad       NVFP4 PTQ then quantization-aware distillation (teacher: the bf16 model kept before the quantize
            stage), then export (unified HF NVFP4), each as one recipe through ``runtime.megatron.backend.run``;
            one run per learning rate in ``DISTILL_QAD_LRS``. The export is re-loaded from disk
            (``runtime.hf.export.load_export``: the NVFP4 weights decoded, inputs quantized per 16 values) and
            its perplexity compared with the in-memory model's.
  depth     (no Transformer Engine needed) depth 6 -> 4 by dropping decoder layers 3 and 4 (1-based; the two
            Minitron dropped in megatron_gpu.md) on the local spec, then distillation from the full model
            with ``runtime.megatron.distill``: a stand-in to tune steps and learning rate for ``minitron``.
  minitron  (needs Transformer Engine: skipped with a note without it) Minitron depth pruning 6 -> 4
            (``Prune(num_layers=4)``), distillation from the unpruned model, export; one recipe.
  speed     tokens/s of the library's distillation loop (``runtime.megatron.distill``: the function the
            distill stage runs) against a plain ModelOpt loop written here by hand (``mtd.convert`` +
            ``adjust_distillation_model_for_mcore`` + ``compute_kd_loss`` + ``torch.optim.AdamW`` over fp32
            master copies), same NVFP4 student, teacher, windows and batch; repetitions alternate, medians.

Knobs (environment): DISTILL_QAD_STEPS, DISTILL_QAD_LRS, DISTILL_DEPTH_STEPS, DISTILL_DEPTH_LRS,
DISTILL_MINITRON_STEPS, DISTILL_MINITRON_LR, DISTILL_SPEED_STEPS, DISTILL_SPEED_REPS, DISTILL_MBS.
Writes ``$OUT/distill/distill_gpu_<parts>.json`` (OUT defaults to benchmarks/raw/session5) and prints one JSON line
per case. Run: ``python3 benchmarks/distill_gpu.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT", str(ROOT / "benchmarks" / "raw" / "session5"))) / "distill"
WORK = Path(os.environ.get("MTR_WORK", "/tmp/mtr_work")) / "distill"
SEQ = 256
MBS = int(os.environ.get("DISTILL_MBS", "16"))
DEVICE = os.environ.get("DISTILL_DEVICE", "cuda")
"""``cpu``: a smoke run of this script's code paths on a CPU machine (FP8 instead of NVFP4, no export: the
CPU machine's megatron-core cannot export), driven with the tests' CPU shim; the figures mean nothing."""
QAD_FORMAT = "nvfp4" if DEVICE == "cuda" else "fp8"


def env_list(name: str, default: str) -> list[float]:
    return [float(x) for x in os.environ.get(name, default).split(",") if x]


def log(*a: object) -> None:
    print(*a, flush=True)


def has_te() -> bool:
    from modelopt_typed_recipes.runtime.megatron.build import has_transformer_engine

    return has_transformer_engine()


# --------------------------------------------------------------------------- recipes
def evaluation():
    from modelopt_typed_recipes.spec.recipe import TextData

    return TextData(dataset="reference-heldout", num_samples=32, seq_length=SEQ, batch_size=8)


def distill_stage(steps: int, lr: float, *, warmup: int | None = None):
    from modelopt_typed_recipes.spec.techniques import Distill
    from modelopt_typed_recipes.spec.text import TrainingText

    return Distill(teacher="before_compression", data=TrainingText(dataset="reference-train"), seq_length=SEQ,
                   micro_batch_size=MBS, steps=steps, learning_rate=lr, lr_schedule="cosine",
                   warmup_steps=max(1, steps // 20) if warmup is None else warmup, min_learning_rate=lr / 10,
                   clip_grad=1.0)


def recipe(tag: str, stages: tuple, out: Path):
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR
    from modelopt_typed_recipes.spec.recipe import HFCheckpoint, Recipe, TextData

    return Recipe(name=tag, model=get_arch("reference-llama"), source=HFCheckpoint(path=str(REFERENCE_DIR)),
                  stages=stages, calibration=TextData(dataset="reference-train", num_samples=64, seq_length=SEQ,
                                                      batch_size=8),
                  evaluation=evaluation(), output_dir=str(out), backend="megatron", device="cuda", dtype="bf16")


def run_recipe(r):
    """The backend run with the caller's job done too: the staging folder renamed to the output folder."""
    import attrs

    from modelopt_typed_recipes.plan.check import check_recipe
    from modelopt_typed_recipes.runtime.megatron import backend

    out = Path(r.output_dir)
    staging = out.with_name(out.name + ".staging")
    plan = check_recipe(r, backend="megatron")
    plan.raise_first()
    plan = attrs.evolve(plan, output_dir=out, staging_dir=staging, progress=False, device=DEVICE)
    for d in (staging, out):
        if d.exists():
            shutil.rmtree(d)
    result = backend.run(r, plan)
    os.replace(staging, out)
    return result


def export_perplexity(export_dir: Path) -> tuple[float, dict]:
    """Held-out perplexity of the export as written on disk (decoded by ``runtime.hf.export.load_export``)."""
    import torch

    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.runtime.hf.evaluate import perplexity
    from modelopt_typed_recipes.runtime.hf.export import load_export

    ev = evaluation()
    batches = data.batches(data.token_windows(ev, data.load_tokenizer(None), path="evaluation"), ev.batch_size)
    model, counts = load_export(export_dir, device=DEVICE)
    try:
        return perplexity(model, batches, device=DEVICE, progress=False), counts
    finally:
        del model
        torch.cuda.empty_cache()


def stage_row(res) -> dict:
    d = res.stages[1]
    keep = ("teacher", "steps", "tokens", "train_seconds", "tokens_per_second", "loss_first", "loss_last",
            "loss_curve", "training_windows", "epochs", "lr_first", "lr_last")
    return {"ppl_bf16": res.metrics.get("perplexity_before"),
            "ppl_compressed": d.details.get("perplexity_before_stage"),
            "ppl_distilled": res.metrics.get("perplexity_after"), "distill_stage_seconds": round(d.seconds, 2),
            "distill_peak_gib": round((d.peak_memory_bytes or 0) / 2**30, 3),
            "distill": {k: d.details.get(k) for k in keep},
            "stages": [(s.name, round(s.seconds, 2)) for s in res.stages]}


# --------------------------------------------------------------------------- parts
def part_qad() -> list[dict]:
    from modelopt_typed_recipes.spec.techniques import Export, Quantize

    steps = int(os.environ.get("DISTILL_QAD_STEPS", "300"))
    rows = [ptq_export_row()] if DEVICE == "cuda" else []
    for lr in env_list("DISTILL_QAD_LRS", "1e-5"):
        row: dict = {"case": "qad-nvfp4", "steps": steps, "lr": lr, "micro_batch_size": MBS}
        t = time.perf_counter()
        try:
            out = WORK / f"qad-{lr:g}"
            export = (Export(),) if DEVICE == "cuda" else ()
            res = run_recipe(recipe(f"qad-{lr:g}", (Quantize(format=QAD_FORMAT), distill_stage(steps, lr), *export),
                                    out))
            row.update(stage_row(res))
            b, p, q = row["ppl_bf16"], row["ppl_compressed"], row["ppl_distilled"]
            row["gap_ptq_pct"] = round(100 * (p / b - 1), 3)
            row["gap_qad_pct"] = round(100 * (q / b - 1), 3)
            if export:
                edir = next(x for x in out.iterdir() if x.name.endswith("export-hf"))
                cfg = json.loads((edir / "hf_quant_config.json").read_text())["quantization"]
                row["export_quant_algo"] = cfg.get("quant_algo")
                ppl_disk, counts = export_perplexity(edir)
                row.update(ppl_export_reloaded=ppl_disk, export_layers=counts,
                           export_vs_memory_pct=round(100 * (ppl_disk / q - 1), 3))
            row["status"] = "ok"
        except Exception as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:600], trace=traceback.format_exc()[-2500:])
        row["wall_s"] = round(time.perf_counter() - t, 1)
        log(json.dumps(row, default=str))
        rows.append(row)
    return rows


def ptq_export_row() -> dict:
    """NVFP4 PTQ alone, exported and re-loaded: how closely the decoded file matches the fake-quantized model in
    memory when no training happened (the yardstick for the QAD export's match)."""
    from modelopt_typed_recipes.spec.techniques import Export, Quantize

    row: dict = {"case": "ptq-nvfp4-export"}
    t = time.perf_counter()
    try:
        out = WORK / "ptq"
        res = run_recipe(recipe("ptq", (Quantize(format=QAD_FORMAT), Export()), out))
        ppl = res.metrics.get("perplexity_after")
        edir = next(x for x in out.iterdir() if x.name.endswith("export-hf"))
        disk, counts = export_perplexity(edir)
        row.update(ppl_bf16=res.metrics.get("perplexity_before"), ppl_ptq=ppl, ppl_export_reloaded=disk,
                   export_layers=counts, export_vs_memory_pct=round(100 * (disk / ppl - 1), 3), status="ok")
    except Exception as exc:
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:600], trace=traceback.format_exc()[-2500:])
    row["wall_s"] = round(time.perf_counter() - t, 1)
    log(json.dumps(row, default=str))
    return row


def _reference_model(num_layers: int | None = None, keep: tuple[int, ...] | None = None):
    """reference-llama on the local spec in bf16 on the GPU; with ``keep``, a model of those decoder layers
    only (weights copied from the full model)."""
    import attrs
    import torch

    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR
    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    arch = get_arch("reference-llama")
    full = build.build_model(arch, ParallelLayout(), dtype="bf16", device=DEVICE, spec="local")
    build.import_hf(full, str(REFERENCE_DIR), dtype="bf16")
    if keep is None:
        return full, arch
    small_arch = attrs.evolve(arch, num_layers=len(keep))
    small = build.build_model(small_arch, ParallelLayout(), dtype="bf16", device=DEVICE, spec="local")
    src = full.state_dict()
    dst = {}
    for k in small.state_dict():
        if k.startswith("decoder.layers."):
            i = int(k.split(".")[2])
            dst[k] = src[k.replace(f"decoder.layers.{i}.", f"decoder.layers.{keep[i]}.", 1)]
        else:
            dst[k] = src[k]
    with torch.no_grad():
        small.load_state_dict(dst, strict=True)
    return small, small_arch, full


def _eval_batches():
    from modelopt_typed_recipes.runtime import data

    ev = evaluation()
    return data.batches(data.token_windows(ev, data.load_tokenizer(None), path="evaluation"), ev.batch_size)


def _train_windows(count: int):
    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.spec.text import TrainingText

    return data.token_windows(TrainingText(dataset="reference-train").windows(count, SEQ), data.load_tokenizer(None),
                              path="data")


def part_depth() -> list[dict]:
    from modelopt_typed_recipes.runtime.megatron import distill as md
    from modelopt_typed_recipes.runtime.megatron import stages

    steps = int(os.environ.get("DISTILL_DEPTH_STEPS", "300"))
    batches = _eval_batches()
    rows = []
    for lr in env_list("DISTILL_DEPTH_LRS", "3e-4"):
        row: dict = {"case": "depth-6to4-local-standin", "steps": steps, "lr": lr, "micro_batch_size": MBS}
        t = time.perf_counter()
        try:
            student, _arch, teacher = _reference_model(keep=(0, 1, 4, 5))
            teacher.requires_grad_(False)
            row["ppl_teacher"] = stages.perplexity(teacher, batches, progress=False)
            row["ppl_pruned"] = stages.perplexity(student, batches, progress=False)
            train = md.Training(steps=steps, micro_batch_size=MBS, learning_rate=lr, lr_schedule="cosine",
                                warmup_steps=max(1, steps // 20), min_learning_rate=lr / 10)
            windows = _train_windows(steps * MBS)
            student, rep = md.distill(student, teacher, windows, train, md.KDLoss())
            row["ppl_distilled"] = stages.perplexity(student, batches, progress=False)
            curve = rep.pop("curve")
            row.update(rep, loss_curve=[round(r["loss"], 4) for r in curve[:: max(1, len(curve) // 20)]],
                       status="ok")
            del student, teacher
        except Exception as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:600], trace=traceback.format_exc()[-2500:])
        row["wall_s"] = round(time.perf_counter() - t, 1)
        log(json.dumps(row, default=str))
        rows.append(row)
    return rows


def part_minitron() -> list[dict]:
    from modelopt_typed_recipes.spec.techniques import Export, Prune

    if not has_te():
        row = {"case": "minitron-depth-6to4", "status": "skipped",
               "note": "Transformer Engine does not import here: Minitron pruning needs it (final session only)"}
        log(json.dumps(row))
        return [row]
    steps = int(os.environ.get("DISTILL_MINITRON_STEPS", "300"))
    lr = float(os.environ.get("DISTILL_MINITRON_LR", "3e-4"))
    row: dict = {"case": "minitron-depth-6to4", "steps": steps, "lr": lr, "micro_batch_size": MBS}
    t = time.perf_counter()
    try:
        out = WORK / "minitron"
        res = run_recipe(recipe("minitron-distill", (Prune(num_layers=4), distill_stage(steps, lr), Export()), out))
        row.update(stage_row(res))
        row["params"] = [res.stages[0].params_before, res.stages[0].params_after]
        edir = next(x for x in out.iterdir() if x.name.endswith("export-hf"))
        row["ppl_export_reloaded"], row["export_layers"] = export_perplexity(edir)
        row["status"] = "ok"
    except Exception as exc:
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:600], trace=traceback.format_exc()[-2500:])
    row["wall_s"] = round(time.perf_counter() - t, 1)
    log(json.dumps(row, default=str))
    return [row]


def hand_loop(kd, windows, *, steps: int, mbs: int, lr: float) -> float:
    """A plain ModelOpt distillation loop as a user writes it: fp32 master copies, AdamW, clipping at 1.0,
    the loss printed each step. Returns tokens/s (CUDA-synchronised)."""
    import torch

    params = [p for p in kd.parameters() if p.requires_grad]
    masters = [p.detach().float().clone().requires_grad_(True) for p in params]
    opt = torch.optim.AdamW(masters, lr=lr, betas=(0.9, 0.95), weight_decay=0.0, fused=DEVICE == "cuda")
    s = windows.shape[1] - 1
    pos = torch.arange(s, device=DEVICE).unsqueeze(0).expand(mbs, -1)
    mask = torch.triu(torch.ones((1, 1, s, s), device=DEVICE), diagonal=1).bool()
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def reduce(out):
        loss = out[0] if isinstance(out, tuple) else out
        return loss.float().sum()

    kd.train()
    n = windows.shape[0]
    sync()
    t = time.perf_counter()
    tokens = 0
    for step in range(steps):
        idx = [(step * mbs + k) % n for k in range(mbs)]
        ids = windows[idx].to(DEVICE, non_blocking=True)
        x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        out = kd(x, pos, mask, labels=y)
        losses = kd.compute_kd_loss(student_loss=reduce(out), loss_reduction_fn=reduce)
        loss = losses["kd_loss"] / y.numel()
        loss.backward()
        for p, m in zip(params, masters):
            m.grad = p.grad.float()
            p.grad = None
        torch.nn.utils.clip_grad_norm_(masters, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, m in zip(params, masters):
                p.copy_(m)
        _ = loss.item()
        tokens += y.numel()
    sync()
    kd.eval()
    return tokens / (time.perf_counter() - t)


def part_speed() -> dict:
    import copy

    import modelopt.torch.distill as mtd
    import modelopt.torch.distill.plugins.megatron as mtd_mcore
    import modelopt.torch.quantization as mtq

    from modelopt_typed_recipes.runtime.megatron import distill as md
    from modelopt_typed_recipes.runtime.megatron import stages

    steps = int(os.environ.get("DISTILL_SPEED_STEPS", "40"))
    reps = int(os.environ.get("DISTILL_SPEED_REPS", "5"))
    lr = 1e-5
    calib = _train_windows(64)
    from modelopt_typed_recipes.runtime import data

    loop = stages.forward_loop(data.batches(calib, 8), progress=False)
    teacher, _ = _reference_model()
    teacher.requires_grad_(False)
    students = []
    for _ in range(2):
        s, _a = _reference_model()
        mtq.quantize(s, copy.deepcopy(mtq.NVFP4_DEFAULT_CFG if DEVICE == "cuda" else mtq.FP8_DEFAULT_CFG), loop)
        students.append(s)
    windows = _train_windows(steps * MBS)
    ours_kd = md.wrap(students[0], teacher, md.KDLoss())
    cfg = mtd_mcore.setup_distillation_config(mtd_mcore.DistillationConfig(), students[1].config, teacher.config)
    hand_kd = mtd.convert(students[1], mode=[("kd_loss", {"teacher_model": teacher, "criterion": cfg.criterion,
                                                          "loss_balancer": cfg.loss_balancer})])
    mtd_mcore.adjust_distillation_model_for_mcore(hand_kd, cfg)
    train = md.Training(steps=steps, micro_batch_size=MBS, learning_rate=lr, lr_schedule="constant")
    ours, hand = [], []
    for r in range(reps + 1):  # repetition 0 warms both up and is not counted
        order = ("ours", "hand") if r % 2 == 0 else ("hand", "ours")
        for who in order:
            if who == "ours":
                v = md.train_loop(ours_kd, windows, train, distilling=True)["tokens_per_second"]
            else:
                v = hand_loop(hand_kd, windows, steps=steps, mbs=MBS, lr=lr)
            if r:
                (ours if who == "ours" else hand).append(v)
    row = {"case": "speed-qad-nvfp4", "steps_per_rep": steps, "reps": reps, "micro_batch_size": MBS,
           "tokens_per_step": MBS * (SEQ - 1), "ours_tokens_per_s": [round(x) for x in ours],
           "hand_tokens_per_s": [round(x) for x in hand], "ours_median": round(statistics.median(ours)),
           "hand_median": round(statistics.median(hand))}
    row["ours_vs_hand_pct"] = round(100 * (row["ours_median"] / row["hand_median"] - 1), 2)
    log(json.dumps(row))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="qad,depth,minitron,speed")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    import importlib.metadata as im

    import torch

    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    env = {p: im.version(p) for p in ("torch", "megatron-core", "nvidia-modelopt", "transformers")}
    env.update(gpu=torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", transformer_engine=has_te())
    log(json.dumps(env))
    distributed.init_process_group(device=DEVICE, ranks=(0, 1, 0))
    distributed.set_layout(ParallelLayout(), device=DEVICE)
    results: dict = {"env": env}
    t0 = time.perf_counter()
    parts = {"qad": part_qad, "depth": part_depth, "minitron": part_minitron, "speed": part_speed}
    for name in args.parts.split(","):
        t = time.perf_counter()
        try:
            results[name] = parts[name]()
        except Exception as exc:
            results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:600],
                             "trace": traceback.format_exc()[-2500:]}
            log(json.dumps(results[name]))
        log(f"=== {name} took {time.perf_counter() - t:.1f} s")
        (OUT / f"distill_gpu_{args.parts.replace(',', '_')}.json").write_text(json.dumps({**results, "wall_s": round(time.perf_counter() - t0, 1)},
                                                         indent=2, default=str))


if __name__ == "__main__":
    main()
