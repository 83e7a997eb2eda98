"""GPU verification of the Megatron-Core backend (run by benchmarks/gpu_megatron.sh on the H100 machine).

Parts (``--part``):
  prewarm   build ModelOpt's three CUDA extensions once, each timed (kept apart from every run's timing)
  formats   tiny registry models (dense, MoE) written as real HF checkpoints, imported into Megatron-Core,
            post-trained with each format through ``runtime.megatron.backend.run``, exported where ModelOpt
            can, and the export re-loaded with transformers (config and tensors checked)
  tp2       under torchrun with 2 processes: TP=2 quantize, then the library re-plans export to PP=2
  accuracy  held-out perplexity of reference-llama per format (same weights, Megatron-Core backend)
  prune     Minitron depth / width / head / expert pruning (needs Transformer Engine): reference-llama's
            trained weights and tiny-moe, each pruned, exported, re-loaded with transformers (config and
            held-out perplexity compared with the Megatron-Core model's)

Calibration and evaluation text: the package's reference corpus (real English text), tokenised with the
reference tokenizer. Results are printed and written as JSON to $OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT", "/tmp/mtr_out"))
WORK = Path(os.environ.get("MTR_WORK", "/tmp/mtr_work"))

FORMATS = [
    ("fp8", dict(format="fp8"), True),
    ("nvfp4", dict(format="nvfp4"), True),
    ("int4_awq", dict(format="int4_awq"), False),
    ("int8_sq", dict(format="int8_sq"), False),
    ("w4a8_awq", dict(format="w4a8_awq"), False),
    ("mxfp8", dict(format="mxfp8"), False),
    ("recipe:nvfp4_mlp_weight_only", dict(recipe="general/ptq/nvfp4_mlp_weight_only"), True),
]


def log(*a: object) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(*a, flush=True)


# --------------------------------------------------------------------------- HF checkpoints of registry models
def write_hf_checkpoint(name: str, directory: Path, *, seed: int = 0) -> Path:
    """A registry architecture as a real HF checkpoint (save_pretrained) with the reference tokenizer."""
    import attrs
    import torch
    from transformers import AutoModelForCausalLM

    from modelopt_typed_recipes.bridges.hf_config import to_hf_config
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR, load_tokenizer
    from modelopt_typed_recipes.spec.arch import Vocab

    arch = attrs.evolve(get_arch(name), vocab=Vocab(size=4096, divisible_by=128))  # the reference tokenizer's
    if directory.exists():
        return directory
    cfg = to_hf_config(arch)
    from transformers import AutoConfig

    config = AutoConfig.for_model(**cfg) if "model_type" in cfg else AutoConfig.from_dict(cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(str(directory))
    load_tokenizer(None).save_pretrained(str(directory))
    (directory / "mtr_arch.json").write_text(json.dumps({"name": name, "vocab": 4096}))
    assert REFERENCE_DIR.is_dir()
    return directory


def arch_for(name: str):
    import attrs

    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.spec.arch import Vocab

    return attrs.evolve(get_arch(name), vocab=Vocab(size=4096, divisible_by=128))


def make_recipe(arch, hf_dir: Path, stage_kwargs: dict, *, export: bool, out: Path, tag: str, layout=None,
                samples: int = 32, seq: int = 256, evaluation: bool = True):
    """One quantize (or auto-quantize, when ``effective_bits`` is given) stage, then optionally an export."""
    from modelopt_typed_recipes.spec.techniques import AutoQuantize, Export, Quantize

    stage = AutoQuantize(**stage_kwargs) if "effective_bits" in stage_kwargs else Quantize(**stage_kwargs)
    return recipe_with(arch, hf_dir, (stage, Export()) if export else (stage,), out=out, tag=tag, samples=samples,
                       seq=seq, evaluation=evaluation)


def recipe_with(arch, hf_dir: Path, stages: tuple, *, out: Path, tag: str, samples: int = 32, seq: int = 256,
                evaluation: bool = True):
    """A Megatron-Core recipe over ``stages``: reference-text calibration, 32 held-out windows for perplexity."""
    from modelopt_typed_recipes.spec.recipe import HFCheckpoint, Recipe, TextData

    return Recipe(
        name=tag, model=arch, source=HFCheckpoint(path=str(hf_dir)), stages=tuple(stages),
        calibration=TextData(dataset="reference-train", num_samples=samples, seq_length=seq, batch_size=8),
        evaluation=TextData(dataset="reference-heldout", num_samples=32, seq_length=seq, batch_size=8)
        if evaluation else None,
        output_dir=str(out), backend="megatron", device="cuda", dtype="bf16",
    )


def run_recipe(recipe, *, layout=None):
    """Backend run with the caller's job done here too: staging folder renamed to the output folder."""
    import attrs

    from modelopt_typed_recipes.plan.check import check_recipe
    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.runtime.megatron import backend

    out = Path(recipe.output_dir)
    staging = out.with_name(out.name + ".staging")
    plan = check_recipe(recipe, backend="megatron", layout=layout)  # the run's plan, with this layout
    plan.raise_first()
    plan = attrs.evolve(plan, output_dir=out, staging_dir=staging, progress=False)
    if distributed.is_main() and staging.exists():
        shutil.rmtree(staging)
    result = backend.run(recipe, plan)
    if distributed.is_main():
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    distributed.barrier()
    return result


