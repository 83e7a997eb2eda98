"""The Hugging Face backend on the CPU: every CPU format on tiny models of each kind transformers builds,
export and re-load, and bad recipes refused with typed errors before any work, leaving nothing behind."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from modelopt_typed_recipes.errors import CompatibilityError, DataError, OutputError, RecipeError, SpecError
from modelopt_typed_recipes.runtime import api
from modelopt_typed_recipes.spec.formats import get_format

ROOT = Path(__file__).resolve().parent.parent
CPU_FORMATS = ("fp8", "int8_sq", "int4_awq", "w4a8_awq")


def tiny_recipe(tmp: Path, model: str, stages: list[dict], **changes: object) -> dict:
    return {
        "model": model,
        "source": {"type": "random", "seed": 0},
        "stages": stages,
        "calibration": {"dataset": "reference-train", "num_samples": 8, "seq_length": 64, "batch_size": 4},
        "evaluation": {"dataset": "reference-heldout", "num_samples": 8, "seq_length": 64, "batch_size": 4},
        "output_dir": str(tmp / "out"),
        "backend": "hf",
        "device": "cpu",
        **changes,
    }


def assert_nothing_left(tmp: Path) -> None:
    leftovers = [p.name for p in tmp.iterdir()] if tmp.exists() else []
    assert leftovers == [] or all(not p.startswith((".out", "out")) for p in leftovers), leftovers


# --------------------------------------------------------------------------- every CPU format
@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_dense_every_cpu_format_exports_and_reloads(tmp_path: Path, fmt: str) -> None:
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": fmt}, {"technique": "export"}])
    result = api.run_post_training(doc, progress=False)
    m = result.metrics
    for key in ("perplexity_before", "perplexity_after", "perplexity_export"):
        assert math.isfinite(m[key]) and m[key] > 1, (key, m)
    # the file on disk computes what the fake-quantized model computed (decoding matches ModelOpt's packing)
    assert abs(m["perplexity_export"] / m["perplexity_after"] - 1) < 0.02, m
    quant, export = result.stages
    assert quant.status == export.status == "ok"
    assert quant.quantizer_summary["weight"] == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert quant.effective_bits == pytest.approx(get_format(fmt).weight_bits, abs=0.01)
    out = Path(result.output_dir)
    assert out == (tmp_path / "out").resolve() and (out / "manifest.json").is_file()
    quant_cfg = json.loads((out / "export" / "hf_quant_config.json").read_text())["quantization"]
    assert quant_cfg["quant_algo"] == {"fp8": "FP8", "int8_sq": "W8A8_SQ_PER_CHANNEL", "int4_awq": "W4A16_AWQ",
                                       "w4a8_awq": "W4A8_AWQ"}[fmt]
    assert sum(export.details["reloaded_layers"].values()) == 14
    assert (out / "export" / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the staging folder was renamed, not copied


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_moe_every_cpu_format(tmp_path: Path, fmt: str) -> None:
    """MoE (Qwen3-MoE, transformers' fused experts): FP8/INT8-SQ export; AWQ formats keep the ModelOpt state."""
    awq = fmt.endswith("awq")
    stages: list[dict] = [{"technique": "quantize", "format": fmt}]
    if not awq:
        stages.append({"technique": "export"})
    result = api.run_post_training(tiny_recipe(tmp_path, "tiny-moe", stages), progress=False)
    m = result.metrics
    assert math.isfinite(m["perplexity_after"]) and abs(m["perplexity_change_pct"]) < 5, m
    summary = result.stages[0].quantizer_summary
    assert summary["weight"] > 8, summary  # attention + every expert's weights
    out = Path(result.output_dir)
    if awq:
        saved = out / "01-quantize-" / "modelopt_model.pth"
        saved = next(out.glob("01-quantize-*/modelopt_model.pth"))
        assert saved.stat().st_size > 0
    else:
        assert abs(m["perplexity_export"] / m["perplexity_after"] - 1) < 0.02, m
        assert any(k.endswith("-experts") for k in result.stages[-1].details["reloaded_layers"])


def test_moe_awq_export_is_refused_before_work(tmp_path: Path) -> None:
    doc = tiny_recipe(tmp_path, "tiny-moe", [{"technique": "quantize", "format": "int4_awq"}, {"technique": "export"}])
    with pytest.raises(CompatibilityError) as info:
        api.run_post_training(doc, progress=False)
    assert info.value.path == "stages[0].format"
    assert_nothing_left(tmp_path)


def test_modelopt_recipe_and_kv_cache_and_exclude(tmp_path: Path) -> None:
    doc = tiny_recipe(tmp_path, "tiny-dense", [
        {"technique": "quantize", "recipe": "general/ptq/fp8_default-kv_fp8", "exclude": ["*layers.1.mlp*"]},
        {"technique": "export"},
    ])
    result = api.run_post_training(doc, progress=False)
    summary = result.stages[0].quantizer_summary
    assert summary["weight"] == 11  # layer 1's gate, up, down excluded
    assert summary.get("kv", 0) > 0
    cfg = json.loads((Path(result.output_dir) / "export" / "hf_quant_config.json").read_text())["quantization"]
    assert cfg["kv_cache_quant_algo"] == "FP8"


def test_auto_quantize_meets_the_budget(tmp_path: Path) -> None:
    doc = tiny_recipe(tmp_path, "tiny-dense", [
        {"technique": "auto_quantize", "effective_bits": 7.8, "formats": ["int4_awq", "fp8"], "score_size": 8},
    ])
    result = api.run_post_training(doc, progress=False)
    stage = result.stages[0]
    assert stage.details["satisfied"] is True
    assert stage.details["achieved_effective_bits"] <= 7.8 + 1e-6
    assert stage.effective_bits is not None and stage.effective_bits < 8.0  # some layers went to 4 bits
    # an impossible budget is a typed error naming the field
    doc = tiny_recipe(tmp_path, "tiny-dense", [
        {"technique": "auto_quantize", "effective_bits": 4.2, "formats": ["int4_awq", "fp8"], "score_size": 8},
    ], output_dir=str(tmp_path / "other"))
    with pytest.raises(SpecError) as info:
        api.run_post_training(doc, progress=False)
    assert info.value.path == "stages[0].effective_bits"
    assert not (tmp_path / "other").exists()


# --------------------------------------------------------------------------- bad input, nothing left behind
def test_unknown_format_fails_at_load(tmp_path: Path) -> None:
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": "fp4"}])
    with pytest.raises(SpecError) as info:
        api.run_post_training(doc, progress=False)
    assert info.value.path == "stages[0].format" and "did you mean" in str(info.value)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8", "NVFP4_AWQ_LITE_CFG"])
def test_cuda_only_format_on_cpu(tmp_path: Path, fmt: str) -> None:
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": fmt}, {"technique": "export"}])
    with pytest.raises(CompatibilityError) as info:
        api.run_post_training(doc, progress=False)
    assert info.value.path == "stages[0].format" and "CUDA" in str(info.value)
    assert_nothing_left(tmp_path)


def test_auto_quantize_without_the_lp_solver_fails_before_the_model(tmp_path: Path, monkeypatch) -> None:
    """ModelOpt's search picks the formats with pulp's CBC solver, after all calibration and scoring: a pulp without
    its solver binary (a slimmed wheel) is refused at the stage before anything is loaded, not with pulp's traceback."""
    pulp = pytest.importorskip("pulp")
    monkeypatch.setattr(pulp.PULP_CBC_CMD, "available", lambda self: False)
    doc = tiny_recipe(tmp_path, "tiny-dense", [
        {"technique": "auto_quantize", "effective_bits": 7.8, "formats": ["int4_awq", "fp8"], "score_size": 8},
        {"technique": "export"},
    ])
    with pytest.raises(CompatibilityError) as info:
        api.run_post_training(doc, progress=False)
    assert info.value.path == "stages[0]" and "CBC solver" in str(info.value) and "pulp" in info.value.hint
    assert_nothing_left(tmp_path)


def test_missing_checkpoint_directory(tmp_path: Path) -> None:
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": "fp8"}],
                      source={"type": "hf", "path": str(tmp_path / "nowhere")})
    with pytest.raises(SpecError) as info:
        api.run_post_training(doc, progress=False)
    assert info.value.path == "source.path" and "does not exist" in str(info.value)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize(("name", "content", "path"), [
    ("empty.txt", "", "calibration.files"),
    ("blank.txt", "  \n\n ", "calibration.files"),
    ("rows.jsonl", '{"body": "text"}\n', "calibration.files[0]"),
    ("missing.txt", None, "calibration.files[0]"),
])
def test_bad_calibration_text(tmp_path: Path, name: str, content: str | None, path: str) -> None:
    f = tmp_path / "data" / name
    f.parent.mkdir()
    if content is not None:
        f.write_text(content)
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": "fp8"}],
                      calibration={"files": [str(f)]}, output_dir=str(tmp_path / "out" / "nested"))
    with pytest.raises(DataError) as info:
        api.run_post_training(doc, progress=False)
    assert info.value.path == path, str(info.value)
    assert not (tmp_path / "out").exists()


