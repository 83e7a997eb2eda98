"""Write ModelOpt's unified Hugging Face checkpoint, and load one back to measure what was written.

``export`` calls ``modelopt.torch.export.export_hf_checkpoint`` (the format TensorRT-LLM, vLLM and
SGLang read: low-precision weights plus ``weight_scale``/``input_scale``/``pre_quant_scale`` tensors and
``hf_quant_config.json``) and adds the tokenizer. ``vllm_fakequant`` writes BF16 weights plus ModelOpt's
quantizer state for vLLM's fake-quant reload.

transformers has no loader for ``quant_method: modelopt`` checkpoints, so ``load_export`` does what a
serving engine does, in plain torch: it builds the transformers model from the exported ``config.json``,
decodes every quantized weight from the stored integers/FP8 values and their scales (FP8 per tensor,
INT8 per channel, INT4 in blocks with two values per byte, W4A8's FP8 second scale), and quantizes each
quantized layer's input with the stored ``input_scale`` (after ``pre_quant_scale``). Its perplexity is
the perplexity of the file on disk, not of the in-memory fake-quantized model. KV-cache scales
(``k_scale``/``v_scale``) are read but not applied: attention kernels are out of scope here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import CompatibilityError

FP8_MAX = 448.0


def export(model: Any, tokenizer: Any, directory: Path, *, fmt: str, dtype: str, path: str) -> list[str]:
    """Write the checkpoint into ``directory``; returns the files written."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if fmt == "hf":
        from modelopt.torch.export import export_hf_checkpoint

        try:
            export_hf_checkpoint(model, dtype=torch_dtype, export_dir=str(directory))
        except (ValueError, NotImplementedError, AssertionError, TypeError, AttributeError, KeyError) as exc:
            raise CompatibilityError(
                f"ModelOpt {_modelopt_version()}'s HF export failed for this model: {type(exc).__name__}: {exc}",
                path=path, hint="drop the export stage (the quantized model is kept with its ModelOpt state)",
            ) from exc
    else:
        from modelopt.torch.export.plugins.vllm_fakequant_hf import export_hf_vllm_fq_checkpoint

        export_hf_vllm_fq_checkpoint(model, export_dir=str(directory))
    tokenizer.save_pretrained(str(directory))
    return sorted(p.name for p in directory.iterdir())


def _modelopt_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("nvidia-modelopt")


# --------------------------------------------------------------------------- decoding the checkpoint
def _unpack_int4(packed: Any) -> Any:
    """ModelOpt's ``pack_int4_in_uint8`` inverted: ``(out/2, in)`` bytes -> ``(out, in)`` signed int8."""
    import torch

    t = packed.view(torch.uint8).T.to(torch.int16)  # (in, out/2)
    low, high = t & 0x0F, (t >> 4) & 0x0F
    both = torch.stack([low, high], dim=-1).reshape(t.shape[0], -1)  # (in, out)
    both = torch.where(both >= 8, both - 16, both)
    return both.T.to(torch.int8).contiguous()


def _fp8_qdq(x: Any, scale: Any) -> Any:
    import torch

    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale


def _int8_qdq(x: Any, scale: Any) -> Any:
    return (x / scale).round().clamp(-128, 127) * scale


def decode_weight(t: dict[str, Any]) -> tuple[Any, str]:
    """(dense fp32 weight, weight format) from one layer's stored tensors."""
    import torch

    w = t["weight"]
    scale: Any = t.get("weight_scale")
    if w.dtype == torch.float8_e4m3fn:
        s = scale.float()
        if s.dim() == 1:
            s = s[:, None]
        return w.float() * s, "fp8"
    if w.dtype == torch.int8:
        return w.float() * scale.float().reshape(-1, 1), "int8"
    if w.dtype == torch.uint8:
        q = _unpack_int4(w).float()
        s = scale.float()
        block = q.shape[1] // s.shape[1]
        dense = q * s.repeat_interleave(block, dim=1)
        if "weight_scale_2" in t:  # W4A8: the kernel turns int4 into FP8 with this second scale
            dense = _fp8_qdq(dense, t["weight_scale_2"].float())
            return dense, "int4+fp8"
        return dense, "int4"
    return w.float(), "dense"


def load_export(directory: Path, *, device: str = "cpu") -> tuple[Any, dict[str, int]]:
    """A transformers model (fp32) that computes what the exported checkpoint says; and layer counts by format.

    The decoded weights are written to a temporary plain checkpoint and loaded with
    ``AutoModelForCausalLM.from_pretrained``, so transformers' own key mapping applies (per-expert MoE
    weights are fused the way it fuses Hub checkpoints). Inputs of the quantized layers that exist as
    modules get their stored ``pre_quant_scale``/``input_scale``; fused expert weights are decoded but
    their per-expert activation scales cannot be hooked (counted as ``...-experts`` layers).
    """
    import tempfile

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    state: dict[str, Any] = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(f)))
    layers: dict[str, dict[str, Any]] = {}
    suffixes = ("weight_scale_2", "weight_scale", "input_scale", "pre_quant_scale", "k_scale", "v_scale")
    plain: dict[str, Any] = {}
    for key, value in state.items():
        for suf in suffixes:
            if key.endswith("." + suf):
                layers.setdefault(key[: -len(suf) - 1], {})[suf] = value
                break
        else:
            plain[key] = value
    decoded: dict[str, str] = {}
    hooks: dict[str, tuple[Any, Any, str]] = {}
    for name, extra in layers.items():
        wkey = f"{name}.weight"
        if wkey not in plain or "weight_scale" not in extra:
            continue
        plain[wkey], kind = decode_weight({"weight": plain[wkey], **extra})
        decoded[name] = kind
        act = ("int8" if kind == "int8" else "fp8") if "input_scale" in extra else ""
        hooks[name] = (extra.get("pre_quant_scale"), extra.get("input_scale"), act)

    cfg = json.loads((directory / "config.json").read_text())
    cfg.pop("quantization_config", None)
    cfg["dtype"] = cfg["torch_dtype"] = "float32"
    with tempfile.TemporaryDirectory(prefix="mtr-reload-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in plain.items()},
                  str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        model, info = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "lm_head" not in k or not cfg.get("tie_word_embeddings")]
    if missing or info.get("unexpected_keys"):
        raise CompatibilityError(
            f"the export in {directory} does not match its config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(info.get('unexpected_keys', []))[:5]}", path="stages")
    counts: dict[str, int] = {}
    modules = dict(model.named_modules())
    for name, kind in decoded.items():
        module = modules.get(name)
        if module is None:  # fused into a transformers experts module: weights decoded, inputs not hooked
            kind += "-experts"
        else:
            module.register_forward_pre_hook(_input_hook(*hooks[name]))
        counts[kind] = counts.get(kind, 0) + 1
    model.to(device).eval()
    return model, dict(sorted(counts.items()))


def _input_hook(pqs: Any, in_scale: Any, act: str) -> Any:
    pqs = pqs.float() if pqs is not None else None
    scale = in_scale.float() if in_scale is not None else None

    def hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if pqs is not None:
            x = x * pqs.to(x.device)
        if scale is not None:
            s = scale.to(x.device)
            x = _int8_qdq(x, s) if act == "int8" else _fp8_qdq(x, s)
        return (x, *args[1:])

    return hook


def read_quant_config(directory: Path) -> dict[str, Any] | None:
    f = directory / "hf_quant_config.json"
    return json.loads(f.read_text())["quantization"] if f.is_file() else None
