"""The memory plan against peaks measured at real sizes on H200s (issue 9, point 3: within 15 % of every case).

Each row is ``torch.cuda.max_memory_allocated`` of the most loaded rank for one stage of
``benchmarks/scale_gpu.py`` (our ``run_post_training`` on registry architectures with random weights, local layer
spec, batch 8 x 2,048 tokens, Megatron-Core 0.19.2, ModelOpt 0.47.0, torch 2.11+cu130, 2026-11-30), copied from
the raw result files named in ``source`` (key ``peak_bytes_per_rank``); ``benchmarks/scale_gpu.md`` describes the
runs. The export follows the quantize stage in the same process: with the same layout it still holds the
calibration's attention score buffer (``calibrated_in_process``); after a hand-over to another layout it does not.
The small-model H100 fits are kept by ``tests/test_plan_memory.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.plan import memory
from modelopt_typed_recipes.plan.gpus import get_gpu
from modelopt_typed_recipes.spec.layout import ParallelLayout

RAW = Path(__file__).resolve().parents[1] / "benchmarks" / "raw"
H200 = get_gpu("h200")
BATCH, SEQ = 8, 2048
TP1 = {}
ROWS = [
    # (model, format, stage, layout fields, calibrated_in_process, measured bytes, source)
    ("llama3.1-8b", "nvfp4", "quantize", TP1, False, 26_950_796_288, "session7/streams/llama3.1-8b/scale_gpu.json"),
    ("llama3.1-8b", "nvfp4", "export", TP1, True, 18_977_634_816, "session7/streams/llama3.1-8b/scale_gpu.json"),
    ("qwen3-8b", "fp8", "quantize", TP1, False, 28_825_834_496, "session7/streams/qwen3-8b/scale_gpu.json"),
    ("qwen3-8b", "fp8", "export", TP1, True, 18_566_901_248, "session7/streams/qwen3-8b/scale_gpu.json"),
    ("qwen3-8b", "nvfp4", "quantize", TP1, False, 28_825_834_496, "scale/scale_gpu_c1a.json"),
    ("qwen3-8b", "nvfp4", "export", TP1, True, 19_255_736_832, "scale/scale_gpu_c1a.json"),
    ("qwen3-8b", "fp8", "quantize", {"tensor_parallel": 2}, False, 22_049_936_384, "scale/scale_gpu_c3b.json"),
    ("qwen3-30b-a3b", "fp8", "quantize", {"expert_parallel": 2, "data_parallel": 2}, False, 44_942_009_344,
     "session7/moe-ours/scale_gpu.json"),
    ("qwen3-30b-a3b", "fp8", "export", {"pipeline_parallel": 2}, False, 30_598_230_528,
     "session7/moe-ours/scale_gpu.json"),
    ("qwen3-8b", "nvfp4", "quantize", {"tensor_parallel": 2}, False, 22_049_936_384,
     "session8/tp2-nvfp4/scale_gpu.json"),
    ("qwen3-8b", "nvfp4", "export", {"pipeline_parallel": 2}, False, 8_700_935_168,
     "session8/tp2-nvfp4/scale_gpu.json"),
    # the sixth session, on a 4-GPU H200 host (the same GPU; other cases ran on the other GPUs at the same time)
    ("llama3.1-8b", "fp8", "quantize", TP1, False, 26_950_796_288, "session10/c1/dense1/l8-fp8/scale_gpu.json"),
    ("llama3.1-8b", "fp8", "export", TP1, True, 18_243_702_784, "session10/c1/dense1/l8-fp8/scale_gpu.json"),
    ("qwen3-8b", "fp8", "export", {"pipeline_parallel": 2}, False, 8_227_045_376,
     "session10/c3/tp2/t2-fp8/scale_gpu.json"),
    ("qwen3-30b-a3b", "nvfp4", "quantize", {"expert_parallel": 2, "data_parallel": 2}, False, 44_941_993_984,
     "session10/c2/moe/moe-ours/scale_gpu.json"),
    ("qwen3-30b-a3b", "nvfp4", "export", {"pipeline_parallel": 2}, False, 31_534_021_632,
     "session10/c2/moe/moe-ours/scale_gpu.json"),
    # the seventh session, a 2-GPU H200 host: 512 windows at calibration batch 48 (the last field)
    ("qwen3-30b-a3b", "nvfp4", "quantize", {"expert_parallel": 2, "data_parallel": 2}, False, 109_073_572_864,
     "session11/c2/moe512-ours/moe-ours/scale_gpu.json", 48),
    ("qwen3-30b-a3b", "nvfp4", "export", {"pipeline_parallel": 2}, False, 31_532_973_056,
     "session11/c2/moe512-ours/moe-ours/scale_gpu.json", 48),
]
"""Not here: qwen3-8b's TP1 PP2 export after its TP2 quantize in the second session (c3b: 16,420,048,896 bytes),
which held the old TP2 model beside the new one (a hand-over bug fixed since); the fifth session's TP2 -> PP2 NVFP4
run and the sixth session's TP2 -> PP2 runs (above) measured the fixed hand-over."""


