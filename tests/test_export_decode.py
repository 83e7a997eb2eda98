"""The export re-loader's decoding against ModelOpt's own quantizers, on the CPU.

``runtime/hf/export.decode_weight`` reads what ModelOpt 0.47 writes; here each stored layout is made by
ModelOpt itself (``NVFP4QTensor``, ``MXFP8QTensor``, ``pack_int4_in_uint8``, and a real
``export_hf_checkpoint`` of a W4A16-NVFP4 model, which ModelOpt runs on the CPU) and must decode to
ModelOpt's own dequantized values. The same formats on CUDA, end to end with perplexity, are in
``tests/test_hf_export_gpu.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from modelopt_typed_recipes.runtime.hf import export


@pytest.mark.parametrize("shape", [(8, 64), (3, 16, 32), (1, 16)])
def test_nvfp4_decodes_to_modelopts_dequantized_values(shape: tuple[int, ...]) -> None:
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    torch.manual_seed(0)
    w = torch.randn(shape) * 0.05
    q, scale, scale2 = NVFP4QTensor.quantize(w, 16)
    assert q._quantized_data.shape[-1] == shape[-1] // 2 and scale.dtype == torch.float8_e4m3fn
    want = q.dequantize(dtype=torch.float32, scale=scale, double_scale=scale2, block_sizes={-1: 16})
    got, kind = export.decode_weight({"weight": q._quantized_data, "weight_scale": scale, "weight_scale_2": scale2})
    assert kind == "nvfp4" and got.shape == w.shape
    assert torch.equal(got, want)
    assert (got - w).abs().max() < 0.5 * w.abs().max()  # a real quantization, not an identity


def test_nvfp4_activation_rounding_matches_modelopts_quantizer() -> None:
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    torch.manual_seed(1)
    x = torch.randn(4, 7, 64)
    global_scale = x.abs().amax() / (6.0 * 448.0)  # what ModelOpt exports as input_scale
    q, scale, scale2 = NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=global_scale)
    want = q.dequantize(dtype=torch.float32, scale=scale, double_scale=scale2, block_sizes={-1: 16})
    assert torch.allclose(export._nvfp4_qdq(x, global_scale), want, rtol=0, atol=1e-6)


def test_mxfp8_decodes_to_modelopts_dequantized_values() -> None:
    from modelopt.torch.quantization.qtensor.mxfp8_tensor import MXFP8QTensor

    torch.manual_seed(2)
    w = torch.randn(16, 96) * torch.logspace(-3, 1, 96)
    q, scale = MXFP8QTensor.quantize(w)
    want = q.dequantize(dtype=torch.float32, scale=scale)
    got, kind = export.decode_weight({"weight": q._quantized_data, "weight_scale": scale})
    assert kind == "mxfp8" and torch.equal(got, want)
    assert torch.equal(export._mxfp8_qdq(w), want)  # activations: the same per-32 rule, no stored scale


def test_int4_awq_decodes_modelopts_packing() -> None:
    from modelopt.torch.export.quant_utils import pack_int4_in_uint8

    torch.manual_seed(3)
    w = torch.randn(8, 256)
    scale = (w.reshape(8, -1, 128).abs().amax(-1) / 7).half()
    packed = pack_int4_in_uint8(w, scale, 128)
    got, kind = export.decode_weight({"weight": packed, "weight_scale": scale})
    want = (w / scale.float().repeat_interleave(128, 1)).round().clamp(-8, 7) * scale.float().repeat_interleave(128, 1)
    assert kind == "int4" and torch.allclose(got, want, atol=1e-6)


def test_a_w4a16_nvfp4_export_reloads_to_the_fake_quantized_weights(tmp_path: Path) -> None:
    """ModelOpt quantizes (weights only: no forward, so the CPU can) and exports; ``load_export`` re-reads."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      architectures=["LlamaForCausalLM"])
    model = LlamaForCausalLM(cfg).eval()
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("_proj",))}
    mtq.quantize(model, mtq.W4A16_NVFP4_CFG, forward_loop=None)
    export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=str(tmp_path))
    algo = json.loads((tmp_path / "hf_quant_config.json").read_text())["quantization"]["quant_algo"]
    assert algo == "W4A16_NVFP4"
    reloaded, counts = export.load_export(tmp_path)
    assert counts == {"nvfp4": len(original)}
    stored = load_file(str(tmp_path / "model.safetensors"))
    modules = dict(reloaded.named_modules())
    for name, w in original.items():
        packed, scale, scale2 = (stored[f"{name}.{k}"] for k in ("weight", "weight_scale", "weight_scale_2"))
        assert packed.shape == (w.shape[0], w.shape[1] // 2)  # two values per byte: half the columns
        q = NVFP4QTensor(w.shape, torch.float32, packed)
        want = q.dequantize(dtype=torch.float32, scale=scale, double_scale=scale2, block_sizes={-1: 16})
        got = modules[name].weight.detach()
        assert torch.equal(got, want), name
        # and it is the original weight, quantized: within half an FP4 step of each 16-value block
        step = (scale.float() * scale2).repeat_interleave(16, dim=1) * 2.0
        assert bool(((got - w).abs() <= step / 2 + 1e-3 * float(w.abs().max())).all()), name