def test_failure_mid_run_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelopt_typed_recipes.runtime.hf import export

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "export", broken)
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": "fp8"}, {"technique": "export"}],
                      output_dir=str(tmp_path / "runs" / "a"))
    with pytest.raises(RuntimeError, match="disk full"):
        api.run_post_training(doc, progress=False)
    assert not (tmp_path / "runs").exists()


def test_output_folder_rules(tmp_path: Path) -> None:
    foreign = tmp_path / "out"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": "int8_sq"}])
    with pytest.raises(OutputError) as info:
        api.run_post_training(doc, progress=False)
    assert info.value.path == "output_dir"
    assert (foreign / "notes.txt").read_text() == "mine"
    (foreign / "notes.txt").unlink()
    first = api.run_post_training(doc, progress=False)
    second = api.run_post_training(doc, progress=False)  # the same recipe, finished: nothing redone
    assert second.reused and not first.reused and first.output_dir == second.output_dir
    assert second.metrics == first.metrics
    third = api.run_post_training(doc, progress=False, force=True)  # our own earlier output is replaced
    assert not third.reused and third.output_dir == first.output_dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_prune_and_megatron_sources_are_refused_on_hf(tmp_path: Path) -> None:
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "prune", "num_layers": 1}])
    with pytest.raises(CompatibilityError) as info:
        api.run_post_training(doc, progress=False)
    assert info.value.path == "stages[0]"
    ckpt = tmp_path / "mcore"
    ckpt.mkdir()
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": "fp8"}],
                      source={"type": "megatron", "path": str(ckpt)})
    with pytest.raises(RecipeError):
        api.run_post_training(doc, progress=False)
    assert not (tmp_path / "out").exists()


