"""to_hf_config against real transformers: the exported config builds a model whose parameter count is
exactly ModelArch.params_total. This cross-checks the parameter counter in spec/arch.py layer by layer
for every model type the bridge writes (CPU, tiny sizes, a second or two in all)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.bridges.hf_config import diff_hf_config, from_hf_config, hf_model_type, to_hf_config
from modelopt_typed_recipes.spec.arch import (
    Activation,
    Attention,
    Llama3Scaling,
    Mamba,
    MLAttention,
    ModelArch,
    MoE,
    Norm,
    Quirks,
    RoPE,
    Vocab,
    YarnScaling,
)

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
transformers.logging.set_verbosity_error()


def build_count(cfg: dict) -> int:
    """Parameters of the transformers model built from ``cfg`` (buffers such as expert biases excluded)."""
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def check(arch: ModelArch, model_type: str | None = None) -> dict:
    cfg = to_hf_config(arch)
    if model_type is not None:
        assert cfg["model_type"] == model_type
    assert diff_hf_config(arch, cfg) == []
    assert build_count(cfg) == arch.params_total, cfg["model_type"]
    return cfg


# --------------------------------------------------------------------------- one tiny model per model type
_BASE = {
    "family": "tiny",
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 96,
    "vocab": Vocab(size=256),
    "max_position_embeddings": 512,
    "seq_length": 512,
}
_GQA = Attention(num_heads=4, num_query_groups=2)

TINY: dict[str, ModelArch] = {
    "llama": ModelArch(
        name="t-llama",
        attention=_GQA,
        position=RoPE(base=500000, scaling=Llama3Scaling(factor=8.0)),
        tie_embeddings=True,
        **_BASE,
    ),
    "llama-biased": ModelArch(
        name="t-llama-bias",
        attention=Attention(num_heads=4, kv_channels=24),
        add_bias_linear=True,
        position=RoPE(),
        **_BASE,
    ),
    "qwen2": ModelArch(name="t-qwen2", attention=attrs.evolve(_GQA, qkv_bias=True), position=RoPE(base=1e6), **_BASE),
    "qwen3": ModelArch(
        name="t-qwen3",
        attention=Attention(num_heads=4, num_query_groups=2, kv_channels=32, qk_layernorm=True),
        position=RoPE(),
        **_BASE,
    ),
    "qwen3_moe": ModelArch(
        name="t-qwen3-moe",
        attention=Attention(num_heads=4, num_query_groups=1, kv_channels=32, qk_layernorm=True),
        moe=MoE(num_experts=4, router_topk=2, ffn_hidden_size=48, layer_freq="[0]*1+[1]*2"),
        position=RoPE(),
        **{**_BASE, "num_layers": 3},
    ),
    "mixtral": ModelArch(
        name="t-mixtral",
        attention=_GQA,
        moe=MoE(num_experts=4, router_topk=2, ffn_hidden_size=96),
        position=RoPE(base=1e6),
        **_BASE,
    ),
    "llama4_text": ModelArch(
        name="t-llama4",
        attention=Attention(num_heads=4, num_query_groups=2, kv_channels=32, qk_layernorm=True),
        moe=MoE(
            num_experts=4,
            router_topk=1,
            ffn_hidden_size=48,
            shared_expert_ffn_size=48,
            layer_freq="[0,1]*2",
            router_score_function="sigmoid",
        ),
        position=RoPE(
            base=5e5, interleaved=True, no_rope_freq=4, scaling=Llama3Scaling(factor=16.0, high_freq_factor=1.0)
        ),
        quirks=Quirks(export_qk_l2_norm=True, export_moe_apply_probs_on_input=True),
        **{**_BASE, "num_layers": 4},
    ),
    "deepseek_v3": ModelArch(
        name="t-dsv3",
        attention=MLAttention(
            num_heads=4, q_lora_rank=24, kv_lora_rank=32, qk_head_dim=16, qk_pos_emb_head_dim=8, v_head_dim=16
        ),
        moe=MoE(
            num_experts=8,
            router_topk=2,
            ffn_hidden_size=32,
            shared_expert_ffn_size=32,
            layer_freq="[0]*1+[1]*2",
            router_score_function="sigmoid",
            router_enable_expert_bias=True,
            router_num_groups=4,
            router_group_topk=2,
            router_topk_scaling_factor=2.5,
        ),
        position=RoPE(
            scaling=YarnScaling(
                factor=40,
                original_max_position_embeddings=64,
                beta_fast=32,
                beta_slow=1,
                mscale=1.0,
                mscale_all_dim=1.0,
            )
        ),
        norm=Norm(epsilon=1e-6),
        **{**_BASE, "num_layers": 3},
    ),
    "deepseek_v2": ModelArch(
        name="t-dsv2",
        attention=MLAttention(num_heads=4, kv_lora_rank=32, qk_head_dim=16, qk_pos_emb_head_dim=8, v_head_dim=16),
        moe=MoE(
            num_experts=8,
            router_topk=2,
            ffn_hidden_size=32,
            shared_expert_ffn_size=64,
            layer_freq="[0]*1+[1]*1",
            router_pre_softmax=True,
        ),
        position=RoPE(),
        **_BASE,
    ),
    "gpt_oss": ModelArch(
        name="t-gpt-oss",
        attention=Attention(
            num_heads=4,
            num_query_groups=2,
            kv_channels=16,
            softmax_type="learnable",
            window_size=(7, 0),
            window_attn_skip_freq=2,
        ),
        moe=MoE(num_experts=4, router_topk=2, ffn_hidden_size=64),
        position=RoPE(
            base=150000, scaling=YarnScaling(factor=32, original_max_position_embeddings=64, beta_fast=32, beta_slow=1)
        ),
        activation=Activation(type="quick_geglu", glu_linear_offset=1.0, clamp_value=7.0),
        add_bias_linear=True,
        quirks=Quirks(gpt_oss=True),
        **_BASE,
    ),
    "nemotron": ModelArch(
        name="t-nemotron",
        attention=_GQA,
        position=RoPE(percent=0.5),
        norm=Norm(type="layernorm1p"),
        activation=Activation(type="squared_relu"),
        **_BASE,
    ),
    "gpt_neox": ModelArch(
        name="t-neox",
        attention=Attention(num_heads=4),
        position=RoPE(percent=0.25),
        norm=Norm(type="layernorm"),
        activation=Activation(type="gelu"),
        add_bias_linear=True,
        **_BASE,
    ),
    "nemotron_h": ModelArch(
        name="t-nemotron-h",
        attention=Attention(num_heads=4, num_query_groups=2, kv_channels=32),
        mamba=Mamba(pattern="M*-ME", num_heads=8, head_dim=16, num_groups=2, state_dim=16),
        moe=MoE(
            num_experts=4,
            router_topk=2,
            ffn_hidden_size=32,
            shared_expert_ffn_size=48,
            router_score_function="sigmoid",
            router_enable_expert_bias=True,
            router_topk_scaling_factor=2.5,
            latent_size=24,
        ),
        position=None,
        activation=Activation(type="squared_relu"),
        **{**_BASE, "num_layers": 5},
    ),
}
_TYPE = {"llama-biased": "llama"}


@pytest.mark.parametrize("key", sorted(TINY))
def test_tiny_model_builds_with_predicted_parameter_count(key: str) -> None:
    arch = TINY[key]
    assert hf_model_type(arch) == _TYPE.get(key, key)
    check(arch, _TYPE.get(key, key))


def test_registry_tiny_variants_build() -> None:
    tiny = pytest.importorskip("modelopt_typed_recipes.catalog.tiny")
    for arch in tiny.TINY_MODELS:
        check(arch)


def test_real_weights_load_round_trip(tmp_path: Path) -> None:
    """A real checkpoint: save the built model, read its config.json back into the same spec."""
    arch = TINY["qwen3"]
    config = transformers.AutoConfig.for_model(**to_hf_config(arch))
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert diff_hf_config(arch, saved) == []
    back = from_hf_config(saved, name=arch.name)
    assert back.params_total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("key", ["llama", "deepseek_v3", "gpt_oss", "nemotron_h", "llama4_text"])
def test_transformers_own_dump_reads_back(key: str) -> None:
    """``PreTrainedConfig.to_dict()`` in transformers 5 moves RoPE into ``rope_parameters`` and pattern
    strings into lists; the bridge reads that layout too."""
    arch = TINY[key]
    dumped = transformers.AutoConfig.for_model(**to_hf_config(arch)).to_dict()
    assert diff_hf_config(arch, dumped) == []


# --------------------------------------------------------------------------- random small models
@st.composite
def small_archs(draw: st.DrawFn) -> ModelArch:
    flavour = draw(st.sampled_from(["llama", "qwen3", "mixtral"]))
    heads = draw(st.sampled_from([1, 2, 4]))
    groups = draw(st.sampled_from([g for g in (1, 2, 4) if heads % g == 0]))
    head_dim = draw(st.sampled_from([8, 16]))
    hidden = draw(st.sampled_from([heads * head_dim, 32, 48]))
    explicit_dim = hidden != heads * head_dim  # from_hf_config leaves a redundant head_dim out
    layers = draw(st.integers(1, 3))
    scaling = draw(
        st.none()
        | st.builds(Llama3Scaling, factor=st.sampled_from([2.0, 8.0]), original_max_position_embeddings=st.just(64))
    )
    moe = None
    if flavour == "mixtral":
        experts = draw(st.integers(1, 4))
        moe = MoE(
            num_experts=experts, router_topk=draw(st.integers(1, experts)), ffn_hidden_size=draw(st.integers(4, 40))
        )
    return ModelArch(
        name="rnd",
        family=flavour,
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=moe.ffn_hidden_size if moe else draw(st.integers(4, 64)),
        attention=Attention(
            num_heads=heads,
            num_query_groups=None if groups == heads else groups,
            kv_channels=head_dim if explicit_dim else None,
            qk_layernorm=flavour == "qwen3",
        ),
        moe=moe,
        position=RoPE(base=draw(st.sampled_from([1e4, 5e5, 1e6])), scaling=scaling),
        norm=Norm(epsilon=draw(st.sampled_from([1e-5, 1e-6]))),
        add_bias_linear=flavour == "llama" and draw(st.booleans()),
        tie_embeddings=draw(st.booleans()),
        vocab=Vocab(size=draw(st.integers(8, 300))),
        max_position_embeddings=draw(st.sampled_from([128, 8192])),
        seq_length=128,
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_archs())
def test_random_small_models_round_trip_and_build(arch: ModelArch) -> None:
    cfg = check(arch, {"llama": "llama", "qwen3": "qwen3", "mixtral": "mixtral"}[arch.family])
    back = from_hf_config(cfg, name=arch.name)
    assert attrs.evolve(back, family=arch.family, notes=(), seq_length=arch.seq_length) == arch
