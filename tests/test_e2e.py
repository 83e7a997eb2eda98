"""End to end on the CPU: registry -> recipe -> run (HF backend, FP8) -> export -> re-load -> perplexity.

Runs the README's general command (``python -m modelopt_typed_recipes run RECIPE --json``) in a fresh
process on the shipped reference model, then checks the outputs from this process: the JSON shape, the
manifest, the exported files read by transformers and safetensors, and the perplexity of the export
re-loaded here against the FP8 target (at most +1 % over the original).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FP8_TARGET_PCT = 1.0


@pytest.fixture(scope="module")
def fp8_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("e2e") / "reference-fp8"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "modelopt_typed_recipes", "run", "examples/reference-fp8.yaml", "--json",
         "--no-progress", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), out


def test_json_has_stages_outputs_metrics(fp8_run: tuple[dict, Path]) -> None:
    result, out = fp8_run
    assert [s["name"] for s in result["stages"]] == ["quantize-fp8", "export-hf"]
    for s in result["stages"]:
        assert s["status"] == "ok" and s["seconds"] > 0
    assert result["backend"] == "hf" and result["device"] == "cpu"
    assert result["output_dir"] == str(out.resolve())
    for p in result["outputs"]:
        assert Path(p).exists(), p
    m = result["metrics"]
    before, after = m["perplexity_before"], m["perplexity_after"]
    assert math.isfinite(before) and math.isfinite(after)
    assert before < 100, "the reference model should be far better than chance (4096)"
    assert 100 * (after / before - 1) <= FP8_TARGET_PCT, m
    assert result["stages"][0]["quantizer_summary"] == {"input": 42, "weight": 42}
    assert result["stages"][0]["effective_bits"] == 8.0


def test_manifest_records_the_run(fp8_run: tuple[dict, Path]) -> None:
    result, out = fp8_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe_hash"] == result["recipe_hash"]
    assert manifest["recipe"]["stages"][0]["format"] == "fp8"
    assert manifest["architecture"]["name"] == "reference-llama"
    assert manifest["versions"]["nvidia-modelopt"] and manifest["versions"]["torch"]
    assert manifest["calibration"]["hash"] == result["calibration_hash"]
    assert manifest["seeds"]["recipe"] == 1234
    stage_manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert stage_manifest["stage"]["name"] == "export-hf"


def test_export_reloads_and_keeps_its_perplexity(fp8_run: tuple[dict, Path]) -> None:
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.data import batches, token_windows
    from modelopt_typed_recipes.runtime.hf.evaluate import perplexity
    from modelopt_typed_recipes.runtime.hf.export import load_export
    from modelopt_typed_recipes.spec.recipe import Recipe

    result, out = fp8_run
    export = out / "export"
    quant = json.loads((export / "hf_quant_config.json").read_text())["quantization"]
    assert quant["quant_algo"] == "FP8" and "lm_head" in quant["exclude_modules"]
    with safe_open(str(export / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert str(f.get_slice("model.layers.0.self_attn.q_proj.weight").get_dtype()) == "F8_E4M3"
    assert "model.layers.5.mlp.down_proj.input_scale" in keys
    tokenizer = AutoTokenizer.from_pretrained(str(export))
    assert tokenizer.eos_token == "<|endoftext|>"

    model, counts = load_export(export)
    assert counts == {"fp8": 42}
    assert model.config.num_hidden_layers == get_arch("reference-llama").num_layers
    recipe = Recipe.load(ROOT / "examples" / "reference-fp8.yaml")
    assert recipe.evaluation is not None
    windows = token_windows(recipe.evaluation, tokenizer, path="evaluation")
    ppl = perplexity(model, batches(windows, 8), device="cpu", progress=False)
    assert ppl == pytest.approx(result["metrics"]["perplexity_export"], rel=1e-4)
    assert 100 * (ppl / result["metrics"]["perplexity_before"] - 1) <= FP8_TARGET_PCT


def test_cli_reports_a_bad_recipe_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples" / "reference-fp8.yaml").read_text().replace("format: fp8", "format: nvfp4"))
    proc = subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", "run", str(bad), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    payload = json.loads(proc.stdout)
    assert payload["ok"] is False and payload["errors"][0]["path"] == "stages[0].format"
    assert "CUDA" in proc.stderr
