"""The real-size GPU benchmark's driver on the CPU (``benchmarks/scale_gpu.py``, ``scale_text.py``, ``scale_direct.py``):
its device calls get no dry run, so what can go wrong before the first GPU kernel is tested here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

torch = pytest.importorskip("torch")
scale_gpu = pytest.importorskip("scale_gpu")


def _main_dry(monkeypatch) -> None:
    """``scale_gpu.main()`` as the test's argv says (a dry run), its SIGTERM handler and dry-run flag undone."""
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    try:
        scale_gpu.main()
    finally:
        signal.signal(signal.SIGTERM, handler)
        monkeypatch.setattr(scale_gpu, "DRY_RUN", False)


def test_dry_run_writes_checked_recipes_for_the_two_gpu_part(tmp_path, monkeypatch):
    """Each case of the part: a recipe that loads and passes the check, the layouts and memory plan of its stages,
    and the direct script's command with the same text, windows and layout."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    text = tmp_path / "calib.jsonl"
    text.write_text(json.dumps({"text": "calibration text " * 50}) + "\n")
    monkeypatch.setattr(sys, "argv", ["scale_gpu.py", "--dry-run", "--windows", "512", "--concurrent",
                                      "--text", str(text), "--work", str(tmp_path / "work"), "--cases",
                                      "qwen3-8b-tp2:nvfp4:1,qwen3-30b-a3b-ep2:fp8:1:ours,llama3.1-8b-tp1:fp8:1"])
    _main_dry(monkeypatch)
    rows = {r["case"]: r for r in json.loads((tmp_path / "out" / "scale_gpu.json").read_text())}
    moe = rows["qwen3-30b-a3b-ep2"]
    assert (moe["layout"], moe["export_layout"], moe["runs"]) == ("TP1 PP1 EP2", "TP1 PP2", ["ours"])
    assert (rows["qwen3-8b-tp2"]["layout"], rows["qwen3-8b-tp2"]["export_layout"]) == ("TP2 PP1 EP1", "TP1 PP2")
    assert rows["llama3.1-8b-tp1"]["concurrent"] and not moe["concurrent"]
    from modelopt_typed_recipes.catalog import get_arch

    # EP=2: each rank holds half of the experts and all of the rest (attention, norms, embedding, output layer)
    arch = get_arch("qwen3-30b-a3b")
    m = arch.moe
    experts = arch.num_layers * m.num_experts * 3 * arch.hidden_size * m.ffn_hidden_size
    per_rank = arch.params_total - experts // 2
    plan = moe["planned_bytes_per_rank"]
    assert per_rank * 2 < plan["quantize"] < per_rank * 2 * 1.6  # weights plus batch 8 x 2,048 activations
    assert plan["export"] < arch.params_total * 2 * 0.55  # PP=2: half the layers, one copy
    log = (tmp_path / "out" / "scale_raw.log").read_text()
    assert "scale_direct.py --model qwen3-8b --format nvfp4 --tp 2 --ep 1" in log and f"--text {text}" in log
    assert "qwen3-30b-a3b-ep2 fp8 rep0 direct" not in log
    for case in rows:
        recipe_file = tmp_path / "work" / f"{case}-{rows[case]['format']}" / "recipe.yaml"
        from modelopt_typed_recipes.spec.recipe import Recipe

        recipe = Recipe.load(recipe_file)
        assert recipe.calibration.files == (str(text),) and recipe.calibration.num_samples == 512


def test_a_time_out_ends_the_whole_process_group(tmp_path, monkeypatch):
    """torchrun's workers are children of the launcher: a time-out must end them too."""
    monkeypatch.setattr(scale_gpu, "DRY_RUN", False)
    pid_file = tmp_path / "child.pid"
    job = ("sleeper", ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], dict(os.environ))
    t = time.perf_counter()
    [(wall, rc)] = scale_gpu.run_processes([job], tmp_path, timeout=1.0).values()
    assert rc == 124 and wall < 10 and time.perf_counter() - t < 10
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert "----- sleeper output" in (tmp_path / "scale_raw.log").read_text()