def _id(row: tuple) -> str:
    model, fmt, stage, fields = row[:4]
    return (f"{model}-{fmt}-{stage}-" + ("-".join(f"{k}{v}" for k, v in fields.items()) or "tp1")
            + (f"-batch{_batch(row)}" if _batch(row) != BATCH else ""))


def _plan(model: str, fmt: str, stage: str, fields: dict, calibrated: bool, batch: int = BATCH) -> memory.MemoryPlan:
    return memory.estimate(get_arch(model), ParallelLayout(**fields), H200, stage=stage, batch=batch,
                           seq_length=SEQ, quant_format=fmt, calibrated_in_process=calibrated)


def _batch(row: tuple) -> int:
    """A row's calibration batch: its eighth field where it has one, else the runs' usual 8."""
    return row[7] if len(row) > 7 else BATCH


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_planned_within_15_percent_of_the_h200_peak(row):
    model, fmt, stage, fields, calibrated, measured = row[:6]
    planned = _plan(model, fmt, stage, fields, calibrated, _batch(row)).per_rank_bytes
    assert planned == pytest.approx(measured, rel=0.15), f"planned {planned / measured - 1:+.1%}"


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_rows_are_the_raw_measurements(row):
    """The numbers above are the ones the GPU runs wrote (model, format, stage, layout, batch, sequence)."""
    model, fmt, stage, fields, _calibrated, measured, source = row[:7]
    cases = [c for c in json.loads((RAW / source).read_text()) if c["model"] == model and c["format"] == fmt]
    assert len(cases) == 1
    case = cases[0]
    assert (case["batch"], case["seq_length"]) == (_batch(row), SEQ)
    # a case whose direct script was skipped for time has no summary: our stages of the run say the peak
    stages = {s["name"].split("-")[0]: s["peak_memory_bytes"] for s in case["reps"][-1]["ours_stages"]}
    assert (case.get("peak_bytes_per_rank") or stages)[stage] == measured == stages[stage]
    layout = case["layout"] if stage == "quantize" else case["export_layout"]
    parts = {p[:2]: int(p[2:]) for p in layout.split()}  # "TP1 PP1 EP2"
    want = ParallelLayout(**fields)
    assert parts["TP"] == want.tensor_parallel and parts["PP"] == want.pipeline_parallel
    assert parts.get("EP", 1) == want.expert_parallel


def test_the_logits_not_attention_hold_the_dense_quantize_peak():
    """At 8 x 2,048 tokens the bf16-softmax attention transient is below the two bf16 logits copies (what made
    the old plan 13-20 % over: 14.5 bytes per score, the H100 fit for an fp32 softmax, gave 15.2 GiB)."""
    arch = get_arch("qwen3-8b")
    assert not arch.attention.softmax_in_fp32
    p = memory.rank_params(arch, ParallelLayout(), 0)
    act = memory.forward_activation_bytes(arch, ParallelLayout(), p, batch=BATCH, seq_length=SEQ, last_stage=True)
    logits = 2 * BATCH * SEQ * arch.vocab.padded(1) * 2
    assert act["peak"] == logits
    scores = BATCH * arch.attention.num_heads * SEQ * SEQ
    assert act["persistent"] == scores * 2  # the bf16 score buffer outlives every forward
    fp32 = memory.forward_activation_bytes(arch, ParallelLayout(), p, batch=BATCH, seq_length=SEQ, last_stage=True,
                                           model=memory.MemoryModel(attention_bytes_per_score_bf16=14.5))
    assert fp32["peak"] > logits  # the old coefficient made attention the peak


