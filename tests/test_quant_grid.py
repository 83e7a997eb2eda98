"""``runtime.quant_grid``: weights trained past their calibrated ranges, put on the quantizers' grid, export to
the codes the model in memory computes with, for each format whose export scale is the calibrated range.

The weights of a ModelOpt-quantized linear layer are moved as training moves them (scaled past ``amax``, so some
saturate in memory); ModelOpt's own export functions then compute the stored values (``get_weight_scaling_factor``
and ``to_quantized_weight``, as both its Hugging Face and its Megatron-Core exporters call them per layer).
"""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
mtq = pytest.importorskip("modelopt.torch.quantization")

FORMATS = {"fp8": "FP8_DEFAULT_CFG", "fp8_per_channel": "FP8_PER_CHANNEL_PER_TOKEN_CFG",
           "int8": "INT8_WEIGHT_ONLY_CFG", "int4": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "w4a8": "W4A8_AWQ_BETA_CFG"}
FAMILY = {"fp8_per_channel": "fp8", "w4a8": "int4"}  # the grid each is snapped to (W4A8: its INT4 step)


def quantized_linear(preset: str, seed: int, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """A linear layer quantized with ModelOpt's ``preset``; its fp32 weights hold values of ``dtype`` (the run's)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(model[0].weight.to(dtype).float())
    mtq.quantize(model, copy.deepcopy(getattr(mtq, preset)), lambda m: m(torch.randn(4, 256)))
    return model


def stored(layer: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The layer's tensors as ModelOpt's Hugging Face export computes them (W4A8 adds ``weight_scale_2``)."""
    from modelopt.torch.export.quant_utils import (
        get_quantization_format,
        get_weight_scaling_factor,
        get_weight_scaling_factor_2,
        to_quantized_weight,
    )

    fmt = get_quantization_format(layer)
    scale, scale_2 = get_weight_scaling_factor(layer), get_weight_scaling_factor_2(layer)
    scale_2 = None if scale_2 is None else scale_2.squeeze()
    tensors = {"weight": to_quantized_weight(layer.weight.detach().to(dtype), scale, fmt, scale_2, 128),
               "weight_scale": scale}
    return tensors if scale_2 is None else {**tensors, "weight_scale_2": scale_2}


def exported(layer: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight as ModelOpt's export stores it, dequantized (per tensor, channel or block of 128)."""
    from modelopt_typed_recipes.runtime.hf.export import decode_weight

    return decode_weight(stored(layer, dtype))[0]


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
    assert report["weights"] == {FAMILY.get(fmt, fmt): 1} and report["values_beyond_range"] > 0
    # the model in memory computes what it computed; the export stores exactly that
    with torch.no_grad():
        assert torch.equal(layer.weight_quantizer(layer.weight.detach()), in_memory)
    assert torch.allclose(exported(layer, dtype), in_memory, rtol=2**-20, atol=0)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_unsnapped_weights_past_their_range_export_other_values(fmt: str) -> None:
    """What the snap is for: the same trained weights, not snapped, export to values the model does not compute
    with (FP8: beyond 448 before the cast, NaN with PyTorch 2.11; every format: weights rounded to the export dtype
    before their grid, some a step off where memory rounds once; ModelOpt's integer ranges, [-128, 127] and [-8, 7],
    are the export's)."""
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


def test_w4a8_exports_the_int4_codes_its_fp8_step_computes_with() -> None:
    """W4A8 (ModelOpt's ``W4A8_AWQ_BETA_CFG``): INT4 per block of 128, then FP8 per tensor. The export stores INT4
    codes, their block scales and the FP8 step's scale (``weight_scale_2``), so the snap uses the INT4 step: the
    stored codes are the codes in memory, and the FP8 step over them gives the in-memory weight. Trained weights
    (fp32, as training leaves them) need the snap: rounded to bf16 first, dozens of the export's codes are a
    step off. Snapping with both steps would be wrong: FP8 values are not on the INT4 grid."""
    from modelopt_typed_recipes.runtime.hf.export import _unpack_int4, decode_weight
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    def trained() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
        model = quantized_linear(FORMATS["w4a8"], 3)
        layer = model[0]
        int4 = layer.weight_quantizer[0]
        with torch.no_grad():
            layer.weight.mul_(1.3)  # fp32 values, off the bf16 grid
            in_memory = layer.weight_quantizer(layer.weight.detach())
            step = (int4.amax / 7).reshape(-1, 1)
            codes = (int4(layer.weight.detach()).reshape(-1, 128) / step).round().reshape(layer.weight.shape)
        return model, in_memory, codes

    def written(layer: torch.nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        t = stored(layer, torch.bfloat16)
        return t, _unpack_int4(t["weight"]).float()

    model, in_memory, codes = trained()
    layer = model[0]
    assert not torch.equal(written(layer)[1], codes)  # unsnapped: rounded twice
    assert snap_to_grid(model)["weights"] == {"int4": 1}
    with torch.no_grad():
        assert torch.equal(layer.weight_quantizer(layer.weight.detach()), in_memory)
    t, exported_codes = written(layer)
    assert torch.equal(exported_codes, codes) and int((codes == -8).sum()) > 0  # training reaches -8: ModelOpt's
    # INT4 range is [-8, 7], and a calibrated block's largest value is +-7
    assert torch.allclose(decode_weight(t)[0], in_memory, rtol=2**-20, atol=0)
    # a -8 code in a block whose range is near the tensor's takes the FP8 step past 448 (up to 512): in memory it
    # saturates at 448, as a GPU's conversion to E4M3 does (PTX's cvt to E4M3 is always .satfinite)
    fp8_input = exported_codes * t["weight_scale"].repeat_interleave(128, dim=-1) / t["weight_scale_2"]
    assert float(fp8_input.max()) <= 448 * (1 + 2**-20) and float(fp8_input.min()) < -464

    both_steps, in_memory, codes = trained()
    with torch.no_grad():
        both_steps[0].weight.copy_(in_memory)
    assert not torch.equal(written(both_steps[0])[1], codes)


MOE_FORMATS = {"fp8": "FP8_DEFAULT_CFG", "fp8_per_channel": "FP8_PER_CHANNEL_PER_TOKEN_CFG",
               "int8": "INT8_WEIGHT_ONLY_CFG", "int8_sq": "INT8_SMOOTHQUANT_CFG"}


@pytest.mark.parametrize("fmt", sorted(MOE_FORMATS))
def test_fused_moe_experts_are_snapped_and_export_what_the_model_computes_with(fmt: str, tmp_path) -> None:
    """transformers 5 stores MoE experts fused, as 3-D ``gate_up_proj``/``down_proj`` parameters; ModelOpt quantizes
    them with a weight quantizer per expert and projection, and its Hugging Face export splits them into per-expert
    ``gate_proj``/``up_proj``/``down_proj``. The quant module yields each expert's slice with its quantizer, so
    the snap reaches every expert: ModelOpt's export of the tiny Qwen3-MoE (2 layers of 8 experts) writes the
    values the experts compute with in memory. (ModelOpt 0.47's export of INT4 fused experts fails earlier, in its
    AWQ re-smoothing of the experts.)"""
    import transformers
    from modelopt.torch.export import export_hf_checkpoint
    from safetensors.torch import load_file

    from modelopt_typed_recipes.bridges.hf_config import to_hf_config
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.hf.export import decode_weight
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    config = transformers.AutoConfig.for_model(**to_hf_config(get_arch("tiny-moe")))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokens = torch.randint(0, config.vocab_size, (8, 64))
    mtq.quantize(model, copy.deepcopy(getattr(mtq, MOE_FORMATS[fmt])), lambda m: m(tokens))
    layers = model.model.layers
    experts = [(i, layer.mlp.experts) for i, layer in enumerate(layers)]
    with torch.no_grad():  # trained past the calibrated ranges
        for _, e in experts:
            e.gate_up_proj.mul_(1.3)
            e.down_proj.mul_(1.3)
        in_memory = {i: [q(w.detach().clone()) for w, q in e.iter_weights_for_calibration()] for i, e in experts}
    report = snap_to_grid(model)
    n = config.num_experts
    attention = 4 * len(layers)
    family = fmt.split("_")[0]  # fp8 or int8
    assert report["weights"] == {family: attention + 2 * n * len(layers)}
    assert report["values_beyond_range"] > 0
    export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=str(tmp_path))
    state: dict[str, torch.Tensor] = {}
    for f in sorted(tmp_path.glob("*.safetensors")):
        state.update(load_file(str(f)))
    half = config.moe_intermediate_size
    compared = 0
    for i, values in in_memory.items():
        for x in range(n):
            gate_up, down = values[x], values[n + x]
            for proj, expected in (("gate_proj", gate_up[:half]), ("up_proj", gate_up[half:]), ("down_proj", down)):
                key = f"model.layers.{i}.mlp.experts.{x}.{proj}"
                tensors = {k: state[f"{key}.{k}"] for k in ("weight", "weight_scale") if f"{key}.{k}" in state}
                decoded, kind = decode_weight(tensors)
                assert kind == family, key
                assert torch.allclose(decoded, expected, rtol=2**-20, atol=0), key
                compared += 1
    assert compared == 3 * n * len(layers)


BMM_EXPERTS = {  # experts ModelOpt quantizes transposed, one quantizer for all of a layer's experts
    "gpt_oss": dict(model_type="gpt_oss", num_local_experts=4, intermediate_size=128, layer_types=["full_attention"]),
    "llama4_text": dict(model_type="llama4_text", num_local_experts=4, intermediate_size=128,
                        intermediate_size_mlp=256, moe_layers=[0], num_experts_per_tok=1),
}


@pytest.mark.parametrize("kind", sorted(BMM_EXPERTS))
def test_transposed_moe_experts_are_snapped_and_export_what_the_model_computes_with(kind: str, tmp_path) -> None:
    """GPT-OSS and Llama 4 keep their experts as 3-D ``(experts, in, out)`` weights that ModelOpt quantizes
    transposed and exports fused (one FP8 scale per projection): the snap writes through the transposed view
    its quant module yields, and the export stores the values the experts compute with in memory."""
    import transformers
    from modelopt.torch.export import export_hf_checkpoint
    from safetensors.torch import load_file

    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    config = transformers.AutoConfig.for_model(**BMM_EXPERTS[kind], vocab_size=256, hidden_size=128,
                                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                               head_dim=32)
    config.architectures = [{"gpt_oss": "GptOssForCausalLM", "llama4_text": "Llama4ForCausalLM"}[kind]]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    mtq.quantize(model, copy.deepcopy(mtq.FP8_DEFAULT_CFG), lambda m: m(torch.randint(0, 256, (4, 32))))
    name, experts = next((n, m) for n, m in model.named_modules() if n.endswith(".experts"))
    with torch.no_grad():  # trained past the calibrated ranges
        experts.gate_up_proj.mul_(1.3)
        experts.down_proj.mul_(1.3)
        in_memory = [q(w.contiguous()).transpose(-1, -2) for w, q in experts.iter_weights_for_calibration()]
    report = snap_to_grid(model)
    shared_expert = 3 if kind == "llama4_text" else 0  # Llama 4's shared expert: plain linear layers
    assert report["weights"] == {"fp8": 4 + 2 + shared_expert} and report["values_beyond_range"] > 0
    export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=str(tmp_path))
    state = load_file(str(next(tmp_path.glob("*.safetensors"))))
    for proj, expected in zip(("gate_up_proj", "down_proj"), in_memory, strict=True):
        weight, scale = state[f"{name}.{proj}"], state[f"{name}.{proj}_weight_scale"]
        assert weight.dtype == torch.float8_e4m3fn and scale.dim() == 0
        assert torch.allclose(weight.float() * scale.float(), expected, rtol=2**-20, atol=0), proj


@pytest.mark.parametrize("in_features", [64, 200])
def test_int4_blocks_padded_past_a_short_row_are_snapped_and_counted(in_features: int) -> None:
    """A row not a multiple of the block (128) is padded by ModelOpt to whole blocks, one amax each (64 inputs: one
    block a row; 200: two). The snap counts each value against its own block's range, instead of stopping the
    export with PyTorch's shape error."""
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, 32, bias=False))
    mtq.quantize(model, copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG), lambda m: m(torch.randn(4, in_features)))
    layer = model[0]
    quantizer = layer.weight_quantizer
    with torch.no_grad():
        layer.weight.mul_(1.3)
        in_memory = quantizer(layer.weight.detach())
    blocks = -(-in_features // 128)
    amax = quantizer.amax.float().reshape(32, blocks)
    values = layer.weight.detach().abs()
    beyond = sum(int((values[:, j * 128:(j + 1) * 128] > amax[:, j:j + 1]).sum()) for j in range(blocks))
    assert beyond > 0
    assert snap_to_grid(model) == {"weights": {"int4": 1}, "values_beyond_range": beyond}
    with torch.no_grad():
        assert torch.equal(layer.weight, in_memory) and torch.equal(quantizer(layer.weight.detach()), in_memory)


@pytest.mark.parametrize("blocks", [{1: 128, "type": "static"}, {-1: 128, -2: 128, "type": "static"}])
def test_int4_blocks_named_otherwise_are_snapped_and_counted_in_their_own_blocks(blocks: dict) -> None:
    """A ModelOpt recipe file may name the last axis ``1`` instead of ``-1``, or give 2-D blocks (128 x 128): ModelOpt
    quantizes both, one amax per block. The snap counts each value against its own block's range, as ModelOpt
    blocks it, instead of stopping the export after training with PyTorch's shape error."""
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256, bias=False))
    config = copy.deepcopy(mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)
    for entry in config["quant_cfg"]:
        if entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"] = {"num_bits": 4, "block_sizes": blocks}
    mtq.quantize(model, config, lambda m: m(torch.randn(4, 256)))
    layer, quantizer = model[0], model[0].weight_quantizer
    with torch.no_grad():
        layer.weight.mul_(1.3)
        in_memory = quantizer(layer.weight.detach())
    values = layer.weight.detach().abs()
    if -2 in blocks:  # amax per 128 x 128 tile
        amax = quantizer.amax.float().reshape(2, 2).repeat_interleave(128, 0).repeat_interleave(128, 1)
    else:  # amax per 128 values of a row
        amax = quantizer.amax.float().reshape(256, 2).repeat_interleave(128, 1)
    beyond = int((values > amax).sum())
    assert beyond > 0
    assert snap_to_grid(model) == {"weights": {"int4": 1}, "values_beyond_range": beyond}
    with torch.no_grad():
        assert torch.equal(layer.weight, in_memory) and torch.equal(quantizer(layer.weight.detach()), in_memory)


