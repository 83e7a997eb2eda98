"""The CPU pieces of ``benchmarks/vs_megatron_lm.py`` (Megatron-LM's quantize.sh/export.sh next to a recipe).

What needs no Megatron-LM files runs everywhere: the conf file written from ``mtrecipes flags`` as bash reads
it, the calibration ``.jsonl`` (read back by ModelOpt's own reader, tokenised back to our ids), the two
recipes' checks, the export comparison on our own exports, the process timer. What needs the Megatron-LM
files (``.mlm/``, made by ``benchmarks/vs_megatron_lm_fetch.sh`` from a git mirror; CI has none) is skipped
without them: their shell scripts' command lines and Megatron-LM's own argument parser on them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import vs_megatron_lm as V

MLM = ROOT / ".mlm"
HAVE_MLM = (MLM / "COMMIT").is_file() and (MLM / "COMMIT").read_text().startswith(V.MLM_COMMIT)
needs_mlm = pytest.mark.skipif(not HAVE_MLM, reason="no Megatron-LM files in .mlm/ (benchmarks/vs_megatron_lm_fetch.sh)")


def _qwen_hf(folder: Path) -> str:
    """A Qwen3-0.6B-shaped HF folder without weights (config and tokenizer: what checks and parsers read)."""
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.runtime.megatron.stages import write_hf_reference

    write_hf_reference(folder, get_arch("qwen3-0.6b"), data.load_tokenizer(None))
    return str(folder)


def test_conf_file_gives_bash_our_flags(tmp_path: Path) -> None:
    flags = V.our_flags("reference-llama")
    assert "--num-layers" in flags and "--padded-vocab-size" in flags
    hf = "/models/with space/ref"  # quoted in the file
    conf = tmp_path / V.EXAMPLES / "conf" / "x" / "ref.sh"
    conf.parent.mkdir(parents=True)
    conf.write_text(V.conf_text("reference-llama", flags, hf))
    assert V.source_conf(tmp_path, "x/ref") == ["--save-interval", "100000", "--micro-batch-size", "1", *flags]
    # HF_MODEL_CKPT unset: the file's default checkpoint and tokenizer; set: the tokenizer follows it
    script = f"source {conf}; echo \"$HF_MODEL_CKPT|$TOKENIZER_MODEL\""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "HF_MODEL_CKPT"}
    assert subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout.strip() == f"{hf}|{hf}"
    env["HF_MODEL_CKPT"] = "/elsewhere"
    assert subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout.strip() == \
        "/elsewhere|/elsewhere"


def test_calibration_jsonl_reads_back_as_our_windows(tmp_path: Path) -> None:
    from modelopt.torch.utils.dataset_utils import get_dataset_samples

    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.spec.recipe import TextData

    tok = data.load_tokenizer(None)
    windows = data.token_windows(TextData(dataset="reference-train", num_samples=128, seq_length=256), tok)
    path = tmp_path / "calibration.jsonl"
    stats = V.calibration_jsonl(windows, tok, path)
    assert stats["lines"] == 128 and stats["lines_equal_to_our_ids"] == 128 and stats["tokens_equal"] == 128 * 256
    # ModelOpt's reader (the one their quantize.py's calibration loop uses) gives the same texts back
    texts = get_dataset_samples(str(path), 128)
    assert len(texts) == 128
    back = tok(texts, truncation=True, max_length=256)["input_ids"]
    assert back == windows.tolist()


@pytest.mark.parametrize("case", list(V.CASES))
@pytest.mark.parametrize("fmt", list(V.FORMATS))
def test_our_recipe_passes_check(case: str, fmt: str, tmp_path: Path) -> None:
    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.spec.recipe import Recipe

    hf = V.reference_hf_dir() if case == "reference-llama" else _qwen_hf(tmp_path / "hf")
    recipe = Recipe.from_dict(V.our_recipe(case, fmt, hf, windows=128, seq=256, batch=8, out=tmp_path / "out"))
    plan = check_recipe(recipe, env=Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1,
                                                transformer_engine=True))
    assert plan.ok, [str(e) for e in plan.errors]
    assert [s.stage.technique for s in plan.stages] == ["quantize", "export"]


@pytest.fixture(scope="module")
def fp8_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelopt_typed_recipes import run_post_training
    from modelopt_typed_recipes.spec.recipe import Recipe

    out = tmp_path_factory.mktemp("vsmlm") / "ours"
    d = V.our_recipe("reference-llama", "fp8", V.reference_hf_dir(), windows=8, seq=256, batch=8, out=out)
    d.update(backend="hf", device="cpu")  # the same recipe on the CPU backend: an export to compare
    res = run_post_training(Recipe.from_dict(d), progress=False)
    return Path(res.output_dir) / res.stages[-1].outputs[0]


def test_compare_exports_bitwise_and_relative(fp8_export: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    same = V.compare_exports(fp8_export, fp8_export)
    assert same["bitwise_equal"] and same["tensors"] == same["bitwise_equal_tensors"] == 141
    assert same["by_kind"]["weight_scale"] == {"tensors": 42, "bitwise_equal": 42}

    other = tmp_path / "other"
    shutil.copytree(fp8_export, other)
    (f,) = sorted(other.glob("*.safetensors"))
    state = load_file(str(f))
    state["model.layers.1.mlp.down_proj.weight_scale"] = state["model.layers.1.mlp.down_proj.weight_scale"] * 1.5
    state["model.layers.2.self_attn.q_proj.input_scale"] = state["model.layers.2.self_attn.q_proj.input_scale"] * 1.25
    save_file(state, str(f), metadata={"format": "pt"})
    cfg = json.loads((other / "config.json").read_text())
    cfg["_name_or_path"] = "/somewhere/else"  # where the source was: not a difference
    (other / "config.json").write_text(json.dumps(cfg))

    diff = V.compare_exports(fp8_export, other)
    assert not diff["bitwise_equal"] and diff["bitwise_equal_tensors"] == 139
    assert diff["json_equal"] == {"config.json": True, "hf_quant_config.json": True}
    assert diff["differing"]["weight_scale"]["at"] == "model.layers.1.mlp.down_proj.weight_scale"
    assert diff["differing"]["weight_scale"]["max_rel_diff"] == pytest.approx(1 / 3, rel=1e-3)  # |a-b|/|b|, b=1.5a
    assert diff["differing"]["input_scale"]["max_rel_diff"] == pytest.approx(0.2, rel=1e-3)
    # the FP8 weight bytes are equal, so its tensor counts as equal; the scale change shows up in the scale


def test_export_perplexity_on_the_cpu(fp8_export: Path) -> None:
    ppl = V.export_perplexity(fp8_export, V.reference_hf_dir(), windows=4, seq=256, device="cpu")
    assert ppl["layers"] == {"fp8": 42} and ppl["windows"] == 4
    assert 5 < ppl["perplexity"] < 200  # the reference model's held-out perplexity is about 37


def test_timed_process_and_summary(tmp_path: Path) -> None:
    import os

    with V.GpuSampler() as sampler:
        ok = V.timed([sys.executable, "-c", "print('hi')"], dict(os.environ), log=tmp_path / "log", label="ok",
                     sampler=sampler, peak_dir=tmp_path / "peaks", timeout=60)
        bad = V.timed([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), log=tmp_path / "log",
                      label="bad", sampler=sampler, peak_dir=tmp_path / "peaks", timeout=60)
    assert ok["rc"] == 0 and bad["rc"] == 3 and ok["wall_s"] > 0
    assert ok["torch_max_allocated_bytes"] is None  # no CUDA used
    assert "----- ok:" in (tmp_path / "log").read_text()

    def rep(ours: float, q: float, e: float) -> dict:
        step = {"rc": 0, "gpu_used_peak_bytes": 10, "torch_max_allocated_bytes": 5}
        return {"ours": {"rc": 0, "wall_s": ours, "gpu_used_peak_bytes": 7, "stages": {"quantize-fp8": {
            "seconds": 1.0, "peak_memory_bytes": 3}}}, "theirs": {"quantize": {**step, "wall_s": q},
                                                                  "export": {**step, "wall_s": e}}}

    row = {"reps": [rep(10, 20, 10), rep(12, 30, 10), rep(11, 25, 5), {"ours": {"rc": 1}}]}
    V.summarize(row)
    assert row["reps_done"] == 3
    assert row["median"]["ours_wall_s"] == 11 and row["median"]["theirs_wall_s"] == 30
    assert row["median"]["ratio"] == pytest.approx(11 / 30, abs=1e-4)
    assert row["median"]["theirs_step_wall_s"] == {"quantize": 25, "export": 10}
    row.update(case="reference-llama", format="fp8")
    assert row["median"]["ours_wall_range_s"] == [10, 12] and row["median"]["theirs_wall_range_s"] == [30, 40]
    md = V.table({"cases": [row, {"case": "qwen3-0.6b", "format": "nvfp4", "reps": [], "stopped": "budget"}]})
    assert "| reference-llama fp8 | 0 | 3 | 11 (10-12) | 30 (30-40) | 0.3667 | 25 + 10 |" in md
    assert "| qwen3-0.6b nvfp4 | 0 | 0 |" in md and "budget" in md
    assert "at the same time" not in md  # one run: no streams


@needs_mlm
@pytest.mark.parametrize("case", list(V.CASES))
def test_their_parser_accepts_the_runs(case: str, tmp_path: Path) -> None:
    """Their shell scripts (conf/arguments.sh, the conf file, quantize.sh / export.sh) build the command lines,
    recorded through their LAUNCH_SCRIPT; Megatron-LM's own parse_and_validate_args accepts them with the
    entry points' extra flags, builds the tokenizer from the local folder, and describes our architecture."""
    from modelopt_typed_recipes.catalog import get_arch

    mlm = V.mlm_root(MLM)
    arch = get_arch(case)
    if case == "reference-llama":
        hf = V.reference_hf_dir()
        conf = V.write_conf(mlm, case, hf)
    else:
        hf = _qwen_hf(tmp_path / "hf")
        conf = V.CASES[case]["conf"]
    q, e = V.their_extra_args(case, windows=128, seq=256, batch=8, calib=tmp_path / "c.jsonl", local_attention=False,
                              generate=False)
    paths = {"MLM_MODEL_SAVE": str(tmp_path / "quant"), "MLM_MODEL_CKPT": "", "EXPORT_DIR": str(tmp_path / "export")}
    cmds = V.their_commands(mlm, conf, "nvfp4")
    seen = {}
    for step, extra in (("quantize", q), ("export", e)):
        env = V.their_env(mlm, hf, tmp_path, extra, **paths)
        if step == "export":
            env["MLM_MODEL_CKPT"] = paths["MLM_MODEL_SAVE"]
        argv = V.recorded_argv(cmds[step], env, tmp_path)
        assert argv[0].endswith(f"{step}.py")
        seen[step] = V.parse_their_args(argv, env)
    qa, ea = seen["quantize"], seen["export"]
    for args in (qa, ea):
        assert args["megatron_core_file"].startswith(str(mlm))  # their core, not the wheel's
        assert (args["num_layers"], args["hidden_size"], args["ffn_hidden_size"]) == \
            (arch.num_layers, arch.hidden_size, arch.ffn_hidden_size)
        assert (args["num_attention_heads"], args["num_query_groups"]) == \
            (arch.attention.num_heads, arch.attention.num_query_groups)
        assert args["padded_vocab_size"] == arch.vocab.padded(1)
        assert args["layernorm_epsilon"] == pytest.approx(arch.norm.epsilon)
        assert args["untie_embeddings_and_output_weights"] == (not arch.tie_embeddings)
        assert args["export_te_mcore_model"] and args["tokenizer_model"] == hf
    assert (qa["calib_size"], qa["calib_max_sequence_length"], qa["calib_batch_size"]) == (128, 256, 8)
    assert qa["export_quant_cfg"] == "NVFP4_DEFAULT_CFG" and qa["skip_generate"] and qa["pretrained_model_path"] == hf
    assert qa["save"] == paths["MLM_MODEL_SAVE"] and ea["load"] == paths["MLM_MODEL_SAVE"]
    assert ea["export_dir"] == paths["EXPORT_DIR"] and ea["pretrained_model_name"] == hf