def check_export(export_dir: Path, hf_src: Path, fmt: str) -> dict:
    """Re-load the export: config and quant config read, every tensor present with the expected dtype;
    the BF16-stored tensors (norms, embeddings) equal the source; transformers loads the model."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(export_dir))
    src_cfg = AutoConfig.from_pretrained(str(hf_src))
    facts: dict = {"architectures": cfg.architectures, "same_shape_config": all(
        getattr(cfg, k) == getattr(src_cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                         "num_key_value_heads", "vocab_size"))}
    qc = export_dir / "hf_quant_config.json"
    facts["quant_algo"] = json.loads(qc.read_text())["quantization"].get("quant_algo") if qc.exists() else None
    dtypes: dict[str, int] = {}
    names = []
    for f in sorted(export_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():  # noqa: SIM118 - safe_open is no mapping: it has keys() but no iteration
                names.append(k)
                dt = str(sf.get_slice(k).get_dtype())
                dtypes[dt] = dtypes.get(dt, 0) + 1
    facts["tensors"] = len(names)
    facts["dtypes"] = dtypes
    src = {}
    for f in sorted(hf_src.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():  # noqa: SIM118 - safe_open is no mapping: it has keys() but no iteration
                src[k] = sf.get_tensor(k)
    exported = {}
    for f in sorted(export_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():  # noqa: SIM118 - safe_open is no mapping: it has keys() but no iteration
                if "norm" in k or "embed_tokens" in k:
                    exported[k] = sf.get_tensor(k)
    facts["norms_embed_equal"] = all(torch.equal(v.to(src[k].dtype), src[k]) for k, v in exported.items() if k in src)
    if facts["quant_algo"] == "FP8":  # dequantize the FP8 weights and compare with the BF16 source
        errs = []
        for f in sorted(export_dir.glob("*.safetensors")):
            with safe_open(str(f), "pt") as sf:
                keys = set(sf.keys())
                for k in keys:
                    if k.endswith(".weight") and k.replace(".weight", ".weight_scale") in keys and k in src:
                        w = sf.get_tensor(k).float() * sf.get_tensor(k.replace(".weight", ".weight_scale")).float()
                        ref = src[k].float()
                        errs.append(float((w - ref).norm() / ref.norm()))
        facts["fp8_dequant_rel_err_max"] = round(max(errs), 4) if errs else None
    facts["missing_weights"] = sorted(k for k in src if k.endswith(".weight") and k not in names)[:5]
    try:
        m = AutoModelForCausalLM.from_pretrained(str(export_dir), torch_dtype=torch.bfloat16)
        ids = torch.arange(32).unsqueeze(0)
        with torch.no_grad():
            logits = m(ids).logits
        facts["transformers_reload"] = "ok"
        facts["reload_logits_finite"] = bool(torch.isfinite(logits).all())
    except Exception as exc:  # a quantized export may need a deployment runtime to load; record why
        facts["transformers_reload"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return facts


# --------------------------------------------------------------------------- parts
def part_prewarm() -> dict:
    from modelopt.torch.quantization import extensions as ext

    out = {}
    for name in ("get_cuda_ext_fp8", "get_cuda_ext", "get_cuda_ext_mx"):
        t = time.perf_counter()
        ok = getattr(ext, name)(raise_if_failed=True) is not None
        out[name] = {"seconds": round(time.perf_counter() - t, 1), "ok": ok}
        log(f"prewarm {name}: {out[name]}")
    return out


def part_formats(models: list[str], only: list[str] | None = None) -> dict:
    from modelopt_typed_recipes.errors import RecipeError

    rows = []
    for name in models:
        hf = write_hf_checkpoint(name, WORK / f"hf-{name}")
        arch = arch_for(name)
        cases = list(FORMATS) + [("auto-6.0bits", dict(effective_bits=6.0, formats=("int4_awq", "fp8")), False),
                                 ("auto-5.0bits", dict(effective_bits=5.0, formats=("int4_awq", "fp8")), False)]
        for tag, kw, export in cases:
            if only and tag not in only:
                continue
            out = WORK / f"out-{name}-{tag.replace(':', '_')}"
            row: dict = {"model": name, "case": tag, "export": export}
            t = time.perf_counter()
            try:
                recipe = make_recipe(arch, hf, kw, export=export, out=out, tag=f"{name}:{tag}")
                res = run_recipe(recipe)
                row.update(status="ok", seconds=round(time.perf_counter() - t, 2),
                           stages=[{"name": s.name, "seconds": round(s.seconds, 2), "bits": s.effective_bits,
                                    "quantizers": s.quantizer_summary, "details": {k: str(v) for k, v in s.details.items()},
                                    "peak_gib": round((s.peak_memory_bytes or 0) / 2**30, 3)} for s in res.stages],
                           ppl_before=res.metrics.get("perplexity_before"),
                           ppl_after=res.metrics.get("perplexity_after"))
                if export:
                    edir = next(p for p in out.iterdir() if p.name.endswith("export-hf"))
                    row["reload"] = check_export(edir, hf, tag)
            except RecipeError as err:
                row.update(status="refused", error=err.to_dict())
            except Exception as exc:
                row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:400],
                           trace=traceback.format_exc()[-1500:])
            log(json.dumps(row, default=str))
            rows.append(row)
    return {"rows": rows}


def part_tp2() -> dict:
    """torchrun --nproc_per_node=2: FP8 at TP=2, export re-planned by the library (pipeline only)."""
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    name = "tiny-dense"
    hf = WORK / f"hf-{name}"
    if int(os.environ.get("RANK", "0")) == 0:
        write_hf_checkpoint(name, hf)
    import torch.distributed as dist

    from modelopt_typed_recipes.runtime import distributed

    distributed.init_process_group(device="cuda")
    dist.barrier()
    arch = arch_for(name)
    out = WORK / "out-tp2-fp8"
    recipe = make_recipe(arch, hf, dict(format="fp8"), export=True, out=out, tag="tp2-fp8")
    t = time.perf_counter()
    res = run_recipe(recipe, layout=ParallelLayout(tensor_parallel=2))
    row = {"seconds": round(time.perf_counter() - t, 2),
           "stages": [{"name": s.name, "layout": s.details.get("layout"), "seconds": round(s.seconds, 2),
                       "quantizers": s.quantizer_summary} for s in res.stages],
           "ppl_before": res.metrics.get("perplexity_before"), "ppl_after": res.metrics.get("perplexity_after")}
    if dist.get_rank() == 0:
        edir = next(p for p in out.iterdir() if p.name.endswith("export-hf"))
        row["reload"] = check_export(edir, hf, "fp8")
    log(json.dumps(row, default=str))
    return row


def part_accuracy() -> dict:
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR

    if not (REFERENCE_DIR / "config.json").is_file():
        log("accuracy: reference-llama weights are not in the package yet; skipped")
        return {"skipped": "no reference weights"}
    arch = get_arch("reference-llama")
    rows = []
    cases = [c for c in FORMATS if not c[0].startswith("recipe")] + [
        ("auto-6.0bits", dict(effective_bits=6.0, formats=("int4_awq", "fp8")), False)]
    for tag, kw, _export in cases:
        out = WORK / f"acc-{tag}"
        t = time.perf_counter()
        try:
            recipe = make_recipe(arch, REFERENCE_DIR, kw, export=False, out=out, tag=f"reference-llama:{tag}",
                                 samples=64, seq=256)
            res = run_recipe(recipe)
            rows.append({"format": tag, "ppl_before": res.metrics.get("perplexity_before"),
                         "ppl_after": res.metrics.get("perplexity_after"), "seconds": round(time.perf_counter() - t, 1)})
        except Exception as exc:
            rows.append({"format": tag, "error": f"{type(exc).__name__}: {exc}"[:300]})
        log(json.dumps(rows[-1]))
    return {"rows": rows}


PRUNE_CASES = [
    ("reference-llama", "depth-6to4", [dict(num_layers=4)]),
    ("reference-llama", "ffn-768to512", [dict(ffn_hidden_size=512)]),
    ("reference-llama", "hidden-256to192", [dict(hidden_size=192)]),
    ("reference-llama", "heads-4to2", [dict(num_attention_heads=2)]),
    ("reference-llama", "depth-6to4+fp8", [dict(num_layers=4), dict(format="fp8")]),
    ("tiny-moe", "experts-8to4+moe-ffn-64to32", [dict(num_moe_experts=4, moe_ffn_hidden_size=32)]),
]


def hf_perplexity(export_dir: Path, evaluation) -> float:
    """Held-out perplexity of the exported checkpoint through transformers, on the run's own ``evaluation``
    windows (``recipe.evaluation``), so it compares with the run's ``perplexity_after``."""
    import torch
    from transformers import AutoModelForCausalLM

    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.runtime.hf.evaluate import perplexity

    ev = data.token_windows(evaluation, data.load_tokenizer(None), path="evaluation")
    m = AutoModelForCausalLM.from_pretrained(str(export_dir), torch_dtype=torch.bfloat16).cuda().eval()
    try:
        return perplexity(m, data.batches(ev, evaluation.batch_size), device="cuda", progress=False)
    finally:
        del m
        torch.cuda.empty_cache()