def test_refusal_happens_before_heavy_imports(tmp_path: Path) -> None:
    """A CUDA-only format on the CPU is refused without importing torch, ModelOpt or transformers."""
    code = (
        "import sys\n"
        "from modelopt_typed_recipes.runtime.api import run_post_training\n"
        "from modelopt_typed_recipes.errors import CompatibilityError\n"
        f"doc = {tiny_recipe(tmp_path, 'reference-llama', [{'technique': 'quantize', 'format': 'nvfp4'}])!r}\n"
        "doc['source'] = {'type': 'builtin'}\n"
        "try:\n    run_post_training(doc)\nexcept CompatibilityError as e:\n    print('refused', e.path)\n"
        "print(sorted(m for m in ('torch', 'modelopt', 'transformers', 'megatron') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["refused stages[0].format", "[]"], out.stdout


# --------------------------------------------------------------------------- a local HF checkpoint
@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped reference model copied to a plain folder, read as ``source: {type: hf, path: ...}``."""
    import shutil

    from modelopt_typed_recipes.catalog.models.reference import builtin_weights_dir

    folder = builtin_weights_dir("reference-llama")
    assert folder is not None
    dest = tmp_path_factory.mktemp("ckpt") / "reference"
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.txt"))
    return dest


def reference_recipe(tmp: Path, ckpt: Path, stages: list[dict], name: str) -> dict:
    return {
        "model": "reference-llama", "source": {"type": "hf", "path": str(ckpt)}, "stages": stages,
        "calibration": {"dataset": "reference-train", "num_samples": 8, "seq_length": 128, "batch_size": 4},
        "evaluation": {"dataset": "reference-heldout", "num_samples": 8, "seq_length": 128, "batch_size": 4},
        "output_dir": str(tmp / name), "backend": "hf", "device": "cpu",
    }


def test_hf_checkpoint_with_kv_cache_and_vllm_fakequant(tmp_path: Path, hf_checkpoint: Path) -> None:
    doc = reference_recipe(tmp_path, hf_checkpoint, [
        {"technique": "quantize", "format": "fp8", "kv_cache": "fp8_cast"},
        {"technique": "export", "format": "vllm_fakequant", "subdir": "vllm"},
    ], "vllm")
    result = api.run_post_training(doc, progress=False)
    assert result.stages[0].quantizer_summary == {"input": 42, "kv": 12, "weight": 42}
    files = set(result.stages[1].details["files"])
    assert {"vllm_fq_modelopt_state.pth", "model.safetensors", "tokenizer.json"} <= files
    assert (Path(result.output_dir) / "vllm" / "manifest.json").is_file()
    assert abs(result.metrics["perplexity_change_pct"]) < 1.0


def test_hf_checkpoint_compressed_fp8_exports(tmp_path: Path, hf_checkpoint: Path) -> None:
    """``compress: true``: real FP8 weights in memory (ModelOpt's QTensor), exported and re-loaded."""
    doc = reference_recipe(tmp_path, hf_checkpoint, [
        {"technique": "quantize", "format": "fp8", "compress": True}, {"technique": "export"},
    ], "compressed")
    result = api.run_post_training(doc, progress=False)
    assert result.stages[0].details["compressed"] is True
    assert result.stages[0].effective_bits == 8.0
    m = result.metrics
    assert abs(m["perplexity_export"] / m["perplexity_after"] - 1) < 0.01, m
    assert abs(m["perplexity_change_pct"]) < 1.0, m


def test_save_setting_decides_what_the_hf_backend_keeps(tmp_path: Path) -> None:
    """The recipe's ``save`` (``plan/save.py``) on the HF backend: ``none`` keeps no ModelOpt state even without
    an export; ``final`` keeps it beside the export. The manifest lists each decision and its reason."""
    q = {"technique": "quantize", "format": "fp8"}
    doc = tiny_recipe(tmp_path, "tiny-dense", [q], evaluation=None, save="none")
    result = api.run_post_training(doc, progress=False)
    assert result.stages[0].outputs == () and result.stages[0].details["checkpoint"]["reason"] == "save: none"
    assert not list(Path(result.output_dir).glob("01-*/modelopt_model.pth"))
    manifest = json.loads((Path(result.output_dir) / "manifest.json").read_text())
    assert manifest["saved"]["checkpoints"] == [{"stage": "quantize-fp8", "saved": False, "reason": "save: none"}]

    doc = tiny_recipe(tmp_path / "final", "tiny-dense", [q, {"technique": "export"}], evaluation=None, save="final")
    result = api.run_post_training(doc, progress=False)
    out = Path(result.output_dir)
    assert (out / "01-quantize-fp8" / "modelopt_model.pth").is_file() and (out / "export" / "config.json").is_file()
    assert result.stages[0].details["checkpoint"] == {"saved": True, "reason": "save: final: the final model",
                                                      "path": "01-quantize-fp8/modelopt_model.pth"}


def test_random_weights_with_a_real_vocabulary_export_the_reference_tokenizer(tmp_path: Path) -> None:
    """Random weights whose vocabulary holds the reference tokenizer's ids read it (as on Megatron-Core), and the
    export carries its files: a checkpoint a server can load with its tokenizer."""
    import attrs

    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.spec.arch import Vocab
    from modelopt_typed_recipes.spec.recipe import Recipe

    arch = attrs.evolve(get_arch("tiny-dense"), vocab=Vocab(size=4096, divisible_by=128))
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": "fp8"}, {"technique": "export"}],
                      evaluation=None)
    recipe = attrs.evolve(Recipe.from_dict(doc), model=arch)
    result = api.run_post_training(recipe, progress=False)
    export = Path(result.output_dir) / "export"
    assert (export / "tokenizer.json").is_file()
    assert json.loads((export / "config.json").read_text())["vocab_size"] == 4096


def test_each_stage_gives_the_cuda_cache_back_before_the_next(tmp_path: Path, monkeypatch) -> None:
    """PyTorch's allocator keeps a stage's freed blocks (calibration activations, a dropped teacher); the stage
    loop gives them back to the driver before the first stage (what loading left) and after every stage, so the next
    work (an export, another stage, other processes on the GPU) finds the memory free. CPU:
    ``torch.cuda.empty_cache`` recorded, not run."""
    from _stage_events import record_stages_and_releases
    from modelopt_typed_recipes.runtime.hf import steps

    events = record_stages_and_releases(monkeypatch, steps, ("quantize", "export"))
    doc = tiny_recipe(tmp_path, "tiny-dense", [{"technique": "quantize", "format": "fp8"}, {"technique": "export"}],
                      evaluation=None)
    result = api.run_post_training(doc, progress=False)
    assert [s.status for s in result.stages] == ["ok", "ok"]
    assert events == ["release", "quantize", "quantize done", "release", "export", "export done", "release"]


def test_a_quantized_modelopt_export_is_refused_as_a_model_to_load(tmp_path: Path, hf_checkpoint: Path) -> None:
    """An FP8 export's weights are FP8 codes beside their scales: loaded as a source they read as plain weights
    (the reference model measured a held-out perplexity of 2,145 so, against 47). As a source or a teacher it is
    refused before any model loads, naming the field; a vLLM fake-quant export (bf16 weights) is still a model."""
    from modelopt_typed_recipes import check
    from modelopt_typed_recipes.spec.recipe import Recipe

    first = api.run_post_training(reference_recipe(tmp_path, hf_checkpoint, [
        {"technique": "quantize", "format": "fp8"}, {"technique": "export"}], "first"), progress=False)
    export = Path(first.output_dir) / "export"
    assert json.loads((export / "config.json").read_text())["quantization_config"]["quant_method"] == "modelopt"

    doc = reference_recipe(tmp_path, export, [{"technique": "quantize", "format": "fp8"}], "again")
    with pytest.raises(CompatibilityError, match="quantized ModelOpt export") as err:
        api.run_post_training(doc, progress=False)
    assert err.value.path == "source.path" and "unquantized checkpoint" in (err.value.hint or "")
    assert not (tmp_path / "again").exists()

    teacher = reference_recipe(tmp_path, hf_checkpoint, [
        {"technique": "quantize", "format": "fp8"},
        {"technique": "distill", "steps": 1, "micro_batch_size": 2, "seq_length": 64,
         "teacher": {"type": "hf", "path": str(export)}, "data": {"dataset": "reference-train"}}], "teacher")
    problems = check(Recipe.from_dict(teacher)).errors
    assert [(e.path, type(e)) for e in problems] == [("stages[1].teacher.path", CompatibilityError)]
    megatron_teacher = tmp_path / "megatron-teacher"  # a Megatron teacher reads only the config of its hf_reference
    megatron_teacher.mkdir()
    (megatron_teacher / "metadata.json").write_text("{}")
    teacher["stages"][1]["teacher"] = {"type": "megatron", "path": str(megatron_teacher), "hf_reference": str(export)}
    problems = check(Recipe.from_dict({**teacher, "backend": "megatron"})).errors
    assert not [e for e in problems if e.path.startswith("stages[1].teacher")], problems

    fakequant = api.run_post_training(reference_recipe(tmp_path, hf_checkpoint, [
        {"technique": "quantize", "format": "fp8"}, {"technique": "export", "format": "vllm_fakequant"}], "fq"),
        progress=False)
    fq_export = Path(fakequant.output_dir) / "export"  # bf16 weights (fake quantization folded in): a model
    problems = check(Recipe.from_dict(reference_recipe(tmp_path, fq_export, [{"technique": "quantize", "format": "fp8"}],
                                                       "fq-again"))).errors
    assert not [e for e in problems if e.path in ("source.path", "model")], problems

    only_marker = tmp_path / "marker"  # an older export: hf_quant_config.json beside a config without the block
    only_marker.mkdir()
    (only_marker / "config.json").write_text((hf_checkpoint / "config.json").read_text())
    (only_marker / "hf_quant_config.json").write_text((export / "hf_quant_config.json").read_text())
    with pytest.raises(CompatibilityError, match="quantized ModelOpt export"):
        api.run_post_training(reference_recipe(tmp_path, only_marker, [{"technique": "quantize", "format": "fp8"}],
                                               "marker-out"), progress=False)


def test_a_model_other_than_the_sources_is_refused_before_loading(tmp_path: Path, hf_checkpoint: Path) -> None:
    """``model`` decides the plan and the manifest's architecture, the folder what the backends load: a recipe
    for qwen3-8b on the reference model's folder ran the reference model and reported qwen3-8b. Refused at
    ``model``, naming the sizes that differ and the registry model the folder holds."""
    doc = {**reference_recipe(tmp_path, hf_checkpoint, [{"technique": "quantize", "format": "fp8"}], "wrong"),
           "model": "qwen3-8b"}
    with pytest.raises(CompatibilityError, match="not the model in source.path") as err:
        api.run_post_training(doc, progress=False)
    assert err.value.path == "model" and "layers 36 against 6" in err.value.message
    assert err.value.hint == "model: reference-llama (the registry's architecture of this checkpoint)"
    assert not (tmp_path / "wrong").exists()