def test_generated_text_gives_the_same_windows_to_both_programs(tmp_path):
    """More windows than the built-in corpus holds: scale_text.py adds installed packages' docstrings, and the
    recipe's ``files`` reader and the hand-written script cut the same windows from the file."""
    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.spec.recipe import TextData
    from scale_direct import windows as direct_windows
    from scale_text import build

    out = tmp_path / "calib.jsonl"
    info = build(out, windows=201, seq=2048, packages=["email", "hypothesis"])
    assert info["windows"] >= 201 and info["documents_from"]["hypothesis"] > 0
    assert info["documents_from"]["reference-train"] == 2030
    ours = data.token_windows(TextData(files=(str(out),), num_samples=201, seq_length=2048, batch_size=8),
                              data.load_tokenizer(None))
    direct = direct_windows(str(out), str(data.REFERENCE_DIR), 201, 2048)
    assert ours.shape == (201, 2048) and torch.equal(ours, direct)
    with pytest.raises(SystemExit, match="windows of 2048"):
        build(tmp_path / "short.jsonl", windows=10_000, seq=2048, packages=[])


def test_direct_script_reads_a_toy_vocabulary_as_utf8_bytes(tmp_path):
    """Without tokenizer files (tiny-moe's folder) the direct script's windows are the text's UTF-8 bytes, each
    document followed by end-of-text 256, as a transformers tokenizer's call would give them."""
    from scale_direct import ByteTokenizer
    from scale_direct import windows as direct_windows

    text = tmp_path / "t.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("héllo", "  ", "wörld!")), encoding="utf-8")
    ids = [*"héllo".encode(), 256, *"wörld!".encode(), 256]
    assert ByteTokenizer()("héllo", add_special_tokens=False) == {"input_ids": list("héllo".encode())}
    assert direct_windows(str(text), str(tmp_path), 3, 5).tolist() == [ids[0:5], ids[5:10], ids[10:15]]


def test_direct_script_builds_the_same_transformer_config_as_ours():
    """The hand-written script's TransformerConfig equals ours for every case, EP=2 MoE included: same random
    weights, hence comparable exports."""
    import dataclasses

    import scale_direct
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    for name, layout, (tp, ep) in [("qwen3-8b", ParallelLayout(tensor_parallel=2), (2, 1)),
                                   ("llama3.1-8b", ParallelLayout(), (1, 1)),
                                   ("qwen3-30b-a3b", ParallelLayout(expert_parallel=2, data_parallel=2), (1, 2)),
                                   ("tiny-moe", ParallelLayout(expert_parallel=2, data_parallel=2), (1, 2)),
                                   ("reference-llama", ParallelLayout(), (1, 1))]:
        for deterministic in (False, True):
            ours = build.transformer_config(get_arch(name), layout, deterministic=deterministic)
            direct = scale_direct.transformer_config(name, tp, 1, ep, deterministic)
            differ = [f.name for f in dataclasses.fields(ours)
                      if repr(getattr(ours, f.name)) != repr(getattr(direct, f.name))]
            assert differ == [] and ours.deterministic_mode is deterministic, (name, deterministic)


def test_direct_script_makes_itself_deterministic_as_our_run_does(monkeypatch):
    """--deterministic by hand: the same environment our run sets, and PyTorch's deterministic algorithms."""
    import scale_direct
    from modelopt_typed_recipes.plan.determinism import ENV

    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        scale_direct.make_deterministic()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert {k: os.environ.get(k) for k in ENV} == ENV
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_dry_run_with_deterministic_sets_the_recipe_field_and_the_direct_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setattr(sys, "argv", ["scale_gpu.py", "--dry-run", "--deterministic", "--windows", "32", "--seq", "256",
                                      "--work", str(tmp_path / "work"), "--cases", "tiny-moe-ep2:fp8:2"])
    _main_dry(monkeypatch)
    [row] = json.loads((tmp_path / "out" / "scale_gpu.json").read_text())
    assert row["deterministic"] is True and len(row["reps"]) == 2
    log = (tmp_path / "out" / "scale_raw.log").read_text()
    assert log.count("scale_direct.py --model tiny-moe") == 2 and log.count(" --deterministic") == 2
    from modelopt_typed_recipes.spec.recipe import Recipe

    assert Recipe.load(tmp_path / "work" / "tiny-moe-ep2-fp8" / "recipe.yaml").deterministic