def test_timed_kills_the_whole_group_at_its_timeout(tmp_path: Path) -> None:
    """A process that outlives its time is stopped with its children (torchrun's worker), rc 124."""
    import os
    import time

    pidfile = tmp_path / "child.pid"
    # the child in a session of its own, as torchrun starts its worker: a process-group kill alone misses it
    script = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], " \
             f"start_new_session=True); " \
             f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    with V.GpuSampler() as sampler:
        r = V.timed([sys.executable, "-c", script], dict(os.environ), log=tmp_path / "log", label="slow",
                    sampler=sampler, peak_dir=tmp_path / "peaks", timeout=3)
    assert r["rc"] == 124 and r["wall_s"] < 10
    child = int(pidfile.read_text())
    time.sleep(0.2)
    status = Path(f"/proc/{child}/status")
    state = status.read_text().split("State:")[1].split()[0] if status.exists() else "gone"
    assert state in ("gone", "Z", "X")  # killed (a zombie until its new parent reaps it)


def _pid_state(pid: int) -> str:
    status = Path(f"/proc/{pid}/status")
    try:
        return status.read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_timeout_kills_a_worker_that_left_the_tree_and_keeps_the_files(tmp_path: Path) -> None:
    """The middle process (torchrun's role) exits at once, so its worker is reparented away from the tree that
    `timed` started; the marked environment still finds it. Files written before the timeout stay; nothing is
    running afterwards that could write or read them; the call returns promptly (no hang)."""
    import os
    import time

    out = tmp_path / "theirs-quant"
    out.mkdir()
    pidfile = tmp_path / "worker.pid"
    worker = (f"import os, time; open({str(out / 'shard.bin')!r}, 'wb').write(b'x' * 1000); "
              f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120); "
              f"open({str(out / 'late.bin')!r}, 'w').write('late')")
    middle = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {worker!r}], start_new_session=True)"
    script = f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {middle!r}]); time.sleep(120)"
    with V.GpuSampler() as sampler:
        t = time.time()
        r = V.timed([sys.executable, "-c", script], dict(os.environ), log=tmp_path / "log", label="orphan",
                    sampler=sampler, peak_dir=tmp_path / "peaks", timeout=4)
    assert r["rc"] == 124 and time.time() - t < 20
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    assert _pid_state(pid) in ("gone", "Z", "X")
    assert (out / "shard.bin").read_bytes() == b"x" * 1000 and not (out / "late.bin").exists()


