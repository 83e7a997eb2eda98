"""``runtime.quant_grid``: weights trained past their calibrated ranges, put on the quantizers' grid, export to
the codes the model in memory computes with, for each format whose export scale is the calibrated range.

The weights of a ModelOpt-quantized linear layer are moved as training moves them (scaled past ``amax``, so some
saturate in memory); ModelOpt's own export functions then compute the stored values (``get_weight_scaling_factor``
and ``to_quantized_weight``, as both its Hugging Face and its Megatron-Core exporters call them per layer).
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
mtq = pytest.importorskip("modelopt.torch.quantization")

FORMATS = {"fp8": "FP8_DEFAULT_CFG", "fp8_per_channel": "FP8_PER_CHANNEL_PER_TOKEN_CFG",
           "int8": "INT8_WEIGHT_ONLY_CFG", "int4": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"}


def quantized_linear(preset: str, seed: int, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """A linear layer quantized with ModelOpt's ``preset``; its fp32 weights hold values of ``dtype`` (the run's)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(model[0].weight.to(dtype).float())
    mtq.quantize(model, copy.deepcopy(getattr(mtq, preset)), lambda m: m(torch.randn(4, 256)))
    return model


def exported(layer: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight as ModelOpt's export stores it, dequantized (per tensor, channel or block of 128)."""
    from modelopt.torch.export.quant_utils import (
        get_quantization_format,
        get_weight_scaling_factor,
        to_quantized_weight,
    )

    from modelopt_typed_recipes.runtime.hf.export import decode_weight

    fmt = get_quantization_format(layer)
    scale = get_weight_scaling_factor(layer)
    stored = to_quantized_weight(layer.weight.detach().to(dtype), scale, fmt, None, 128)
    return decode_weight({"weight": stored, "weight_scale": scale})[0]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(FORMATS)), seed=st.integers(0, 2**16), grow=st.floats(1.05, 1.5),
       dtype=st.sampled_from([torch.bfloat16, torch.float16]))
def test_snapped_weights_export_to_what_the_model_computes_with(fmt: str, seed: int, grow: float,
                                                               dtype: torch.dtype) -> None:
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    model = quantized_linear(FORMATS[fmt], seed, dtype)
    layer = model[0]
    with torch.no_grad():  # trained past the calibrated range: the largest values saturate in memory
        layer.weight.copy_((layer.weight * grow).to(dtype).float())
        in_memory = layer.weight_quantizer(layer.weight.detach())
    report = snap_to_grid(model)
    family = "fp8" if fmt.startswith("fp8") else fmt
    assert report["weights"] == {family: 1} and report["values_beyond_range"] > 0
    # the model in memory computes what it computed; the export stores exactly that
    with torch.no_grad():
        assert torch.equal(layer.weight_quantizer(layer.weight.detach()), in_memory)
    assert torch.allclose(exported(layer, dtype), in_memory, rtol=2**-20, atol=0)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_unsnapped_weights_past_their_range_export_other_values(fmt: str) -> None:
    """What the snap is for: the same trained weights, not snapped, export to values the model does not compute
    with (FP8: beyond 448 before the cast, NaN with PyTorch 2.11; integers: -128 / -8 where memory has -127 / -7)."""
    model = quantized_linear(FORMATS[fmt], 7)
    layer = model[0]
    with torch.no_grad():
        layer.weight.mul_(1.3)
        in_memory = layer.weight_quantizer(layer.weight.detach())
    assert not torch.allclose(exported(layer, torch.bfloat16), in_memory, rtol=2**-20, atol=0)


def test_formats_whose_export_reads_the_weight_are_left_as_they_are() -> None:
    """NVFP4 (and MXFP8, FP8 blocks) export scales derived from the weights themselves: nothing to snap."""
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    from modelopt_typed_recipes.runtime.quant_grid import grid_format

    nvfp4 = TensorQuantizer(QuantizerAttributeConfig(
        num_bits=(2, 1), block_sizes={-1: 16, "type": "dynamic", "scale_bits": (4, 3)}))
    nvfp4.amax = torch.tensor(1.0)
    fp8 = TensorQuantizer(QuantizerAttributeConfig(num_bits=(4, 3)))
    assert grid_format(fp8) is None  # not calibrated: no range to snap to
    fp8.amax = torch.tensor(1.0)
    assert (grid_format(nvfp4), grid_format(fp8)) == (None, "fp8")
    fp8.disable()
    assert grid_format(fp8) is None