def test_the_reference_model_case_runs_the_shipped_checkpoint_on_both_sides(tmp_path, monkeypatch):
    """The issue's first measurement: ours from ``source: builtin``, the direct script importing the same shipped
    Hugging Face folder (``--hf-checkpoint``), on the same reference-train windows."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setattr(sys, "argv", ["scale_gpu.py", "--dry-run", "--windows", "32", "--seq", "1024",
                                      "--work", str(tmp_path / "work"), "--cases", "reference-llama-tp1:nvfp4:2"])
    _main_dry(monkeypatch)
    [row] = json.loads((tmp_path / "out" / "scale_gpu.json").read_text())
    assert (row["layout"], row["export_layout"], row["text"]) == ("TP1 PP1 EP1", "TP1 PP1", "reference-train")
    from modelopt_typed_recipes.catalog.models.reference import builtin_weights_dir
    from modelopt_typed_recipes.spec.recipe import Recipe

    recipe = Recipe.load(tmp_path / "work" / "reference-llama-tp1-nvfp4" / "recipe.yaml")
    assert recipe.source.type == "builtin"
    log = (tmp_path / "out" / "scale_raw.log").read_text()
    assert log.count(f"--hf-reference {builtin_weights_dir('reference-llama')} --hf-checkpoint") == 2
    assert not (tmp_path / "work" / "reference-llama-tp1-nvfp4" / "hf-reference").exists()
    from modelopt_typed_recipes.runtime import data
    from scale_direct import windows as direct_windows

    ours = data.token_windows(recipe.calibration, data.load_tokenizer(None))
    direct = direct_windows(str(data.BUILTIN_FILES["reference-train"]), str(builtin_weights_dir("reference-llama")),
                            32, 1024)
    assert ours.shape == (32, 1024) and torch.equal(ours, direct)


def test_dry_run_with_cpu_threads_sets_the_recipe_field_and_the_direct_flag(tmp_path, monkeypatch):
    """``--cpu-threads N``: both programs' ranks at N threads (ours through the recipe, the direct script by
    ``torch.set_num_threads``), so a GPU call can show the export time follows the thread count on both sides."""
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setattr(sys, "argv", ["scale_gpu.py", "--dry-run", "--cpu-threads", "16", "--windows", "32", "--seq",
                                      "256", "--work", str(tmp_path / "work"), "--cases", "tiny-moe-ep2:fp8:1"])
    _main_dry(monkeypatch)
    [row] = json.loads((tmp_path / "out" / "scale_gpu.json").read_text())
    assert row["cpu_threads"] == 16
    log = (tmp_path / "out" / "scale_raw.log").read_text()
    assert log.count("scale_direct.py --model tiny-moe") == 1 and log.count(" --cpu-threads 16") == 1
    from modelopt_typed_recipes.spec.recipe import Recipe

    assert Recipe.load(tmp_path / "work" / "tiny-moe-ep2-fp8" / "recipe.yaml").cpu_threads == 16
    help_text = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_direct.py"), "--help"], check=True,
                               capture_output=True, text=True, timeout=120).stdout
    assert "--cpu-threads" in help_text


def test_scale_direct_runs_without_this_package():
    """The baseline is what a user writes by hand: it must not import modelopt_typed_recipes."""
    src = (ROOT / "benchmarks" / "scale_direct.py").read_text()
    assert "modelopt_typed_recipes" not in src
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_direct.py"), "--help"], check=True,
                   capture_output=True, timeout=120)


def test_exports_are_compared_tensor_by_tensor_also_across_calls(tmp_path, capsys, monkeypatch):
    """The bitwise check: every tensor's bytes, dtype and shape, and the two JSON files (where the source folder
    was left out); hashes kept in files compare the same as in memory (a case's two programs in two calls)."""
    from safetensors.torch import save_file

    def export(folder, tensors, cfg):
        folder.mkdir()
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(cfg))

    w = {"a.weight": torch.arange(12, dtype=torch.float32).view(3, 4).to(torch.float8_e4m3fn),
         "a.weight_scale": torch.tensor([0.5])}
    export(tmp_path / "ours", w, {"architectures": ["X"], "_name_or_path": "/here"})
    export(tmp_path / "direct", dict(w), {"architectures": ["X"], "_name_or_path": "/there"})
    same = scale_gpu.compare(scale_gpu.tensor_digests(tmp_path / "ours"), scale_gpu.tensor_digests(tmp_path / "direct"))
    assert same["bitwise_equal"] and same["tensors"] == 2
    changed = dict(w, **{"a.weight_scale": torch.tensor([0.5000001])})
    export(tmp_path / "other", changed, {"architectures": ["X"]})
    files = []
    for name in ("ours", "other"):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(scale_gpu.tensor_digests(tmp_path / name)))
    monkeypatch.setattr(sys, "argv", ["scale_gpu.py", "--compare-digests", *map(str, files)])
    scale_gpu.main()
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not got["bitwise_equal"] and got["first_differing"] == ["a.weight_scale"] and got["json_equal"]


