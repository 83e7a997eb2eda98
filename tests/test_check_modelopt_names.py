"""The static ModelOpt vocabulary and YAML reader against the installed ModelOpt 0.47 (imports it once)."""

from __future__ import annotations

import pytest

from modelopt_typed_recipes.bridges import modelopt_names as mn
from modelopt_typed_recipes.errors import UnknownNameError

mtq = pytest.importorskip("modelopt.torch.quantization")


def test_preset_names_are_modelopts():
    assert sorted(mn.PRESETS) == sorted(mtq.config.choices)


@pytest.mark.parametrize("name", mn.PRESETS)
def test_preset_yaml_reader_equals_mtq_constant(name):
    assert mn.preset_config(name) == getattr(mtq, name)


def test_builtin_recipes_read_like_load_recipe():
    from modelopt.recipe import load_recipe

    for ref in mn.BUILTIN_PTQ_RECIPES:
        mine = mn.load_recipe_dict(ref)["quantize"]
        real = load_recipe(ref).quantize.model_dump(exclude_unset=True)
        assert [(e["quantizer_name"], e.get("parent_class"), e.get("enable")) for e in mine["quant_cfg"]] == [
            (e["quantizer_name"], e.get("parent_class"), e.get("enable")) for e in real["quant_cfg"]], ref
        assert mine.get("algorithm") == real.get("algorithm"), ref
    for ref in mn.BUILTIN_AUTO_QUANTIZE_RECIPES:
        mine = mn.load_recipe_dict(ref)["auto_quantize"]
        real = load_recipe(ref).auto_quantize
        assert mine["disabled_layers"] == list(real.disabled_layers)
        assert len(mine["candidate_formats"]) == len(real.candidate_formats)


def test_builtin_recipe_list_is_complete():
    root = mn.recipes_root()
    assert root is not None
    on_disk = sorted(f"general/ptq/{p.stem}" for p in (root / "general/ptq").glob("*.y*ml"))
    assert on_disk == sorted(mn.BUILTIN_PTQ_RECIPES)


def test_kv_entries_and_composition_match_modelopt():
    import copy

    from modelopt.recipe.presets import KV_QUANT_CFG_CHOICES

    kv = KV_QUANT_CFG_CHOICES["fp8_cast"]["quant_cfg"]
    assert mn.kv_cache_entries("fp8_cast") == kv
    base = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    want = mtq.update_quant_cfg_with_kv_cache_quant(base, kv)
    got = mn.compose_quant_config(mtq.FP8_DEFAULT_CFG, kv_entries=kv).config
    assert got == want
    assert mtq.FP8_DEFAULT_CFG == mn.preset_config("FP8_DEFAULT_CFG")  # never mutated


def test_unknown_preset_suggests():
    with pytest.raises(UnknownNameError) as exc:
        mn.check_preset("FP8_DEFAUL_CFG")
    assert "FP8_DEFAULT_CFG" in exc.value.hint
    with pytest.raises(UnknownNameError) as exc:
        mn.check_preset("nvfp4")
    assert "NVFP4_CFG" in exc.value.hint or "NVFP4_DEFAULT_CFG" in exc.value.hint


def test_matches_like_modelopt():
    from modelopt.torch.quantization.conversion import _normalize_fused_experts_quantizer_name

    names = ["decoder.layers.3.mlp.linear_fc1.weight_quantizer", "decoder.layers.30.mlp.linear_fc1.weight_quantizer",
             "x.experts.gate_up_proj_weight_quantizers.7"]
    for pat in ["*layers.3*", "*layers.3.*", "*weight_quantizer", "*mlp*", "*[kv]_bmm_quantizer"]:
        for n in names:
            import fnmatch

            norm = _normalize_fused_experts_quantizer_name(n)
            assert mn.matches(pat, n) == (fnmatch.fnmatch(n, pat) or fnmatch.fnmatch(norm, pat))


def _live_config(stage):
    """What ModelOpt itself gives for a Quantize stage: its recipe loader, or the live mtq constants."""
    import copy

    from modelopt.recipe import load_recipe
    from modelopt.recipe.presets import KV_QUANT_CFG_CHOICES

    if stage.recipe is not None:
        base, kv = load_recipe(stage.recipe).quantize.model_dump(exclude_unset=True), None
        source = "recipe"
    else:
        base, source = copy.deepcopy(getattr(mtq, stage.preset)), "preset"
        kv = KV_QUANT_CFG_CHOICES[stage.kv_cache]["quant_cfg"] if stage.kv_cache else None
    return mn.compose_quant_config(base, base_source=source, kv_entries=kv, exclude=stage.exclude,
                                   algorithm=stage.algorithm).config


def test_the_plan_composes_the_config_modelopt_would():
    """The plan composes a Quantize stage's config once, from ModelOpt's YAML files; the backends hand it to
    mtq.quantize as it is. It equals what ModelOpt's loader and live constants give, for every built-in
    recipe, every model preset and every KV-cache format."""
    from modelopt_typed_recipes.plan.techniques.quantize import quantize_config
    from modelopt_typed_recipes.spec.techniques import KV_CACHE_FORMATS, Quantize

    stages = [Quantize(recipe=r) for r in mn.BUILTIN_PTQ_RECIPES]
    stages += [Quantize(format=p) for p in mn.MODEL_PRESETS]
    stages += [Quantize(format="fp8", kv_cache=k) for k in KV_CACHE_FORMATS]
    stages += [Quantize(format="int4_awq", exclude=("*lm_head*",), algorithm="max")]
    for stage in stages:
        assert quantize_config(stage)[0].config == _live_config(stage), stage
