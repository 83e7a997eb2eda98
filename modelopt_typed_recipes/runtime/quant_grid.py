"""Trained quantized weights put on their quantizers' grid before ModelOpt's export writes them (both backends).

After a distill stage trained a quantized model (QAT, QAD), the weights have moved but each weight quantizer keeps
the range (``amax``) calibrated before training. In memory, fake quantization saturates a weight beyond that range
at the format's largest value. ModelOpt 0.47's export divides the weight by the scale from the same ``amax`` and
casts (``to_quantized_weight``: ``(w / scale).to(torch.float8_e4m3fn)``) without clamping: PyTorch 2.11 casts a
value that rounds beyond 448 to NaN (E4M3FN has no infinity); later releases saturate (pytorch/pytorch#178817).
Within the range the export still rounds twice (to the export dtype, then to FP8), where fake quantization rounds
once, so a few per cent of its codes are a step away from the ones the model was trained and measured with.

``snap_to_grid`` replaces each such weight by its fake-quantized value, which is what the model in memory computes
with. Quantizing a value already on the grid gives back its own code (the export dtype moves it by at most 2**-8
of itself, less than half a step of FP8, INT8 or INT4), so the export writes the codes the model in memory uses,
bit for bit, and fake quantization of the snapped weight is the snapped weight: the model in memory computes what
it computed before. An untrained model is never snapped, so a PTQ export stays ModelOpt's own, byte for byte.
W4A8 (INT4 blocks, then FP8 per tensor) is snapped with its INT4 step: the export writes INT4 codes with the FP8
step's scale beside them, and the FP8 step over those codes is what the model computes with (its FP8 values are
off the INT4 grid). Training reaches the code -8 (ModelOpt's INT4 range is [-8, 7]; calibrated blocks end at +-7),
which can take the FP8 step past 448: in memory it saturates, as a GPU's conversion to E4M3 does. Fused MoE experts
(transformers' 3-D ``gate_up_proj``/``down_proj``) are snapped per expert: ModelOpt's quant module yields each
expert's slice with that expert's quantizer, the one its export splits into ``gate_proj``/``up_proj``/``down_proj``
(GPT-OSS's and Llama 4's experts, quantized transposed and exported fused, come as one transposed view).
Formats whose export derives the scales from the weight itself (NVFP4, MXFP8, FP8 blocks) are left as they are:
their scales follow the trained weights, and ModelOpt clamps the NVFP4 block scales and E2M1 values.
A quantized ``lm_head`` tied to the unquantized input embedding (``tie_word_embeddings``, a recipe file that enables
``*lm_head*``) gets its own snapped copy: ModelOpt 0.47's export writes it as its own tensor (FP8 codes and scales
beside the embedding's plain weights; the tied-weight dedup keeps both, and transformers then declines to re-tie
them), so the copy is what it stores, and the embedding keeps computing with the weights it was trained with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch

GridFormat = Literal["fp8", "int4", "int8"]
GRID_FORMATS: tuple[GridFormat, ...] = get_args(GridFormat)
"""The formats ``grid_format`` names, summed over the ranks in this order: one list, which the type checker holds
``grid_format`` to, so a new format cannot be left out of the sum."""


def grid_format(quantizer: Any) -> GridFormat | None:
    """The format of a weight quantizer whose export scale is its calibrated ``amax`` over the format's largest
    value (FP8 per tensor or per channel, INT8, INT4 in static blocks); None for any other."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    q = quantizer
    if (not isinstance(q, TensorQuantizer) or not q.is_enabled or not q.fake_quant or q.amax is None
            or q.backend is not None or q.pre_quant_scale is not None or q.rotate_is_enabled):
        return None
    blocks = q.block_sizes
    if q.num_bits == (4, 3) and not blocks:
        return "fp8"
    if q.num_bits == 8 and not blocks:
        return "int8"
    if q.num_bits == 4 and blocks and blocks.get("type", "static") == "static" and "scale_bits" not in blocks:
        return "int4"
    return None


def _beyond(weight: Any, quantizer: Any) -> int:
    """How many values lie outside the quantizer's range (fake quantization saturates them)."""
    amax = quantizer.amax.float()
    x = weight.detach().float().abs()
    if quantizer.block_sizes:  # INT4 blocks as ModelOpt's forward makes them, whichever way the recipe names the
        # axes (-1 or 1, 2-D tiles): padded to whole blocks (zeros are never beyond), amax one per block
        quantizer._setup_for_blockquant(x)
        x = quantizer._process_for_blockquant(x)
    return int((x > amax).sum())


def _own_copy(module: Any, weight: Any) -> Any:
    """Untie ``weight`` from the other modules that share it: ``module`` gets a copy of it as its own parameter
    (returned). None when ``module`` does not hold it as a parameter of its own (left as it is)."""
    for name, param in module.named_parameters(recurse=False):
        if param is weight:
            own = torch.nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
            setattr(module, name, own)
            return own
    return None


def snap_to_grid(model: Any, *, counts_here: Callable[[Any, Any], tuple[bool, bool]] | None = None) -> dict[str, Any]:
    """Each weight of a grid format (``grid_format``) replaced in place by its fake-quantized value; returns the
    weights snapped by format and how many values were beyond their quantizer's range. W4A8's weight (INT4,
    then FP8) is snapped with its INT4 step, the one whose codes the export writes.

    A model whose parts several ranks hold passes ``counts_here(module, weight)`` (Megatron-Core's:
    ``distributed.counts_here``): whether this rank counts the weight, and its values; the figures are then summed
    over the ranks (every rank calls this), so they are the whole model's, each weight and value counted once.
    Without it every weight here counts (one process holds the model). A weight another module shares (a quantized
    ``lm_head`` tied to the input embedding) is replaced in this module by a snapped copy (``_own_copy``): the
    export writes it apart from the embedding, and snapping the shared tensor would move the embedding too."""
    from modelopt.torch.quantization.nn import QuantModule, SequentialQuantizer

    snapped: dict[GridFormat, int] = {}
    beyond = 0
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, QuantModule):
                continue
            for weight, quantizer in module.iter_weights_for_calibration():
                q = quantizer[0] if isinstance(quantizer, SequentialQuantizer) else quantizer
                fmt = grid_format(q)
                if fmt is None or not isinstance(weight, torch.Tensor):
                    continue
                if uses[id(weight)] > 1:  # tied (lm_head sharing the embedding): feeds unquantized work too
                    weight = _own_copy(module, weight)
                    if weight is None:
                        continue
                weight_here, values_here = counts_here(module, weight) if counts_here else (True, True)
                beyond += _beyond(weight, q) if values_here else 0
                weight.data.copy_(q(weight.float().contiguous()).to(weight.dtype))
                snapped[fmt] = snapped.get(fmt, 0) + int(weight_here)
    if counts_here is not None:
        from .distributed import sum_each_over_ranks

        *totals, beyond = sum_each_over_ranks([snapped.get(f, 0) for f in GRID_FORMATS] + [beyond])
        snapped = dict(zip(GRID_FORMATS, totals))
    return {"weights": {f: n for f, n in sorted(snapped.items()) if n}, "values_beyond_range": beyond}