def test_a_process_left_running_after_a_clean_exit_is_stopped(tmp_path: Path) -> None:
    """A launcher that returns 0 but leaves a child running (a worker that would still hold the GPU or the
    files when the next process starts): `timed` stops it and says so."""
    import os
    import time

    pidfile = tmp_path / "child.pid"
    script = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
              f"start_new_session=True); open({str(pidfile)!r}, 'w').write(str(p.pid))")
    with V.GpuSampler() as sampler:
        r = V.timed([sys.executable, "-c", script], dict(os.environ), log=tmp_path / "log", label="leak",
                    sampler=sampler, peak_dir=tmp_path / "peaks", timeout=60)
    pid = int(pidfile.read_text())
    assert r["rc"] == 0 and r["left_running_killed"] == [pid] and r["wall_s"] < 30
    time.sleep(0.2)
    assert _pid_state(pid) in ("gone", "Z", "X")


def test_visible_gpu_names_the_physical_gpu() -> None:
    assert V.visible_gpu({}) == "0"
    assert V.visible_gpu({"CUDA_VISIBLE_DEVICES": "1"}) == "1"
    assert V.visible_gpu({"CUDA_VISIBLE_DEVICES": "GPU-1234,GPU-5678"}) == "GPU-1234"
    assert V.GpuSampler("1").gpu == "1"


