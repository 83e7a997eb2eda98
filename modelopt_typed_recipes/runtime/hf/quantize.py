"""ModelOpt quantization of a transformers model: the calibration loop, the ModelOpt calls, the summaries.

A Quantize stage's config comes from the plan (composed once); auto-quantize inputs from
``runtime.modelopt_config``, shared with the Megatron-Core backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...bridges.modelopt_names import default_disabled_patterns
from ...errors import SpecError
from ...spec.techniques import AutoQuantize, Quantize
from ..modelopt_config import auto_quantize_inputs
from ..progress import track

# ModelOpt's own default exclusions reach auto_quantize only as disabled_layers (modelopt-api.md §1.5)


def _mtq() -> Any:
    import modelopt.torch.quantization as mtq

    return mtq


def forward_loop(batches: list[Any], *, device: str, label: str, progress: bool) -> Callable[[Any], None]:
    """The ``forward_loop(model)`` ModelOpt calls (AWQ calls it more than once: each pass gets a bar)."""
    import torch

    def loop(model: Any) -> None:
        with torch.no_grad():
            for batch in track(batches, label, enabled=progress):
                model(input_ids=batch.to(device))

    return loop


def quantize(model: Any, stage: Quantize, batches: list[Any], *, config: dict[str, Any], source: str, device: str,
             progress: bool) -> dict[str, Any]:
    """Quantize ``model`` in place with ``config`` (the plan's, composed once); returns details for the stage
    result (``source``: the preset or recipe it came from)."""
    mtq = _mtq()
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
    inputs = auto_quantize_inputs(stage, path=path, disabled=default_disabled_patterns())
    method, kv_entries = inputs.method, inputs.kv_entries

    loader = [b.to(device) for b in batches]
    if method == "kl_div":
        kwargs: dict[str, Any] = {"forward_step": lambda m, b: m(input_ids=b).logits}
    else:
        kwargs = {"forward_step": lambda m, b: m(input_ids=b, labels=b), "loss_func": lambda out, _b: out.loss}
    steps = len(loader)
    try:
        model, search = mtq.auto_quantize(
            model, constraints=inputs.constraints, quantization_formats=inputs.formats, data_loader=loader,
            disabled_layers=inputs.disabled_layers, num_calib_steps=steps,
            num_score_steps=inputs.score_steps(batches=steps, batch_size=batch_size), method=method, verbose=False, **kwargs,
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
