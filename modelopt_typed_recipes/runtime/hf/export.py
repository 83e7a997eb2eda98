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
        except (ValueError, NotImplementedError, AssertionError) as exc:
            raise CompatibilityError(f"ModelOpt's HF export cannot write this model: {exc}", path=path) from None
    else:
        from modelopt.torch.export.plugins.vllm_fakequant_hf import export_hf_vllm_fq_checkpoint

        export_hf_vllm_fq_checkpoint(model, export_dir=str(directory))
    tokenizer.save_pretrained(str(directory))
    return sorted(p.name for p in directory.iterdir())


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
    scale = t.get("weight_scale")
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
    """A transformers model (fp32) that computes what the exported checkpoint says; and layer counts by format."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads((directory / "config.json").read_text())
    cfg.pop("quantization_config", None)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k not in ("architectures",)})
    config.architectures = cfg.get("architectures")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state: dict[str, Any] = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(f)))

    # group quantized tensors by layer
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
    counts: dict[str, int] = {}
    hooks: dict[str, tuple[Any, Any, str]] = {}
    for name, extra in layers.items():
        wkey = f"{name}.weight"
        if wkey not in plain or "weight_scale" not in extra:
            continue
        dense, kind = decode_weight({"weight": plain[wkey], **extra})
        plain[wkey] = dense
        counts[kind] = counts.get(kind, 0) + 1
        act = None
        if "input_scale" in extra:
            act = "int8" if kind == "int8" else "fp8"
        hooks[name] = (extra.get("pre_quant_scale"), extra.get("input_scale"), act or "")
    result = model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in plain.items()},
                                   strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise CompatibilityError(
            f"the export in {directory} does not match its config: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}", path="stages")
    if config.tie_word_embeddings:
        model.tie_weights()
    for name, (pqs, in_scale, act) in hooks.items():
        module = model.get_submodule(name)
        module.register_forward_pre_hook(_input_hook(pqs, in_scale, act))
    model.to(device).eval()
    return model, counts


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