def test_budget_guard_uses_the_slowest_pair() -> None:
    V.ELAPSED.clear()
    assert V.next_rep_guess([], 200) == pytest.approx(200 * 1.05 + 5)
    done = [{"elapsed_s": 130.0, "pair_s": 110.0}, {"elapsed_s": 100.0, "pair_s": 100.0}, {"elapsed_s": 120.0}]
    assert V.next_rep_guess(done, 200) == pytest.approx(120 * 1.05 + 5)  # a failed rep has no pair_s


def test_stream_plan_separates_everything(tmp_path: Path) -> None:
    plan = V.stream_plan(["reference-llama:fp8", "reference-llama:nvfp4"], ["0", "1"], out=tmp_path,
                         work=Path("/tmp/w"), port_base=29600)
    assert [s["gpu"] for s in plan] == ["0", "1"]
    for key in ("name", "out", "work", "master_port"):
        assert len({s[key] for s in plan}) == 2
    ports = {s["master_port"] for s in plan} | {s["master_port"] + 1 for s in plan}
    assert len(ports) == 4  # ours and theirs, per stream
    with pytest.raises(SystemExit, match="GPUs"):
        V.stream_plan(["reference-llama:fp8"] * 3, ["0", "1"], out=tmp_path, work=tmp_path, port_base=1)
    with pytest.raises(SystemExit, match="unknown"):
        V.stream_plan(["llama:fp9"], ["0"], out=tmp_path, work=tmp_path, port_base=1)


