"""Memory plan: per-rank terms scale the way the layout says, the GPU table, and ResourceError naming
the smallest layout that fits. (Accuracy against H100 measurements: benchmarks/memory_plan.md.)"""

from __future__ import annotations

import attrs
import pytest

from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import ResourceError, UnknownNameError
from modelopt_typed_recipes.plan import gpus as gpu_table
from modelopt_typed_recipes.plan import memory
from modelopt_typed_recipes.spec.arch import Attention, ModelArch, Vocab
from modelopt_typed_recipes.spec.layout import ParallelLayout

H100 = gpu_table.get_gpu("h100-80gb")


def test_gpu_table_and_aliases():
    assert gpu_table.get_gpu("H100").name == "h100-80gb"
    assert gpu_table.get_gpu("h200").memory_bytes > gpu_table.get_gpu("a100-80gb").memory_bytes
    assert {g for g in gpu_table.GPUS} == {"a100-80gb", "h100-80gb", "h200-141gb", "b200-192gb", "gb200"}
    with pytest.raises(UnknownNameError) as exc:
        gpu_table.get_gpu("h10")
    assert "h100-80gb" in exc.value.hint
    assert gpu_table.usable_bytes(H100) < H100.memory_bytes


def test_detect_is_optional(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # library missing
    assert gpu_table.detect() is None


def test_weights_match_the_architecture_at_tp1_pp1():
    llama = get_arch("llama-3.1-8b-instruct")
    plan = memory.estimate(llama, ParallelLayout(), H100, stage="quantize")
    # the padded vocabulary makes Megatron's model a little larger than the HF parameter count
    assert plan.terms["weights"] == pytest.approx(llama.weight_bytes("bf16"), rel=0.01)
    assert plan.weights_quantized_bytes == pytest.approx(llama.weight_bytes("fp8"), rel=0.01)


@pytest.mark.parametrize("name", ["llama-3.1-8b-instruct", "qwen3-30b-a3b", "nemotron-h-8b-base-8k", "deepseek-v2-lite"])
def test_tensor_and_pipeline_parallelism_split_the_weights(name):
    arch = get_arch(name)
    one = memory.estimate(arch, ParallelLayout(), H100).terms["weights"]
    tp2 = memory.estimate(arch, ParallelLayout(tensor_parallel=2), H100).terms["weights"]
    assert 0.45 * one < tp2 < 0.62 * one  # norms and the router stay replicated
    pp = next((d for d in range(2, arch.num_layers + 1) if arch.num_layers % d == 0), 1)
    pp2 = memory.estimate(arch, ParallelLayout(pipeline_parallel=pp), H100).terms["weights"]
    assert pp2 < one or pp == 1


def test_expert_parallelism_splits_only_the_experts():
    moe = get_arch("qwen3-30b-a3b")
    one = memory.estimate(moe, ParallelLayout(), H100).terms["weights"]
    ep8 = memory.estimate(moe, ParallelLayout(expert_parallel=8, data_parallel=8), H100).terms["weights"]
    assert ep8 < one / 4


def test_activations_grow_with_batch_and_sequence_and_shrink_with_cp():
    llama = get_arch("llama-3.1-8b-instruct")
    a = memory.estimate(llama, ParallelLayout(), H100, batch=1, seq_length=2048).terms["activations"]
    b = memory.estimate(llama, ParallelLayout(), H100, batch=4, seq_length=2048).terms["activations"]
    c = memory.estimate(llama, ParallelLayout(context_parallel=2), H100, batch=4, seq_length=2048).terms["activations"]
    assert b == pytest.approx(4 * a, rel=0.05) and c < b


def test_stage_terms():
    llama = get_arch("llama-3.1-8b-instruct")
    q = memory.estimate(llama, ParallelLayout(), H100, stage="quantize", quant_format="int4_awq")
    assert q.terms["quantizer_state"] > 0
    # long sequences: attention scores hold the peak and GEMM temporaries do not raise it (measured on H100)
    assert q.terms["fake_quant"] == 0
    # short sequences, small vocabulary, wide MLP: the GEMMs hold the peak and their temporaries lift it
    wide = ModelArch(name="wide", family="t", num_layers=2, hidden_size=1024, ffn_hidden_size=16384,
                     attention=Attention(num_heads=8), vocab=Vocab(size=1024), seq_length=128,
                     max_position_embeddings=128)
    short = memory.estimate(wide, ParallelLayout(), H100, stage="quantize", batch=64)
    assert short.terms["fake_quant"] > 0
    assert memory.estimate(wide, ParallelLayout(), H100, stage="quantize", batch=64,
                           quant_format="bf16").terms["fake_quant"] == 0
    e = memory.estimate(llama, ParallelLayout(pipeline_parallel=4), H100, stage="export", quant_format="nvfp4")
    assert e.terms["export_buffers"] > 0 and e.terms["activations"] == 0
    d = memory.estimate(llama, ParallelLayout(data_parallel=8), H100, stage="distill", batch=2, seq_length=1024)
    logits = 2 * 1024 * llama.vocab.padded(1) * 2  # the teacher's bf16 logits, kept for the loss
    assert d.terms["optimizer"] > 0 and d.terms["teacher"] == pytest.approx(d.terms["weights"] + logits, abs=2)
    # fp32 gradients (4 bytes a parameter) + master weights and two Adam moments (12), the last three over DP=8
    assert d.terms["optimizer"] == pytest.approx(d.terms["weights"] / 2 * (4 + 12 / 8), rel=1e-6)
    pruned = attrs.evolve(llama, num_layers=llama.num_layers // 2)
    p = memory.estimate(pruned, ParallelLayout(), H100, stage="distill", teacher=llama, batch=2, seq_length=1024)
    assert p.terms["teacher"] == d.terms["teacher"] and p.terms["weights"] < d.terms["weights"]
    assert memory.estimate(llama, ParallelLayout(), H100, stage="distill", with_teacher=False).terms["teacher"] == 0
    g = memory.estimate(llama, ParallelLayout(), H100, generate_tokens=4096)
    assert g.terms["kv_cache"] == llama.kv_cache_bytes_per_token() * 4096


def test_require_fit_names_the_smallest_fitting_layout():
    big = get_arch("llama-3.1-405b-instruct")
    mem = memory.estimate(big, ParallelLayout(tensor_parallel=8), H100)
    assert not mem.fits
    with pytest.raises(ResourceError) as exc:
        memory.require_fit(mem, big, H100, 16)
    smallest = memory.smallest_fitting(big, H100, 16)
    assert smallest is not None and smallest.short() in exc.value.hint
    assert memory.estimate(big, smallest, H100).fits
    assert memory.smallest_fitting(big, H100, 4) is None


def test_predictions_stay_within_15_percent_of_the_h100_measurements():
    """Guards the calibrated coefficients against benchmarks/memory_plan_raw.jsonl (measured on 2 x H100)."""
    import json
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import memory_plan as mp
    finally:
        sys.path.remove(str(bench))
    rows = [json.loads(line) for line in (bench / "memory_plan_raw.jsonl").read_text().splitlines() if line.strip()]
    seen: set[int] = set()
    checked = 0
    for r in rows:
        if r["rank"] != 0:
            continue
        heads = mp.arch_for(r["size"]).attention.num_heads // r["tp"]
        buffer = 0 if r["tp"] not in seen else r["batch"] * heads * r["seq"] ** 2 * 2
        seen.add(r["tp"])
        pred = mp.predictions(r["size"], r["tp"])
        assert pred["weights"] == pytest.approx(r["weights"], rel=0.15)
        assert pred["forward"] == pytest.approx(r["forward"] + buffer, rel=0.15)
        assert pred["quantize"] == pytest.approx(max(r["calibrate"], r["fake_quant_forward"]) + buffer, rel=0.15)
        checked += 1
    assert checked == 4


def test_kimi_export_profile_builds_on_the_cpu_and_is_not_refused(capsys):
    """Megatron-LM's Kimi-K2 export (PP 16, CPU and meta-device init) keeps the 1 T parameters in host memory;
    the plan used to refuse it as 142 GiB per GPU. A GPU-resident export of the same layout is still refused."""
    import json

    from modelopt_typed_recipes.catalog.profiles import get_profile
    from modelopt_typed_recipes.cli import main
    from modelopt_typed_recipes.plan.launch import plan

    prof = get_profile("kimi-k2-instruct-export")
    assert prof.stage == "export" and prof.use_cpu_initialization
    lp = plan("kimi-k2-instruct", 16, stage="export", recipe=prof.layout_fields(), weights_on_host=True)
    assert lp.memory.fits and lp.memory.terms["weights"] == 0
    assert 100 * 2**30 < lp.memory.host_bytes < 200 * 2**30  # 1 T bf16 params / 16 stages, plus the export buffers
    with pytest.raises(ResourceError):
        plan("kimi-k2-instruct", 16, stage="export", recipe=prof.layout_fields())
    assert main(["plan", "kimi-k2-instruct", "--profile", "kimi-k2-instruct-export", "--gpus", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stage"] == "export" and out["memory"]["fits"] and out["memory"]["host_bytes"] > 0
