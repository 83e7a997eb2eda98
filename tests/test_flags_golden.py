"""Golden test: our Megatron flags equal the seed's MODEL_ARGS for every seed model file, after dropping
run-control flags and applying each entry's documented deviations (and nothing else)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from modelopt_typed_recipes.bridges.megatron_flags import (
    RUN_CONTROL_FLAGS,
    canonical_flags,
    megatron_flag_pairs,
    pairs_from_argv,
    to_megatron_args,
)
from modelopt_typed_recipes.catalog import get_arch, list_archs
from modelopt_typed_recipes.catalog.models._seed import HF_MODEL_CKPT, SEED_LINKS, TOKENIZER_MODEL

# a verbatim record of the flags in Megatron-LM's examples/post_training/modelopt/conf/ files (the seed's 27 conf files as facts)
SEED_JSON = Path(__file__).parent / "data" / "megatron-conf-flags.json"
CONFIGS: dict = json.loads(SEED_JSON.read_text())["configs"] if SEED_JSON.exists() else {}
MODEL_FILES = [k for k, v in CONFIGS.items() if v["kind"] in ("model", "alias")]

pytestmark = pytest.mark.skipif(not CONFIGS, reason="megatron-conf-flags.json not found")


def _seed_config(name: str) -> dict:
    cfg = CONFIGS[name]
    return CONFIGS[cfg["target"]] if cfg["kind"] == "alias" else cfg


def test_every_seed_model_file_is_covered() -> None:
    assert len(MODEL_FILES) == 25  # 24 files + the Nano-9B-v2-Base symlink
    linked = {link.file for link in SEED_LINKS.values()}
    assert set(MODEL_FILES) <= linked
    for name in MODEL_FILES:
        assert SEED_LINKS[get_arch(name).name].file == name


@pytest.mark.parametrize("seed_name", MODEL_FILES)
def test_flags_match_seed(seed_name: str) -> None:
    arch = get_arch(seed_name)
    link = SEED_LINKS[arch.name]
    cfg = _seed_config(seed_name)
    expected = canonical_flags([(f, v) for f, v in cfg["model_args"]])
    for d in link.deviations:
        if not d.flag.startswith("--"):
            continue
        if d.seed is not None:
            removed = canonical_flags([(d.flag, d.seed or None)])
            # a deviation must name something the seed really has (unless it is a Megatron default)
            assert not (removed - expected), f"stale deviation {d}"
            expected -= removed
        if d.ours is not None:
            expected += canonical_flags([(d.flag, d.ours or None)])
    ours = canonical_flags(megatron_flag_pairs(arch))
    assert ours == expected, f"seed only: {dict(expected - ours)}; ours only: {dict(ours - expected)}"


@pytest.mark.parametrize("seed_name", MODEL_FILES)
def test_checkpoint_and_tokenizer_defaults(seed_name: str) -> None:
    """Where our hf_id/tokenizer differ from the seed's defaults, a deviation says why; otherwise they agree."""
    arch = get_arch(seed_name)
    devs = {d.flag: d for d in SEED_LINKS[arch.name].deviations}
    cfg = CONFIGS[seed_name] if CONFIGS[seed_name]["kind"] == "model" else None
    seed_ckpt = cfg["hf_model_ckpt_default"] if cfg else seed_name
    seed_tok = cfg["tokenizer_model_default"] if cfg else seed_name
    for key, seed_value, ours in ((HF_MODEL_CKPT, seed_ckpt, arch.hf_id), (TOKENIZER_MODEL, seed_tok, arch.tokenizer)):
        if key in devs:
            assert (devs[key].seed, devs[key].ours) == (seed_value, ours)
            assert seed_value != ours
        else:
            assert seed_value == ours, f"{key}: seed {seed_value!r} vs ours {ours!r} without a documented deviation"


def test_documented_fixes() -> None:
    """The seed defects the issue names are fixed in the specs."""
    assert get_arch("openai/gpt-oss-120b").hf_id == "openai/gpt-oss-120b"
    assert get_arch("Qwen/Qwen2.5-0.5B-Instruct").hf_id == "Qwen/Qwen2.5-0.5B-Instruct"
    assert get_arch("nvidia/NVIDIA-Nemotron-Nano-9B-v2").hf_id == "nvidia/NVIDIA-Nemotron-Nano-9B-v2"
    assert get_arch("nvidia/NVIDIA-Nemotron-Nano-9B-v2-Base").hf_id == "nvidia/NVIDIA-Nemotron-Nano-9B-v2-Base"
    for name in ("llama-3.1-8b-instruct", "llama-3.2-1b-instruct"):
        assert get_arch(name).tokenizer == get_arch(name).hf_id
    for name in ("nemotron-h-4b", "nemotron-h-8b"):
        assert get_arch(name).position is None
        assert "--rotary-base" not in to_megatron_args(get_arch(name))
    assert get_arch("llama-3.2-1b-instruct").position.scaling.factor == 32
    scout = get_arch("llama4-scout").position.scaling
    assert (scout.factor, scout.high_freq_factor) == (16, 1)
    oss = get_arch("gpt-oss-20b").position.scaling
    assert (oss.factor, oss.original_max_position_embeddings, oss.beta_fast, oss.beta_slow) == (32, 4096, 32, 1)
    kimi = get_arch("kimi-k2").position.scaling
    assert (kimi.beta_fast, kimi.beta_slow) == (1, 1)


def test_deviations_are_in_notes() -> None:
    for name, link in SEED_LINKS.items():
        notes = " ".join(get_arch(name).notes)
        for d in link.deviations:
            assert d.reason in notes


def test_run_control_flags_have_reasons() -> None:
    assert all(isinstance(r, str) and len(r) > 8 for r in RUN_CONTROL_FLAGS.values())
    for name in MODEL_FILES:  # every seed flag is either emitted by some rule or documented as run control
        for flag, _ in _seed_config(name)["model_args"]:
            assert flag.startswith("--")


@pytest.mark.parametrize("arch", list_archs(), ids=lambda a: a.name)
def test_argv_shape_and_round_trip(arch) -> None:
    argv = to_megatron_args(arch)
    assert all(isinstance(a, str) and a for a in argv)
    assert argv[0].startswith("--")
    pairs = pairs_from_argv(argv)
    assert pairs == megatron_flag_pairs(arch)
    assert not {f for f, _ in pairs} & set(RUN_CONTROL_FLAGS)
    if arch.position is not None and arch.position.base is not None:
        base = dict(pairs).get("--rotary-base")
        assert base is None or base.isdigit()  # Megatron parses --rotary-base with type=int


def test_canonical_dialects() -> None:
    legacy = [("--use-rotary-position-embeddings", None), ("--no-position-embedding", None)]
    assert canonical_flags(legacy) == canonical_flags([("--position-embedding-type", "rope")])
    assert canonical_flags([("--hybrid-override-pattern", "M*-"), ("--is-hybrid-model", None)]) == canonical_flags(
        [("--hybrid-layer-pattern", "M*-")]
    )
    assert canonical_flags([("--moe-aux-loss-coeff", "1e-3"), ("--norm-epsilon", "1e-6")]) == Counter(
        {("--norm-epsilon", "1e-06"): 1}
    )
    assert canonical_flags([("--num-layers", "4"), ("--moe-layer-freq", "[0]*1+[1]*3")]) == canonical_flags(
        [("--num-layers", "4"), ("--moe-layer-freq", "([0]+[1]*3)")]
    )
    assert canonical_flags([("--rotary-base", "10000")]) == canonical_flags([("--rotary-base", "10000.0")])