FAKE_STREAM = '''
"""Stands in for one stream of vs_megatron_lm.py --streams on the CPU: checks what it was given, writes a result."""
import argparse, json, os, sys, time
from pathlib import Path
sys.path.insert(0, os.environ["VSMLM_BENCH"])
import vs_megatron_lm as V
p = argparse.ArgumentParser()
for f in ("--cases", "--reps", "--windows", "--seq", "--batch", "--eval-windows", "--mlm", "--work", "--out",
          "--budget-s", "--first-guess-s", "--master-port"):
    p.add_argument(f)
a = p.parse_args()
case, fmt = a.cases.split(":")
out = Path(a.out)
(out / "pid").write_text(str(os.getpid()))
print("warning: a line the relay leaves out", flush=True)
print(f"stream {a.cases} gpu {os.environ['CUDA_VISIBLE_DEVICES']} port {a.master_port} work {a.work}", flush=True)
step = {"rc": 0, "gpu_used_peak_bytes": 10, "torch_max_allocated_bytes": 5}
compare = {"tensors": 4, "bitwise_equal_tensors": 4, "by_kind": {"weight": {"tensors": 4, "bitwise_equal": 4}},
           "differing": {}, "json_equal": {"config.json": True, "hf_quant_config.json": True}, "bitwise_equal": True}
reps = [{"ours": {"rc": 0, "wall_s": 10.0 + i, "gpu_used_peak_bytes": 7, "in_process_s": 5.0,
                  "stages": {"quantize": {"seconds": 1.0, "peak_memory_bytes": 3}}},
         "theirs": {"quantize": {**step, "wall_s": 20.0}, "export": {**step, "wall_s": 10.0 + i}}, "compare": compare}
        for i in range(int(a.reps))]
row = {"case": case, "format": fmt, "reps": reps}
V.summarize(row)
res = {"info": {"started": "t0", "visible_gpu": os.environ["CUDA_VISIBLE_DEVICES"]}, "cases": [row]}
(out / "vs_megatron_lm.json").write_text(json.dumps(res))
if fmt == "nvfp4" or os.environ.get("FAKE_ALL_SLOW"):  # overruns its budget: killed, saved repetitions kept
    time.sleep(120)
res["finished"] = "t1"
(out / "vs_megatron_lm.json").write_text(json.dumps(res))
'''