def test_a_case_run_in_two_calls_is_collected_as_one_row(tmp_path):
    """qwen3-30b-a3b's two programs ran in separate device calls (each needs both GPUs for about 7 minutes):
    ``--collect`` joins them into one row with their ratio and the saved tensor comparison, as if one call had
    run both; a file's ``::MODE`` note is kept."""
    import scale_gpu

    raw = ROOT / "benchmarks" / "raw" / "session7"
    rows = scale_gpu.collect([raw / "moe-ours" / "scale_gpu.json", f"{raw / 'moe-direct' / 'scale_gpu.json'}::own calls"],
                             tmp_path / "out.json", [raw / "moe_compare.json"])
    assert len(rows) == 1
    row = rows[0]
    ours = json.loads((raw / "moe-ours" / "scale_gpu.json").read_text())[0]["reps"][0]["ours_wall_s"]
    direct = json.loads((raw / "moe-direct" / "scale_gpu.json").read_text())[0]["reps"][0]["direct_wall_s"]
    assert (row["wall_s"], row["direct_wall_s"], row["ratio"]) == (ours, direct, round(ours / direct, 4))
    assert row["bitwise_equal"] is False and row["tensors_compared"] == 56115
    assert row["per_rep"][0]["tensors_differing"] == 7207 and row["per_rep"][0]["ours_handover_s"] > 0
    assert row["raw"].endswith("moe-ours/scale_gpu.json + benchmarks/raw/session7/moe-direct/scale_gpu.json")
    # alone, each half stays a half: no ratio is made up
    half = scale_gpu.collect([raw / "moe-ours" / "scale_gpu.json"], tmp_path / "half.json")
    assert half[0]["direct_wall_s"] is None and half[0]["bitwise_equal"] is None


def test_each_saved_comparison_joins_only_the_runs_it_compared(tmp_path):
    """The MoE case ran twice in split calls (64 windows; then 32 windows with deterministic: true): each saved
    tensor comparison goes to its own pair, so the first pair keeps its 7,207 differing tensors and the second its
    0; a case whose direct script was never started still reports our side (wall, peaks), with no ratio."""
    import scale_gpu

    raw = ROOT / "benchmarks" / "raw"
    rows = scale_gpu.collect([raw / "session7" / "moe-ours" / "scale_gpu.json",
                              raw / "session7" / "moe-direct" / "scale_gpu.json",
                              raw / "session8" / "moe-ours" / "scale_gpu.json",
                              raw / "session8" / "moe-direct" / "scale_gpu.json",
                              raw / "session8" / "tp2-nvfp4" / "scale_gpu.json"],
                             tmp_path / "out.json", [raw / "session8" / "moe_compare.json",
                                                     raw / "session7" / "moe_compare.json"])
    first, second, alone = rows
    assert (first["windows"], first["deterministic"], first["bitwise_equal"]) == (64, False, False)
    assert first["per_rep"][0]["tensors_differing"] == 7207
    assert (second["windows"], second["deterministic"], second["bitwise_equal"]) == (32, True, True)
    assert second["per_rep"][0]["tensors_differing"] == 0 and second["tensors_compared"] == 56115
    assert alone["direct_wall_s"] is None and alone["ratio"] is None and alone["bitwise_equal"] is None
    assert alone["wall_s"] == 310.31 and alone["peak_bytes_per_rank"]["export"] == 8700935168
    assert abs(alone["planned_vs_peak"]["export"]) < 0.15