def test_a_quantized_output_layer_tied_to_the_embedding_exports_its_own_snapped_copy(tmp_path) -> None:
    """A recipe file may quantize ``lm_head`` of a model whose output layer is its input embedding (tied, as in
    Llama 3.2 1B or Qwen3 0.6B). ModelOpt 0.47's export writes that ``lm_head`` as its own tensor (FP8 codes,
    ``weight_scale``, ``input_scale``) beside the embedding's plain weights, with ``tie_word_embeddings`` left true
    in ``config.json``; transformers then declines to re-tie them. Snapping the shared tensor would move the
    unquantized embedding too, and not snapping it (trained past its range) casts |w / scale| beyond 448 (NaN with
    PyTorch 2.11). So ``lm_head`` gets its own snapped copy: the embedding and the logits stay as they were, and the
    stored codes are the fake quantizer's codes, bit for bit."""
    import transformers
    from modelopt.torch.export import export_hf_checkpoint
    from safetensors.torch import load_file

    from modelopt_typed_recipes.bridges.hf_config import to_hf_config
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.hf.export import decode_weight, load_export
    from modelopt_typed_recipes.runtime.quant_grid import snap_to_grid

    config = transformers.AutoConfig.for_model(**{**to_hf_config(get_arch("tiny-dense")), "tie_word_embeddings": True})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tokens = torch.randint(0, config.vocab_size, (4, 32))
    preset = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    head_fp8 = {"quantizer_name": "*lm_head*", "enable": True, "cfg": {"num_bits": (4, 3), "axis": None}}
    preset["quant_cfg"].append(head_fp8)
    mtq.quantize(model, preset, lambda m: m(tokens))
    head = model.lm_head.weight_quantizer
    assert head.is_enabled
    with torch.no_grad():
        for p in model.parameters():  # trained past the calibrated ranges
            p.copy_((p * 1.3).to(torch.bfloat16).float())
        before = model(tokens).logits
        embedding = model.model.embed_tokens.weight.detach().clone()
        in_memory = head(embedding)
    scale = head.amax.float() / 448
    assert (embedding.to(torch.bfloat16).float() / scale).abs().max() > 448  # what the export would cast unsnapped
    report = snap_to_grid(model)
    assert report["weights"] == {"fp8": 7 * config.num_hidden_layers + 1} and report["values_beyond_range"] > 0
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(model.model.embed_tokens.weight, embedding)
        assert torch.equal(model.lm_head.weight, in_memory)
        assert torch.equal(model(tokens).logits, before)
    export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True  # ModelOpt keeps it
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert stored["lm_head.weight"].dtype == torch.float8_e4m3fn and "model.embed_tokens.weight_scale" not in stored
    codes = (in_memory / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(stored["lm_head.weight"].view(torch.uint8), codes.view(torch.uint8))
    decoded, kind = decode_weight({k: stored[f"lm_head.{k}"] for k in ("weight", "weight_scale")})
    assert kind == "fp8" and torch.allclose(decoded, in_memory, rtol=2**-20, atol=0)
    plain = stored["model.embed_tokens.weight"]  # the embedding as trained, in the dtype the export wrote it
    assert torch.equal(plain, embedding.to(plain.dtype))
    reloaded, _ = load_export(tmp_path)  # transformers keeps the two apart: both present, different values
    assert torch.equal(reloaded.lm_head.weight, decoded) and torch.equal(reloaded.model.embed_tokens.weight, embedding)