def test_streams_run_at_once_and_are_collected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import time

    fake = tmp_path / "fake_stream.py"
    fake.write_text(FAKE_STREAM)
    monkeypatch.setattr(V, "STREAM_SCRIPT", fake)
    monkeypatch.setattr(V, "STREAM_GRACE_S", 1)
    monkeypatch.setenv("VSMLM_BENCH", str(ROOT / "benchmarks"))
    (tmp_path / "COMMIT").write_text(V.MLM_COMMIT + "\n")  # the Megatron-LM files: only their commit is read
    out = tmp_path / "out"
    t = time.time()
    V.main(["--streams", "--cases", "reference-llama:fp8,reference-llama:nvfp4", "--gpus", "0,1", "--reps", "3",
            "--budget-s", "4", "--out", str(out), "--work", str(tmp_path / "w"), "--mlm", str(tmp_path)])
    assert time.time() - t < 30  # the overrunning stream was killed, not waited for
    printed = capsys.readouterr().out
    assert "[gpu0-reference-llama-fp8] stream reference-llama:fp8 gpu 0 port 29600" in printed
    assert "[gpu1-reference-llama-nvfp4] stream reference-llama:nvfp4 gpu 1 port 29610" in printed
    assert "warning: a line" not in printed
    assert "warning: a line" in (out / "gpu0-reference-llama-fp8" / "run.log").read_text()  # the full log
    merged = json.loads((out / "vs_megatron_lm.json").read_text())
    assert [(s["name"], s["gpu"], s["rc"]) for s in merged["streams"]] == \
        [("gpu0-reference-llama-fp8", "0", 0), ("gpu1-reference-llama-nvfp4", "1", 124)]
    assert merged["streams"][1]["finished"] == "not finished (stopped)"
    assert [(c["case"], c["format"], c["gpu"], c["reps_done"]) for c in merged["cases"]] == \
        [("reference-llama", "fp8", "0", 3), ("reference-llama", "nvfp4", "1", 3)]
    md = (out / "tables.md").read_text()
    assert "at the same time on one host" in md and "| reference-llama nvfp4 | 1 | 3 | 11.0 (10-12) | 31.0 (30-32) |" in md
    assert "| reference-llama fp8 | weight 4/4 | [4, 4, 4] | True, True |" in md
    # --collect on the streams' own files gives the same cases
    V.main(["--collect", str(out / "gpu0-reference-llama-fp8" / "vs_megatron_lm.json"),
            str(out / "gpu1-reference-llama-nvfp4" / "vs_megatron_lm.json"), "--out", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "vs_megatron_lm.json").read_text())
    assert [(c["case"], c["format"], c["gpu"]) for c in again["cases"]] == \
        [("reference-llama", "fp8", "0"), ("reference-llama", "nvfp4", "1")]


def _tiny_qwen3():
    """A Qwen3-0.6B-shaped stand-in (qk-norm, grouped queries, tied embeddings, Qwen3's vocabulary), small."""
    import attrs

    from modelopt_typed_recipes.catalog import get_arch

    q = get_arch("qwen3-0.6b")
    return attrs.evolve(q, num_layers=2, hidden_size=64, ffn_hidden_size=128,
                        attention=attrs.evolve(q.attention, num_heads=4, num_query_groups=2, kv_channels=16))


def test_random_qwen3_checkpoint_imports_into_megatron_core(tmp_path: Path) -> None:
    """The checkpoint the GPU run makes (here on the CPU, from a small stand-in of the same shape) is read by
    ModelOpt's HF -> Megatron-Core importer, which both flows use, into a model giving transformers' logits."""
    import torch
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill
    from transformers import AutoModelForCausalLM

    from _dist import init_gloo_world
    from megatron_cpu_shim import megatron_on_cpu
    from modelopt_typed_recipes.runtime import data, distributed
    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    arch = _tiny_qwen3()
    folder = tmp_path / "hf"
    info = V.make_random_hf(arch, folder, device="cpu")
    assert info["params"] == arch.params_total
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["tie_word_embeddings"] and cfg["vocab_size"] == 151936
    tok = data.load_tokenizer(str(folder))
    assert len(tok) <= cfg["vocab_size"] and cfg["eos_token_id"] == tok.eos_token_id

    init_gloo_world()
    distributed.set_layout(ParallelLayout(), device="cpu")
    with megatron_on_cpu():
        m = build.build_model(arch, ParallelLayout(), dtype="fp32", device="cpu", spec="local")
        build.import_hf(m, str(folder), dtype="fp32")
        ids = torch.tensor([tok("The river bank was steep and the water ran fast.")["input_ids"][:12]])
        with torch.no_grad():
            ours = megatron_prefill(m, ids)[..., :151936]
            ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()(ids).logits
    assert (ours - ref).abs().max() < 1e-3


@pytest.mark.parametrize("fmt", list(V.FORMATS))
def test_qwen3_recipe_checks_on_the_random_checkpoints_config(fmt: str, tmp_path: Path) -> None:
    """`check` on the config.json and tokenizer that make_random_hf writes for the full-size model (its weights
    are made on the GPU only)."""
    from transformers import AutoConfig

    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.runtime import data
    from modelopt_typed_recipes.spec.recipe import Recipe

    tok = data.load_tokenizer(None)
    folder = tmp_path / "hf"
    AutoConfig.for_model(**V.random_hf_config(get_arch("qwen3-0.6b"), tok)).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    recipe = Recipe.from_dict(V.our_recipe("qwen3-0.6b", fmt, str(folder), windows=128, seq=256, batch=8,
                                           out=tmp_path / "out"))
    plan = check_recipe(recipe, env=Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1,
                                                transformer_engine=True))
    assert plan.ok, [str(e) for e in plan.errors]