def test_each_repetition_is_compared_with_the_first_of_the_same_program(tmp_path, monkeypatch):
    """What --deterministic is for: a program whose second export differs from its first is caught (here the
    direct script's, faked), besides the comparison of the two programs within a repetition."""
    import argparse

    from safetensors.torch import save_file

    calls = {"direct": 0}

    def fake_run(cmd, env, out, label, timeout):
        work = tmp_path / "work" / "tiny-moe-ep2-fp8"
        if label.endswith("ours"):
            export = work / "ours" / "02-export-hf"
            export.mkdir(parents=True)
            save_file({"w": torch.ones(4)}, str(export / "model.safetensors"))
            stages = [{"name": n, "seconds": 1.0, "peak_memory_bytes": 10, "details": {}, "outputs": [o]}
                      for n, o in (("quantize-fp8", ""), ("export-hf", "02-export-hf"))]
            (work / "ours" / "manifest.json").write_text(json.dumps({"result": {
                "stages": stages, "timings": {}, "seconds": 2.0, "calibration_hash": "h",
                "determinism": {"requested": True}}}))
        else:
            calls["direct"] += 1
            (work / "direct-export").mkdir()
            save_file({"w": torch.ones(4) * calls["direct"]}, str(work / "direct-export" / "model.safetensors"))
            (work / "direct.json").write_text(json.dumps({"timings": {}, "peaks": {}, "windows": 4, "world": 2}))
        return 1.0, 0

    monkeypatch.setattr(scale_gpu, "run_process", fake_run)
    a = argparse.Namespace(work=str(tmp_path / "work"), text=None, windows=4, first_rep=0, seq=32, batch=2, devices="0,1",
                           concurrent=False, first_guess_s=1.0, keep_digests=False, deterministic=True,
                           cpu_threads=None)
    out = tmp_path / "out"
    out.mkdir()
    *_, row = scale_gpu.run_case("tiny-moe-ep2", "fp8", 2, a, out, time.time() + 600)
    first, second = row["reps"]
    assert first["bitwise_equal"] and "ours_same_as_rep0" not in first
    assert second["ours_same_as_rep0"] and second["direct_same_as_rep0"] is False and not second["bitwise_equal"]
    assert row["repeats_equal"] == {"ours": True, "direct": False} and row["deterministic"]
    assert first["ours_determinism"] == {"requested": True}


def test_repetitions_run_in_two_calls_are_one_row_with_their_median(tmp_path):
    """qwen3-8b TP2 NVFP4 ran repetition 0 in one call and repetition 1 (``--first-rep 1``, the direct script first)
    in a later one: ``--collect`` makes one row of both, its walls the medians of the two and its ratio theirs;
    the same repetition number in two files (two sessions) would stay two rows."""
    import statistics

    import scale_gpu

    raw = ROOT / "benchmarks" / "raw" / "session10"
    files = [raw / "c3" / "tp2" / "t2-nvfp4" / "scale_gpu.json", raw / "c5" / "rep1" / "t2-nvfp4" / "scale_gpu.json"]
    rows = scale_gpu.collect(files, tmp_path / "out.json")
    assert len(rows) == 1
    row = rows[0]
    reps = [json.loads(f.read_text())[0]["reps"][0] for f in files]
    assert [r["rep"] for r in reps] == [0, 1] and reps[1]["order"] == ["direct", "ours"]
    ours = statistics.median(r["ours_wall_s"] for r in reps)
    direct = statistics.median(r["direct_wall_s"] for r in reps)
    assert (row["reps"], row["wall_s"], row["direct_wall_s"]) == (2, round(ours, 2), round(direct, 2))
    assert row["ratio"] == round(ours / direct, 4) < 0.9
    assert row["bitwise_equal"] is True and [p["order"] for p in row["per_rep"]] == [["ours", "direct"],
                                                                                      ["direct", "ours"]]
    # the same file twice: repetition 0 twice, not joined
    twice = scale_gpu.collect([files[0], files[0]], tmp_path / "twice.json")
    assert len(twice) == 2 and all(r["reps"] == 1 for r in twice)


def test_moe_probe_recipes_are_the_quantize_stage_alone_and_pass_check(tmp_path):
    """benchmarks/moe_probe.py (the next session's first MoE call) asks for the quantize stage alone with nothing
    saved, at the batch given; each recipe passes ``check`` for 2 GPUs before any GPU time is spent on it."""
    import moe_probe
    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.spec.recipe import Recipe
    from modelopt_typed_recipes.spec.serde import from_yaml

    text = tmp_path / "calib.jsonl"
    text.write_text(json.dumps({"text": "calibration text " * 50}) + "\n")
    for batch, deterministic in ((8, True), (48, True), (48, False)):
        recipe = from_yaml(moe_probe.recipe_yaml(str(text), 2 * batch, batch, tmp_path / f"b{batch}", deterministic),
                           Recipe)
        assert [s.technique for s in recipe.stages] == ["quantize"] and recipe.save == "none"
        assert recipe.calibration.batch_size == batch and recipe.deterministic is deterministic
        report = check_recipe(recipe, env=Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True,
                                                      gpu_count=2))
        assert not report.errors, report.errors
