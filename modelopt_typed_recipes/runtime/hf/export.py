"""Write ModelOpt's unified Hugging Face checkpoint, and load one back to measure what was written.

``export`` calls ``modelopt.torch.export.export_hf_checkpoint`` (the format TensorRT-LLM, vLLM and
SGLang read: low-precision weights plus ``weight_scale``/``input_scale``/``pre_quant_scale`` tensors and
``hf_quant_config.json``) and adds the tokenizer. ``vllm_fakequant`` writes BF16 weights plus ModelOpt's
quantizer state for vLLM's fake-quant reload.

transformers has no loader for ``quant_method: modelopt`` checkpoints, so ``load_export`` does what a
serving engine does, in plain torch: it builds the transformers model from the exported ``config.json``,
decodes every quantized weight from the stored integers/FP8/FP4 values and their scales (FP8 per tensor,
INT8 per channel, INT4 in blocks with two values per byte, W4A8's FP8 second scale, NVFP4's two E2M1
values per byte with FP8 scales per 16 values times a per-tensor second scale, MXFP8's power-of-two
scales per 32 values), and quantizes each quantized layer's input as the format says (FP8 or INT8 with
the stored ``input_scale`` after ``pre_quant_scale``, NVFP4 per 16 values under ``input_scale``, MXFP8
per 32 values). Its perplexity is
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
    weights_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if fmt == "hf":
        from modelopt.torch.export import export_hf_checkpoint

        try:
            export_hf_checkpoint(model, dtype=weights_dtype, export_dir=str(directory))
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


# E2M1 (FP4) by its 4-bit code, sign in the high bit: ModelOpt's NVFP4 code table
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
E2M1_MAX = 6.0
NVFP4_BLOCK = 16
MXFP8_BLOCK = 32


def _unpack_fp4(packed: Any) -> Any:
    """NVFP4 weights as stored, ``(..., in/2)`` bytes, to ``(..., in)`` floats: two E2M1 codes per byte
    along the input dimension, the even column in the low nibble, the odd one in the high nibble."""
    import torch

    p = packed.view(torch.uint8)
    codes = torch.stack([p & 0x0F, p >> 4], dim=-1).reshape(*p.shape[:-1], p.shape[-1] * 2)
    return torch.tensor(E2M1_VALUES, device=p.device)[codes.long()]


def _per_block(scale: Any, width: int) -> Any:
    """A scale per block of the last dimension, repeated to ``width`` columns."""
    return scale.repeat_interleave(width // scale.shape[-1], dim=-1)


def _round_e2m1(x: Any) -> Any:
    """Round to the nearest E2M1 value (magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6), keeping the sign."""
    import torch

    grid = torch.tensor(E2M1_VALUES[:8], device=x.device, dtype=x.dtype)
    mids = (grid[1:] + grid[:-1]) / 2
    mag = grid[torch.bucketize(x.abs().clamp(max=E2M1_MAX), mids)]
    return torch.where(x < 0, -mag, mag)


def _nvfp4_qdq(x: Any, global_scale: Any) -> Any:
    """NVFP4 activations as the kernel quantizes them: per 16 values an FP8 scale (of ``amax / 6`` under
    the stored per-tensor ``input_scale``), then E2M1 values."""
    import torch

    shape = x.shape
    blocks = x.reshape(*shape[:-1], -1, NVFP4_BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    scale = (amax / E2M1_MAX / global_scale).clamp(max=FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * global_scale
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (_round_e2m1(blocks / scale) * scale).reshape(shape)


def _mxfp8_qdq(x: Any) -> Any:
    """MXFP8 activations: per 32 values a power-of-two scale ``2**ceil(log2(amax / 448))``, then FP8."""
    import torch

    shape = x.shape
    blocks = x.reshape(*shape[:-1], -1, MXFP8_BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    scale = torch.exp2(torch.ceil(torch.log2(amax / FP8_MAX)).clamp(-127, 127))
    return (blocks / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype).mul(scale).reshape(shape)


def decode_weight(t: dict[str, Any]) -> tuple[Any, str]:
    """(dense fp32 weight, weight format) from one layer's stored tensors.

    The format follows from the stored dtypes, as ModelOpt 0.47 writes them: FP8 weights with an FP32
    scale (per tensor or per channel) or with a ``uint8`` E8M0 exponent per 32 values (MXFP8); ``int8``
    weights with a per-channel scale; ``uint8`` weights holding two 4-bit values per byte, NVFP4 when the
    block scales are FP8 (packed along the input dimension, 16 values per scale, times ``weight_scale_2``),
    INT4 otherwise (packed along the output dimension; W4A8 adds an FP8 step under ``weight_scale_2``).
    """
    import torch

    w = t["weight"]
    scale: Any = t.get("weight_scale")
    if w.dtype == torch.float8_e4m3fn:
        if scale.dtype == torch.uint8:  # MXFP8: E8M0, value = 2 ** (exponent - 127)
            return w.float() * _per_block(torch.exp2(scale.float() - 127), w.shape[-1]), "mxfp8"
        s = scale.float()
        if s.dim() == 1:
            s = s[:, None]
        return w.float() * s, "fp8"
    if w.dtype == torch.int8:
        return w.float() * scale.float().reshape(-1, 1), "int8"
    if w.dtype == torch.uint8 and scale.dtype == torch.float8_e4m3fn:  # NVFP4
        q = _unpack_fp4(w)
        s2 = t["weight_scale_2"].float()
        if s2.numel() > 1:  # one per expert of a stacked expert weight
            s2 = s2.reshape(-1, *([1] * (q.dim() - 1)))
        return q * _per_block(scale.float() * s2, q.shape[-1]), "nvfp4"
    if w.dtype == torch.uint8:
        q = _unpack_int4(w).float()
        dense = q * _per_block(scale.float(), q.shape[1])
        if "weight_scale_2" in t:  # W4A8: the kernel turns int4 into FP8 with this second scale
            dense = _fp8_qdq(dense, t["weight_scale_2"].float())
            return dense, "int4+fp8"
        return dense, "int4"
    return w.float(), "dense"


def activation_format(kind: str, has_input_scale: bool) -> str:
    """How a serving engine quantizes the input of a layer whose weights are ``kind`` ("" = not at all)."""
    if kind == "mxfp8":
        return "mxfp8"  # dynamic: no stored scale
    if not has_input_scale:
        return ""
    return {"int8": "int8", "nvfp4": "nvfp4"}.get(kind, "fp8")


def load_export(directory: Path, *, device: str = "cpu") -> tuple[Any, dict[str, int]]:
    """A transformers model (fp32) that computes what the exported checkpoint says; and layer counts by format.

    The decoded weights are written to a temporary plain checkpoint and loaded with
    ``AutoModelForCausalLM.from_pretrained``, so transformers' own key mapping applies (per-expert MoE
    weights are fused the way it fuses Hub checkpoints). Inputs of the quantized layers that exist as
    modules get their stored ``pre_quant_scale``/``input_scale``; fused expert weights are decoded but
    their per-expert activation scales cannot be hooked (counted as ``...-experts`` layers).
    """
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
        act = activation_format(kind, "input_scale" in extra)
        hooks[name] = (extra.get("pre_quant_scale"), extra.get("input_scale"), act)

    cfg = json.loads((directory / "config.json").read_text())
    cfg.pop("quantization_config", None)
    cfg.pop("torch_dtype", None)  # transformers 5 reads ``dtype`` and warns that ``torch_dtype`` is deprecated
    cfg["dtype"] = "float32"
    from ...plan.outputs import reload_scratch

    with reload_scratch() as tmp:
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
        if act == "mxfp8":
            x = _mxfp8_qdq(x)
        elif scale is not None and act:
            s = scale.to(x.device)
            x = {"int8": _int8_qdq, "nvfp4": _nvfp4_qdq}.get(act, _fp8_qdq)(x, s)
        return (x, *args[1:])

    return hook


def read_quant_config(directory: Path) -> dict[str, Any] | None:
    f = directory / "hf_quant_config.json"
    return json.loads(f.read_text())["quantization"] if f.is_file() else None
