"""Parameter counts agree with the published ones.

``params_total``/``params_active`` count the input embedding and the output layer (once when tied), as the
Qwen and Mixtral cards do. OpenAI, DeepSeek, Moonshot and NVIDIA (Nemotron-3) publish active counts without
the input embedding (a lookup, not compute); those rows compare ``params_active - embedding``. Round published
numbers ("37B") are matched to the precision they are published with, exact ones within 1 %.
"""

from __future__ import annotations

import pytest

from modelopt_typed_recipes.catalog import get_arch, list_archs

B = 1e9
# (name, which count, published, precision of the published figure, source)
PUBLISHED = [
    ("llama-3.1-8b-instruct", "total", 8.03 * B, 0.01 * B, "Meta model card"),
    ("meta-llama-3-8b", "total", 8.03 * B, 0.01 * B, "Meta model card"),
    ("llama-3.2-1b-instruct", "total", 1.23 * B, 0.01 * B, "Meta model card (1.23B)"),
    ("llama-3.1-405b-instruct", "total", 405 * B, 1 * B, "Meta model card"),
    ("qwen3-30b-a3b", "total", 30.5 * B, 0.1 * B, "Qwen3 card"),
    ("qwen3-30b-a3b", "active", 3.3 * B, 0.1 * B, "Qwen3 card, truncated: 3.35B is written 3.3B"),
    ("qwen3-235b-a22b", "total", 235 * B, 1 * B, "Qwen3 card"),
    ("qwen3-235b-a22b", "active", 22 * B, 1 * B, "Qwen3 card"),
    ("qwen3-8b", "total", 8.2 * B, 0.1 * B, "Qwen3 card"),
    ("qwen3-0.6b", "total", 0.6 * B, 0.1 * B, "Qwen3 card"),
    ("qwen2.5-7b-instruct", "total", 7.61 * B, 0.01 * B, "Qwen2.5 card"),
    ("qwen2.5-0.5b-instruct", "total", 0.49 * B, 0.01 * B, "Qwen2.5 card"),
    ("mixtral-8x7b-v0.1", "total", 46.7 * B, 0.1 * B, "Mistral announcement"),
    ("mixtral-8x7b-v0.1", "active", 12.9 * B, 0.1 * B, "Mistral announcement"),
    ("gpt-neox-20b", "total", 20_554_567_680, 1, "model card n_parameters"),
    ("deepseek-r1", "total", 671 * B, 1 * B, "DeepSeek-V3 report"),
    ("deepseek-r1", "active_no_embedding", 37 * B, 1 * B, "DeepSeek-V3 report"),
    ("deepseek-v2-lite", "total", 15.7 * B, 0.1 * B, "DeepSeek-V2 report"),
    ("kimi-k2-instruct", "total", 1.03e12, 0.01e12, "HF model page (1.03T)"),
    ("kimi-k2-instruct", "active_no_embedding", 32 * B, 1 * B, "Kimi-K2 card"),
    ("gpt-oss-20b", "total", 20.91 * B, 0.01 * B, "OpenAI model card"),
    ("gpt-oss-20b", "active_no_embedding", 3.61 * B, 0.01 * B, "OpenAI model card"),
    ("gpt-oss-120b", "total", 116.83 * B, 0.01 * B, "OpenAI model card"),
    ("gpt-oss-120b", "active_no_embedding", 5.13 * B, 0.01 * B, "OpenAI model card"),
    ("llama-4-maverick-17b-128e-instruct", "total", 400 * B, 1 * B, "Meta card (text decoder)"),
    ("llama-4-maverick-17b-128e-instruct", "active", 17 * B, 1 * B, "Meta card"),
    ("llama-4-scout-17b-16e-instruct", "active", 17 * B, 1 * B, "Meta card"),
    ("nemotron-h-8b-base-8k", "total", 8 * B, 1 * B, "model name / card"),
    ("nemotron-h-56b-base-8k", "total", 56 * B, 1 * B, "model name / card"),
    ("nemotron-h-47b-reasoning-128k", "total", 47 * B, 1 * B, "model name / card"),
    ("nvidia-nemotron-nano-9b-v2", "total", 8.89 * B, 0.01 * B, "NVIDIA card (8.89B)"),
    ("nvidia-nemotron-3-nano-30b-a3b-bf16", "total", 31.6 * B, 0.1 * B, "NVIDIA card"),
    ("nvidia-nemotron-3-nano-30b-a3b-bf16", "active", 3.6 * B, 0.1 * B, "NVIDIA card (3.6B incl. embeddings)"),
    ("nvidia-nemotron-3-super-120b-a12b-bf16", "total", 120 * B, 1 * B, "model name"),
    ("nvidia-nemotron-3-super-120b-a12b-bf16", "active_no_embedding", 12 * B, 1 * B, "model name"),
    ("nvidia-nemotron-3-ultra-550b-a55b-bf16", "total", 550 * B, 1 * B, "model name"),
    ("nvidia-nemotron-3-ultra-550b-a55b-bf16", "active_no_embedding", 55 * B, 1 * B, "model name"),
]


def _count(arch, which: str) -> int:
    if which == "total":
        return arch.params_total
    if which == "active":
        return arch.params_active
    return arch.params_active - arch.vocab.size * arch.hidden_size


@pytest.mark.parametrize(("name", "which", "published", "precision", "source"), PUBLISHED,
                         ids=[f"{p[0]}-{p[1]}" for p in PUBLISHED])
def test_published_counts(name: str, which: str, published: float, precision: float, source: str) -> None:
    ours = _count(get_arch(name), which)
    if "truncated" in source:  # the card cuts digits off instead of rounding
        assert published <= ours < published + precision, f"{name} {which}: ours {ours / B:.3f}B ({source})"
        return
    tolerance = max(0.01 * published, precision / 2)
    assert abs(ours - published) <= tolerance, f"{name} {which}: ours {ours / B:.3f}B vs {published / B:.3f}B ({source})"


def test_scout_total_with_vision_encoder() -> None:
    """Meta's 109B counts the ~0.9B vision encoder too; the text decoder alone is within 1% of 108.1B."""
    ours = get_arch("llama4-scout").params_total
    assert abs(ours - 109e9) <= 0.015 * 109e9


def test_exact_small_models() -> None:
    # Qwen3-0.6B: 0.44B non-embedding (card); tied embedding counted once
    q = get_arch("qwen3-0.6b")
    assert abs(q.params_total - q.vocab.size * q.hidden_size - 0.44e9) <= 0.005e9
    # tying halves the embedding contribution
    untied = q.params_total + q.vocab.size * q.hidden_size
    import attrs
    assert attrs.evolve(q, tie_embeddings=False).params_total == untied


@pytest.mark.parametrize("arch", list_archs(), ids=lambda a: a.name)
def test_derived_facts_are_consistent(arch) -> None:
    assert 0 < arch.params_active <= arch.params_total
    if arch.moe is None:
        assert arch.params_active == arch.params_total
    assert arch.weight_bytes("nvfp4") < arch.weight_bytes("fp8") < arch.weight_bytes("bf16")
    assert arch.weight_bytes("bf16") == 2 * arch.params_total
    assert arch.kv_cache_bytes_per_token() > 0
    assert arch.flops_per_token() > 0
    counts = arch.layer_counts
    assert counts.attention >= 1