def test_their_torchrun_takes_the_streams_port(tmp_path: Path) -> None:
    """Their scripts launch `torchrun --nproc_per_node=N` with no port: PET_MASTER_PORT (set per stream by
    their_env) is what moves torchrun off 29500, so two streams on one host do not meet."""
    import os
    import subprocess

    env = V.their_env(tmp_path, "/hf", tmp_path, "", port=29671, MLM_MODEL_SAVE="x")
    assert env["PET_MASTER_PORT"] == "29671" and "PET_MASTER_PORT" not in V.their_env(tmp_path, "/hf", tmp_path, "")
    script = tmp_path / "show.py"
    script.write_text("import os; print('PORT', os.environ['MASTER_PORT'], flush=True)")
    run_env = {**os.environ, "PET_MASTER_PORT": env["PET_MASTER_PORT"]}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", str(script)],
                         env=run_env, capture_output=True, text=True, timeout=120, check=True)
    assert "PORT 29671" in out.stdout


def test_streams_stop_with_their_parent_on_sigterm(tmp_path: Path) -> None:
    """A `timeout` around --streams sends SIGTERM to it: the streams (in sessions of their own, which the signal
    does not reach) are killed, what they saved is collected, and the exit code says so."""
    import os
    import signal
    import subprocess
    import time

    fake = tmp_path / "fake_stream.py"
    fake.write_text(FAKE_STREAM)
    (tmp_path / "COMMIT").write_text(V.MLM_COMMIT + "\n")
    out = tmp_path / "out"
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import vs_megatron_lm as V; "
            f"from pathlib import Path; V.STREAM_SCRIPT = Path({str(fake)!r}); "
            f"V.main(['--streams', '--cases', 'reference-llama:fp8,reference-llama:nvfp4', '--reps', '2', "
            f"'--budget-s', '300', '--out', {str(out)!r}, '--work', {str(tmp_path / 'w')!r}, '--mlm', {str(tmp_path)!r}])")
    env = {**os.environ, "VSMLM_BENCH": str(ROOT / "benchmarks"), "FAKE_ALL_SLOW": "1"}
    parent = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    names = ("gpu0-reference-llama-fp8", "gpu1-reference-llama-nvfp4")
    deadline = time.time() + 60
    while time.time() < deadline and not all((out / n / "vs_megatron_lm.json").is_file() for n in names):
        time.sleep(0.2)
    pids = [int((out / n / "pid").read_text()) for n in names]
    parent.send_signal(signal.SIGTERM)
    stdout, _ = parent.communicate(timeout=60)
    assert parent.returncode == 128 + signal.SIGTERM, stdout[-2000:]
    time.sleep(0.2)
    assert all(_pid_state(pid) in ("gone", "Z", "X") for pid in pids)
    merged = json.loads((out / "vs_megatron_lm.json").read_text())
    assert merged["stopped_by_signal"] == signal.SIGTERM
    assert [s["rc"] for s in merged["streams"]] == [128 + signal.SIGTERM] * 2
    assert [c["reps_done"] for c in merged["cases"]] == [2, 2]  # what they had saved


def test_scale_rounding_accounts_for_every_differing_weight_tensor() -> None:
    """The H200 run (session 6) found, for reference-llama, 19 of 42 FP8 weight scales one float32 step apart,
    and for NVFP4 13 per-tensor scales, 4 per-block scale tensors and 11 weight tensors different; everything else
    bitwise equal. Computing the scales both ways (CUDA's reciprocal multiplication, the CPU's division) from the
    same weights with ModelOpt's formulas gives exactly those counts: the GPU/CPU placement of the export is the
    whole difference in the weights."""
    assert V.scale_rounding(V.reference_hf_dir()) == {
        "linear_weights": 42, "fp8_weight_scale": 19, "nvfp4_weight_scale_2": 13, "nvfp4_weight_scale": 4,
        "nvfp4_weight": 11}
