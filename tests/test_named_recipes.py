"""Named recipes: lookup by HF id or registry name, filters, user registration, entry points, to_recipe."""

from __future__ import annotations

import pytest

from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.catalog import recipes as R
from modelopt_typed_recipes.errors import SpecError, UnknownNameError
from modelopt_typed_recipes.spec.layout import ParallelLayout
from modelopt_typed_recipes.spec.recipe import Recipe
from modelopt_typed_recipes.spec.techniques import Quantize


def test_lookup_by_hf_id_and_short_name():
    a = R.get_recipe("Qwen/Qwen3-8B:fp8")
    assert R.get_recipe("qwen3-8b:FP8") is a
    assert a.stages[0].preset == "FP8_DEFAULT_CFG"
    assert {"Qwen/Qwen3-8B:nvfp4", "Qwen/Qwen3-8B:int4-awq", "Qwen/Qwen3-8B:auto-4.5bits",
            "Qwen/Qwen3-8B:prune-24-layers"} <= {r.name for r in R.list_recipes(model="qwen3-8b")}


def test_unknown_name_suggests():
    with pytest.raises(UnknownNameError) as exc:
        R.get_recipe("Qwen/Qwen3-8B:fp9")
    assert "fp8" in exc.value.hint


def test_seed_layouts():
    kimi = R.get_recipe("moonshotai/Kimi-K2-Instruct:fp8")
    assert (kimi.layout.tensor_parallel, kimi.layout.expert_tensor_parallel, kimi.layout.expert_parallel) == (8, 1, 64)
    assert kimi.export_layout.pipeline_parallel == 16
    assert kimi.export_layout.stage_layers(61) == (3, *([4] * 14), 2)
    assert R.get_recipe("Qwen/Qwen3-30B-A3B:nvfp4").layout.expert_parallel == 8
    assert R.get_recipe("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16:fp8").export_layout.pipeline_parallel == 4


def test_filters():
    prunes = R.list_recipes(technique="prune")
    assert prunes and all(r.technique.startswith("prune") for r in prunes)
    autos = R.list_recipes(technique="auto_quantize")
    assert autos and all("auto_quantize" in r.techniques for r in autos)
    assert all(r.model == "Qwen/Qwen3-30B-A3B" for r in R.list_recipes(model="Qwen/Qwen3-30B-A3B"))


def test_every_builtin_recipe_is_valid_for_its_model():
    for r in R.list_recipes():
        rec = r.to_recipe(checkpoint="/ckpt", output_dir="/tmp/out")
        rec.archs_per_stage(get_arch)  # prune sizes validated against the architecture


def test_register_and_replace():
    mine = R.NamedRecipe(name="tiny-dense:fp8-no-attn", model="tiny-dense", technique="fp8-no-attn",
                         stages=(Quantize(format="fp8", exclude=("*self_attention*",)),),
                         layout=ParallelLayout(tensor_parallel=2))
    R.register(mine)
    try:
        assert R.get_recipe("tiny-dense:fp8-no-attn") is mine
        with pytest.raises(SpecError):
            R.register(mine.__class__(name=mine.name, model="tiny-dense", technique="x", stages=mine.stages))
    finally:
        R.RECIPES.unregister(mine.name)


def test_to_recipe_needs_weights():
    r = R.get_recipe("reference-llama:fp8")
    with pytest.raises(SpecError):
        r.to_recipe(output_dir="/tmp/out")
    rec = r.to_recipe(checkpoint="/ckpt", output_dir="/tmp/out")
    assert isinstance(rec, Recipe) and rec.name == "reference-llama:fp8"


def test_bad_name():
    with pytest.raises(SpecError):
        R.NamedRecipe(name="no-colon", model="tiny-dense", technique="fp8", stages=(Quantize(format="fp8"),))


def test_entry_point_group(monkeypatch):
    from importlib import metadata

    class EP:
        name = "extra"
        value = "pkg:recipes"

        def load(self):
            return lambda: [R.NamedRecipe(name="tiny-moe:fp8-ep", model="tiny-moe", technique="fp8-ep",
                                          stages=(Quantize(format="fp8"),))]

    from modelopt_typed_recipes.catalog import registry

    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [EP()] if group == R.RECIPES._group else [])
    monkeypatch.setattr(registry, "_group_declared", lambda group: True)
    reg = R.Registry("named recipe", keys=R._keys, entry_point_group="modelopt_typed_recipes.recipes",
                     loaders=[R._builtin])
    assert reg.get("tiny-moe:fp8-ep").technique == "fp8-ep"


def test_cli_recipes_json():
    import json
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", "recipes", "--model", "Qwen/Qwen3-8B",
                        "--technique", "prune", "--json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [r["name"] for r in out] == ["Qwen/Qwen3-8B:prune-24-layers"]
