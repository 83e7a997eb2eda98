"""ModelOpt quantization of a transformers model: the config, the calibration loop, the summaries.

The config is built the same way the planner's check builds it (``bridges.modelopt_names``), from the
live ``mtq`` constant or a ModelOpt YAML recipe, deep-copied so ModelOpt's shared dicts are never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ...errors import SpecError, UnknownNameError, did_you_mean
from ...spec.techniques import AutoQuantize, Quantize, resolve_format
from .progress import track

# ModelOpt's own default exclusions reach auto_quantize only as disabled_layers (modelopt-api.md §1.5)
_AUTO_QUANTIZE_DISABLED = ("*lm_head*", "*output_layer*", "*router*", "*mlp.gate.*", "*block_sparse_moe.gate*")


def _mtq() -> Any:
    import modelopt.torch.quantization as mtq

    return mtq


def preset_dict(name: str, *, path: str) -> dict[str, Any]:
    """A deep copy of ``mtq.<name>``; UnknownNameError with suggestions when ModelOpt has no such preset."""
    mtq = _mtq()
    choices = [c for c in dir(mtq) if c.endswith(("_CFG", "_CONFIG")) and isinstance(getattr(mtq, c), dict)]
    if name not in choices:
        raise UnknownNameError(f"ModelOpt {getattr(mtq, '__version__', '')} has no preset {name!r}".replace("  ", " "),
                               path=path, hint=did_you_mean(name, choices) or "see mtq.config.choices")
    return copy.deepcopy(getattr(mtq, name))


def quantize_config(stage: Quantize, *, path: str) -> tuple[dict[str, Any], str]:
    """(config for ``mtq.quantize``, where it came from)."""
    from ...bridges import modelopt_names as mn

    if stage.recipe is not None:
        from modelopt.recipe import load_recipe

        try:
            recipe = load_recipe(stage.recipe)
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise SpecError(f"ModelOpt cannot load recipe {stage.recipe!r}: {exc}", path=f"{path}.recipe") from None
        if str(getattr(recipe.recipe_type, "value", recipe.recipe_type)) != "ptq":
            raise SpecError(f"{stage.recipe!r} is not a PTQ recipe", path=f"{path}.recipe",
                            hint="use technique: auto_quantize for auto-quantize recipes")
        base = recipe.quantize.model_dump(exclude_unset=True)
        composed = mn.compose_quant_config(base, base_source="recipe", exclude=stage.exclude, algorithm=stage.algorithm)
        return composed.config, stage.recipe
    preset = stage.preset
    assert preset is not None
    base = preset_dict(preset, path=f"{path}.format")
    kv = None
    if stage.kv_cache is not None:
        from modelopt.recipe.presets import KV_QUANT_CFG_CHOICES

        kv = copy.deepcopy(KV_QUANT_CFG_CHOICES[stage.kv_cache]["quant_cfg"])
    composed = mn.compose_quant_config(base, kv_entries=kv, exclude=stage.exclude, algorithm=stage.algorithm)
    return composed.config, preset


def forward_loop(batches: list[Any], *, device: str, label: str, progress: bool) -> Callable[[Any], None]:
    """The ``forward_loop(model)`` ModelOpt calls (AWQ calls it more than once: each pass gets a bar)."""
    import torch

    def loop(model: Any) -> None:
        with torch.no_grad():
            for batch in track(batches, label, enabled=progress):
                model(input_ids=batch.to(device))

    return loop


def quantize(model: Any, stage: Quantize, batches: list[Any], *, path: str, device: str,
             progress: bool) -> dict[str, Any]:
    """Quantize ``model`` in place; returns details for the stage result."""
    mtq = _mtq()
    config, source = quantize_config(stage, path=path)
    needs_data = mtq.need_calibration(config)
    loop = forward_loop(batches, device=device, label=f"calibrate {stage.label.removeprefix('quantize-')}",
                        progress=progress) if needs_data else None
    mtq.quantize(model, config, forward_loop=loop)
    if stage.compress:
        mtq.compress(model)
    algo = config.get("algorithm")
    return {"config": source, "algorithm": algo if not isinstance(algo, dict) else algo.get("method"),
            "calibration_batches": len(batches) if needs_data else 0, "compressed": stage.compress}


def auto_quantize(model: Any, stage: AutoQuantize, batches: list[Any], *, path: str, device: str,
                  batch_size: int, progress: bool) -> dict[str, Any]:
    """Per-layer format search (``mtq.auto_quantize``) under the stage's effective-bits budget."""
    mtq = _mtq()
    disabled = [*_AUTO_QUANTIZE_DISABLED, *stage.exclude]
    kv_entries = None
    if stage.recipe is not None:
        from modelopt.recipe import load_recipe

        recipe = load_recipe(stage.recipe)
        aq = getattr(recipe, "auto_quantize", None)
        if aq is None:
            raise SpecError(f"{stage.recipe!r} is not an auto-quantize recipe", path=f"{path}.recipe",
                            hint="use technique: quantize for PTQ recipes")
        constraints = aq.constraints.model_dump(exclude_none=True)
        if aq.cost_excluded_layers:
            constraints.setdefault("cost", {})["excluded_module_name_patterns"] = list(aq.cost_excluded_layers)
        formats = [c.model_dump(exclude_unset=True) for c in aq.candidate_formats]
        method, score_size = aq.auto_quantize_method, aq.score_size
        disabled += list(aq.disabled_layers or [])
        if aq.kv_cache is not None:
            kv_entries = aq.kv_cache.model_dump(exclude_unset=True).get("quant_cfg")
    else:
        constraints = {"effective_bits": stage.effective_bits}
        formats = []
        for i, name in enumerate(stage.formats):
            fmt = resolve_format(name, field=f"{path}.formats[{i}]")
            formats.append(preset_dict(fmt.preset if fmt is not None else name, path=f"{path}.formats[{i}]"))
        method, score_size = stage.method, stage.score_size
        if stage.kv_cache is not None:
            from modelopt.recipe.presets import KV_QUANT_CFG_CHOICES

            kv_entries = copy.deepcopy(KV_QUANT_CFG_CHOICES[stage.kv_cache]["quant_cfg"])

    loader = [b.to(device) for b in batches]
    if method == "kl_div":
        kwargs: dict[str, Any] = {"forward_step": lambda m, b: m(input_ids=b).logits}
    else:
        kwargs = {"forward_step": lambda m, b: m(input_ids=b, labels=b), "loss_func": lambda out, _b: out.loss}
    steps = len(loader)
    try:
        model, search = mtq.auto_quantize(
            model, constraints=constraints, quantization_formats=formats, data_loader=loader,
            disabled_layers=disabled, num_calib_steps=steps,
            num_score_steps=min(steps, max(score_size // batch_size, 1)), method=method, verbose=False, **kwargs,
        )
    except ValueError as exc:
        if "infeasible" not in str(exc):
            raise
        raise SpecError(str(exc), path=f"{path}.{'recipe' if stage.recipe else 'effective_bits'}",
                        hint="raise effective_bits or add a smaller candidate format") from None
    if kv_entries:
        mtq.set_quantizer_by_cfg(model, kv_entries)
        mtq.calibrate(model, "max", forward_loop(batches, device=device, label="calibrate kv cache", progress=progress))
    best = search.get("best", {})
    return {"config": stage.recipe or list(stage.formats), "method": method,
            "achieved_effective_bits": (best.get("constraints") or {}).get("effective_bits"),
            "satisfied": best.get("is_satisfied")}


# --------------------------------------------------------------------------- summaries
def _kind(name: str) -> str:
    """``...q_proj.weight_quantizer`` -> weight; ``experts.gate_up_proj_input_quantizer`` -> input; bmm -> kv."""
    part = next((p for p in reversed(name.split(".")) if "_quantizer" in p), name)
    kind = part.split("_quantizer")[0].rsplit("_", 1)[-1]
    return "kv" if kind == "bmm" else kind


def quantizer_summary(model: Any) -> dict[str, int]:
    """Enabled quantizers by kind: ``weight``, ``input``, ``output``, ``kv``."""
    from modelopt.torch.quantization.nn import SequentialQuantizer, TensorQuantizer

    counts: dict[str, int] = {}
    sequential: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, SequentialQuantizer):  # W4A8: one weight quantizer made of two steps
            sequential.add(name)
            enabled = any(q.is_enabled for q in module)
        elif isinstance(module, TensorQuantizer) and name.rsplit(".", 1)[0] not in sequential:
            enabled = module.is_enabled
        else:
            continue
        if enabled:
            counts[_kind(name)] = counts.get(_kind(name), 0) + 1
    return dict(sorted(counts.items()))


def _quantizer_bits(q: Any) -> float | None:
    from modelopt.torch.quantization.nn import SequentialQuantizer

    if isinstance(q, SequentialQuantizer):
        q = q[0]
    if not getattr(q, "is_enabled", False):
        return None
    nb = q.num_bits
    bits = float(nb) if isinstance(nb, int) else float(1 + nb[0] + nb[1])
    blocks = getattr(q, "block_sizes", None) or {}
    block = blocks.get(-1) or blocks.get(1)
    if block:
        sb = blocks.get("scale_bits")
        scale = 16.0 if sb is None else float(sb) if isinstance(sb, int) else float(1 + sb[0] + sb[1])
        bits += scale / block
    return bits


def effective_bits(model: Any) -> float | None:
    """Mean bits per weight over the linear layers outside the output head (16 for unquantized ones)."""
    import torch

    total = weighted = 0.0
    quantized = False
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "lm_head" in name or name.endswith("output_layer"):
            continue
        n = module.weight.numel() if not hasattr(module.weight, "metadata") else module.weight.metadata["shape"].numel()
        bits = _quantizer_bits(getattr(module, "weight_quantizer", None)) if hasattr(module, "weight_quantizer") else None
        quantized |= bits is not None
        total += n
        weighted += n * (bits if bits is not None else 16.0)
    return round(weighted / total, 3) if quantized and total else None
