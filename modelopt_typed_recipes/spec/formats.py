"""Quantization formats as plain data: what ModelOpt calls them and what they cost.

One table serves the architecture's ``weight_bytes``, the memory planner, the recipe checks
(which GPU runs a format, which formats export) and the CLI, so the facts live in one place.
"""

from __future__ import annotations

import attrs

from ..errors import UnknownNameError, did_you_mean


@attrs.frozen(kw_only=True)
class QuantFormat:
    """One weight/activation format and its ModelOpt preset."""

    name: str
    preset: str  # the mtq.*_CFG name in ModelOpt 0.47
    weight_bits: float  # effective bits per weight, block scales included
    activation_bits: int | None  # None: weights only
    needs_cuda: bool  # fake-quant kernels exist only on CUDA
    min_compute_capability: tuple[int, int] = (0, 0)  # real (not fake) kernels; informational
    hf_exportable: bool = True  # ModelOpt's unified HF export writes it
    description: str = ""

    @property
    def scale_bits(self) -> float:
        """Bits of block scale per weight: ``weight_bits`` less the 4- or 8-bit element (NVFP4: one FP8 scale
        per 16 values = 0.5; per-tensor FP8: 0)."""
        return self.weight_bits % 1


_FORMATS = (
    QuantFormat(name="bf16", preset="", weight_bits=16, activation_bits=16, needs_cuda=False,
                description="no quantization"),
    QuantFormat(name="fp8", preset="FP8_DEFAULT_CFG", weight_bits=8, activation_bits=8, needs_cuda=False,
                min_compute_capability=(8, 9), description="FP8 E4M3 weights and activations, per-tensor scales"),
    QuantFormat(name="fp8_blockwise", preset="FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG", weight_bits=8 + 32 / (128 * 128),
                activation_bits=None, needs_cuda=False, min_compute_capability=(8, 9),
                description="FP8 weights with 128x128 block scales"),
    QuantFormat(name="nvfp4", preset="NVFP4_DEFAULT_CFG", weight_bits=4 + 8 / 16, activation_bits=4, needs_cuda=True,
                min_compute_capability=(10, 0), description="NVFP4 (E2M1, FP8 scale per 16 values)"),
    QuantFormat(name="nvfp4_awq", preset="NVFP4_AWQ_LITE_CFG", weight_bits=4 + 8 / 16, activation_bits=4,
                needs_cuda=True, min_compute_capability=(10, 0), description="NVFP4 with AWQ-lite scaling"),
    QuantFormat(name="int4_awq", preset="INT4_AWQ_CFG", weight_bits=4 + 16 / 128, activation_bits=None,
                needs_cuda=False, hf_exportable=False, description="INT4 weights, block 128, AWQ"),
    QuantFormat(name="w4a8_awq", preset="W4A8_AWQ_BETA_CFG", weight_bits=4 + 16 / 128, activation_bits=8,
                needs_cuda=False, min_compute_capability=(8, 9), hf_exportable=False,
                description="INT4 weights (AWQ) with FP8 activations"),
    QuantFormat(name="int8_sq", preset="INT8_SMOOTHQUANT_CFG", weight_bits=8, activation_bits=8, needs_cuda=False,
                hf_exportable=False, description="INT8 SmoothQuant, per-channel weights"),
    QuantFormat(name="int8", preset="INT8_DEFAULT_CFG", weight_bits=8, activation_bits=8, needs_cuda=False,
                hf_exportable=False, description="INT8 weights and activations"),
    QuantFormat(name="mxfp8", preset="MXFP8_DEFAULT_CFG", weight_bits=8 + 8 / 32, activation_bits=8, needs_cuda=True,
                min_compute_capability=(10, 0), hf_exportable=False, description="MXFP8 (E8M0 scale per 32)"),
    QuantFormat(name="mxfp4", preset="MXFP4_DEFAULT_CFG", weight_bits=4 + 8 / 32, activation_bits=4, needs_cuda=True,
                min_compute_capability=(10, 0), hf_exportable=False, description="MXFP4 (E8M0 scale per 32)"),
)

FORMATS: dict[str, QuantFormat] = {f.name: f for f in _FORMATS}
FORMAT_BY_PRESET: dict[str, QuantFormat] = {f.preset: f for f in _FORMATS if f.preset}


def get_format(name: str) -> QuantFormat:
    """Look a format up by short name (``nvfp4``) or ModelOpt preset (``NVFP4_DEFAULT_CFG``)."""
    if name in FORMATS:
        return FORMATS[name]
    if name in FORMAT_BY_PRESET:
        return FORMAT_BY_PRESET[name]
    lowered = name.lower()
    if lowered in FORMATS:
        return FORMATS[lowered]
    raise UnknownNameError(
        f"unknown quantization format {name!r}",
        hint=did_you_mean(name, [*FORMATS, *FORMAT_BY_PRESET]) or f"known: {', '.join(FORMATS)}",
    )