def test_the_export_holds_the_score_buffer_only_without_a_hand_over():
    plain = _plan("qwen3-8b", "fp8", "export", TP1, False)
    after = _plan("qwen3-8b", "fp8", "export", TP1, True)
    assert after.per_rank_bytes - plain.per_rank_bytes == BATCH * 32 * SEQ * SEQ * 2
    nvfp4 = _plan("qwen3-8b", "nvfp4", "export", TP1, False)
    p = memory.rank_params(get_arch("qwen3-8b"), ParallelLayout(), 0)
    assert nvfp4.terms["export_buffers"] - plain.terms["export_buffers"] == int(p.linear / 16)  # FP8 scales


def test_moe_dispatchers_keep_their_routing_state():
    arch = get_arch("qwen3-30b-a3b")
    layout = ParallelLayout(expert_parallel=2, data_parallel=2)
    p = memory.rank_params(arch, layout, 0)
    assert p.moe_layers == 48
    act = memory.forward_activation_bytes(arch, layout, p, batch=BATCH, seq_length=SEQ, last_stage=True)
    tokens = BATCH * SEQ
    routing = 48 * (tokens * 128 * (4 + 1) + tokens * 8 * 8)  # fp32 probs, bool map, int64 permutation
    assert act["persistent"] == BATCH * 32 * SEQ * SEQ * 2 + routing


def test_a_first_pipeline_stage_receives_the_logits():
    """``megatron_prefill`` broadcasts the last stage's logits into a full-size buffer on every other stage
    (at 512 tokens a window, where they, not attention, hold the peak)."""
    arch = get_arch("qwen3-8b")
    layout = ParallelLayout(pipeline_parallel=2)
    first = memory.rank_params(arch, layout, 0)
    act = memory.forward_activation_bytes(arch, layout, first, batch=BATCH, seq_length=512, last_stage=False)
    assert act["peak"] == BATCH * 512 * arch.vocab.padded(1) * 2
    alone = memory.forward_activation_bytes(arch, ParallelLayout(), first, batch=BATCH, seq_length=512,
                                            last_stage=False)
    assert alone["peak"] < act["peak"]  # a single stage that is not last has nothing to receive


SMALL_ROWS = [  # the shipped reference-llama (6.8 M parameters) on one H200, 8 x 1,024 tokens, export in the same process
    ("reference-llama", "fp8", "quantize", 305_510_400), ("reference-llama", "fp8", "export", 114_676_736),
    ("reference-llama", "nvfp4", "quantize", 305_510_400), ("reference-llama", "nvfp4", "export", 115_951_104),
]
SMALL_SOURCE = "session13/c1/small/scale_gpu.json"


@pytest.mark.parametrize("row", SMALL_ROWS, ids=lambda r: "-".join(r[:3]))
def test_the_cublas_workspace_holds_the_small_models_peaks(row):
    """At 6.8 M parameters PyTorch's cuBLAS workspace (32 MiB, taken at the first GEMM and kept) is most of a peak:
    with it the plan is within 5 %, without it 13-29 % short (eighth session's raw file)."""
    model, fmt, stage, measured = row
    [case] = [c for c in json.loads((RAW / SMALL_SOURCE).read_text()) if c["model"] == model and c["format"] == fmt]
    assert case["peak_bytes_per_rank"][stage] == measured and (case["batch"], case["seq_length"]) == (8, 1024)

    def plan(model_terms: memory.MemoryModel) -> int:
        return memory.estimate(get_arch(model), ParallelLayout(), H200, stage=stage, batch=8, seq_length=1024,
                               quant_format=fmt, calibrated_in_process=True, model=model_terms).per_rank_bytes

    assert plan(memory.DEFAULT_MODEL) == pytest.approx(measured, rel=0.05)
    assert plan(memory.MemoryModel(cublas_workspace_bytes=0)) < measured * 0.9
