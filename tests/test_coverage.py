"""Pattern coverage: generated Megatron-Core names equal a real GPTModel's, and the replay equals mtq.quantize."""

from __future__ import annotations

import os

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _dist import init_gloo_world
from modelopt_typed_recipes.bridges import modelopt_names as mn
from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.plan.coverage import replay


@pytest.fixture(scope="module")
def gloo():
    from megatron.core import parallel_state

    init_gloo_world()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    yield


def _real_quantizers(arch, preset, exclude=()):
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.nn import TensorQuantizer

    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    model = build.build_model(arch, ParallelLayout(), dtype="fp32", device="cpu", spec="local")
    cfg = mn.compose_quant_config(getattr(mtq, preset), exclude=exclude).config
    os.environ["MODELOPT_SKIP_WEIGHT_QUANT_CHECK"] = "1"
    mtq.quantize(model, cfg, None)
    return {n: m.is_enabled for n, m in model.named_modules() if isinstance(m, TensorQuantizer)}


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe"])
@pytest.mark.parametrize("preset", ["FP8_DEFAULT_CFG", "INT4_AWQ_CFG", "NVFP4_MLP_ONLY_CFG", "NVFP4_EXPERTS_ONLY_CFG"])
def test_names_and_replay_match_real_model(gloo, name, preset):
    arch = get_arch(name)
    real = _real_quantizers(arch, preset, exclude=("*decoder.layers.1.self_attention*",))
    modules = mn.mcore_modules(arch)
    generated = [q for m in modules for q in m.quantizer_names()]
    assert sorted(generated) == sorted(real)
    cfg = mn.compose_quant_config(mn.preset_config(preset), exclude=("*decoder.layers.1.self_attention*",))
    cov = replay(cfg.config["quant_cfg"], modules, sources=cfg.sources)
    enabled = sum(real.values())
    assert sum(cov.quantizers.values()) == enabled
    weights_on = sum(1 for n, on in real.items() if on and n.endswith("weight_quantizer"))
    assert cov.quantized_modules == weights_on


@given(excluded=st.sets(st.integers(0, 35), max_size=10))
@settings(max_examples=30, deadline=None)
def test_excluding_layers_removes_exactly_their_modules(excluded):
    arch = get_arch("qwen3-8b")
    modules = mn.mcore_modules(arch)
    cfg = mn.compose_quant_config(mn.preset_config("FP8_DEFAULT_CFG"), exclude=[mn.layer_pattern(i) for i in excluded])
    cov = replay(cfg.config["quant_cfg"], modules, sources=cfg.sources)
    per_layer = 4  # qkv, proj, fc1, fc2
    assert cov.quantized_modules == per_layer * (arch.num_layers - len(excluded))
    assert cov.unmatched(sources=("exclude",)) == []


def test_pattern_past_the_last_layer_is_unmatched():
    arch = get_arch("tiny-dense")
    cfg = mn.compose_quant_config(mn.preset_config("FP8_DEFAULT_CFG"), exclude=["*decoder.layers.2.*"])
    cov = replay(cfg.config["quant_cfg"], mn.mcore_modules(arch), sources=cfg.sources)
    assert [u.pattern for u in cov.unmatched(sources=("exclude",))] == ["*decoder.layers.2.*"]


def test_mla_and_hybrid_names():
    mla = get_arch("tiny-mla")
    names = {m.name for m in mn.mcore_modules(mla)}
    assert "decoder.layers.0.self_attention.linear_kv_down_proj" in names
    assert "decoder.layers.0.mlp.linear_fc1" in names  # layer 0 dense ([0]*1+[1]*1)
    assert "decoder.layers.1.mlp.experts.local_experts.7.linear_fc2" in names
    assert "decoder.layers.1.mlp.shared_experts.linear_fc1" in names
    hy = get_arch("tiny-hybrid")
    kinds = [m.kind for m in mn.mcore_modules(hy)]
    assert kinds.count("mamba_in_proj") == 2 and kinds.count("attention_qkv") == 1 and kinds.count("mlp_fc1") == 1
    te = mn.mcore_modules(get_arch("tiny-dense"), te_attention=True)
    assert sum(m.kind == "kv_cache" for m in te) == 2


def test_kimi_coverage_is_fast():
    import time

    arch = get_arch("kimi-k2-instruct")
    t = time.perf_counter()
    cfg = mn.compose_quant_config(mn.preset_config("NVFP4_DEFAULT_CFG"))
    cov = replay(cfg.config["quant_cfg"], mn.mcore_modules(arch), sources=cfg.sources)
    assert cov.modules["expert_fc1"]["total"] == attrs.evolve(arch).layer_counts.moe * arch.moe.num_experts
    assert time.perf_counter() - t < 5