def part_prune(only: list[str] | None = None) -> dict:
    from transformers import AutoConfig

    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.errors import RecipeError
    from modelopt_typed_recipes.runtime.data import REFERENCE_DIR
    from modelopt_typed_recipes.runtime.megatron import stages as mstages
    from modelopt_typed_recipes.spec.techniques import Export, Prune, Quantize

    rows = []
    log(f"minitron available: {mstages.minitron_available()}")
    for name, tag, stage_kws in PRUNE_CASES:
        if only and tag not in only:
            continue
        if name == "reference-llama":
            arch, hf = get_arch(name), REFERENCE_DIR
        else:
            hf, arch = write_hf_checkpoint(name, WORK / f"hf-{name}"), arch_for(name)
        out = WORK / f"prune-{name}-{tag.replace('+', '_')}"
        row: dict = {"model": name, "case": tag}
        t = time.perf_counter()
        try:
            stage_list = [Quantize(**kw) if "format" in kw else Prune(**kw) for kw in stage_kws] + [Export()]
            recipe = recipe_with(arch, hf, tuple(stage_list), out=out, tag=f"{name}:{tag}", samples=64)
            res = run_recipe(recipe)
            pr = res.stages[0]
            row.update(status="ok", seconds=round(time.perf_counter() - t, 2),
                       params_before=pr.params_before, params_after=pr.params_after,
                       prune_seconds=round(pr.seconds, 2), details={k: v for k, v in pr.details.items()},
                       ppl_before=res.metrics.get("perplexity_before"), ppl_after=res.metrics.get("perplexity_after"),
                       stages=[s.name for s in res.stages])
            edir = next(p for p in out.iterdir() if p.name.endswith("export-hf"))
            cfg = AutoConfig.from_pretrained(str(edir))
            want = recipe.archs_per_stage(get_arch)[-1]
            got = {"num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
                   "num_attention_heads": cfg.num_attention_heads,
                   "intermediate_size": getattr(cfg, "intermediate_size", None)}
            row["export_config"] = got
            row["export_matches_arch"] = (got["num_hidden_layers"], got["hidden_size"],
                                          got["num_attention_heads"]) == (want.num_layers, want.hidden_size,
                                                                          want.attention.num_heads)
            if want.moe is not None:
                row["export_moe"] = {"num_experts": getattr(cfg, "num_experts", None),
                                     "moe_intermediate_size": getattr(cfg, "moe_intermediate_size", None)}
                row["export_matches_arch"] &= (row["export_moe"]["num_experts"], row["export_moe"][
                    "moe_intermediate_size"]) == (want.moe.num_experts, want.moe.ffn_hidden_size)
            row["transformers_params"] = None
            try:
                row["hf_ppl"] = hf_perplexity(edir, recipe.evaluation)
                from transformers import AutoModelForCausalLM

                m = AutoModelForCausalLM.from_pretrained(str(edir))
                row["transformers_params"] = sum(p.numel() for p in m.parameters())
                del m
            except Exception as exc:  # a quantized export may need a deployment runtime to load; record why
                row["hf_reload"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        except RecipeError as err:
            row.update(status="refused", error=err.to_dict())
        except Exception as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:400], trace=traceback.format_exc()[-2500:])
        log(json.dumps(row, default=str))
        rows.append(row)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", required=True, choices=["prewarm", "formats", "tp2", "accuracy", "prune"])
    ap.add_argument("--models", default="tiny-dense,tiny-moe")
    ap.add_argument("--cases", default="", help="comma-separated case tags (default: all)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if args.part == "prewarm":
        res = part_prewarm()
    elif args.part == "formats":
        res = part_formats(args.models.split(","), [c for c in args.cases.split(",") if c])
    elif args.part == "tp2":
        res = part_tp2()
    elif args.part == "prune":
        res = part_prune([c for c in args.cases.split(",") if c])
    else:
        res = part_accuracy()
    res = {"part": args.part, "wall_s": round(time.perf_counter() - t, 1), **res}
    if int(os.environ.get("RANK", "0")) == 0:
        (OUT / f"megatron_{args.part}{'_' + args.cases.replace(',', '_') if args.cases else ''}.json").write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
