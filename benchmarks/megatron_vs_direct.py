"""The wrapper against ModelOpt called directly: same model, same data, outputs bitwise, wall time within 5 %.

One process, one GPU. A 8-layer Llama-style model (hidden 1024, GQA 16/4, ~190 M parameters with the
reference tokenizer's 4096-token vocabulary) is written once as an HF checkpoint. For each format and
repetition, two fresh Megatron-Core models get the same imported weights; one is quantized by
``mtq.quantize(model, copy.deepcopy(mtq.<PRESET>), loop)`` with a plain loop over the calibration
batches (the direct call), the other by the wrapper's quantize stage (``runtime.megatron.stages.quantize``:
config composition, forward loop, ``mtq.quantize``). The order alternates per repetition. Every amax /
pre_quant_scale tensor is compared with ``torch.equal``; the quantize wall times (CUDA-synchronised;
ModelOpt's CUDA extensions were built beforehand by ``megatron_gpu.py --part prewarm``) are reported as
medians and their ratio. Run: ``python3 benchmarks/megatron_vs_direct.py`` (writes $OUT/megatron_direct.json).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PRESETS = [("fp8", "FP8_DEFAULT_CFG"), ("int4_awq", "INT4_AWQ_CFG"), ("nvfp4", "NVFP4_DEFAULT_CFG")]
REPS = int(os.environ.get("MTR_REPS", "7"))


def main() -> None:
    import attrs
    import modelopt.torch.quantization as mtq
    import torch
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill

    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.plan.techniques.quantize import quantize_config
    from modelopt_typed_recipes.runtime import data, distributed
    from modelopt_typed_recipes.runtime.megatron import build, stages
    from modelopt_typed_recipes.spec.arch import Attention, Vocab
    from modelopt_typed_recipes.spec.layout import ParallelLayout
    from modelopt_typed_recipes.spec.recipe import TextData
    from modelopt_typed_recipes.spec.techniques import Quantize

    work = Path(os.environ.get("MTR_WORK", "/tmp/mtr_work"))
    out = Path(os.environ.get("OUT", "/tmp/mtr_out"))
    base = get_arch("tiny-dense")
    arch = attrs.evolve(base, name="bench-dense", num_layers=8, hidden_size=1024, ffn_hidden_size=2816,
                        attention=Attention(num_heads=16, num_query_groups=4, kv_channels=64, qk_layernorm=True),
                        vocab=Vocab(size=4096, divisible_by=128))
    hf = work / "hf-bench-dense"
    if not hf.exists():
        from transformers import AutoConfig, AutoModelForCausalLM

        from modelopt_typed_recipes.bridges.hf_config import to_hf_config

        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(AutoConfig.for_model(**to_hf_config(arch)), torch_dtype=torch.bfloat16)
        m.save_pretrained(str(hf))
        data.load_tokenizer(None).save_pretrained(str(hf))
        del m
    distributed.init_process_group(device="cuda")
    layout = ParallelLayout()
    distributed.set_layout(layout, device="cuda")
    tok = data.load_tokenizer(str(hf))
    samples = int(os.environ.get("MTR_SAMPLES", "128"))
    windows = data.token_windows(TextData(dataset="reference-train", num_samples=samples, seq_length=512), tok)
    batches = data.batches(windows, 8)
    dev = torch.cuda.current_device()

    def fresh():
        gc.collect()
        torch.cuda.empty_cache()
        model = build.build_model(arch, layout, dtype="bf16", device="cuda", spec="local")
        build.import_hf(model, str(hf), dtype="bf16", workspace=str(work / ".import"))
        return model

    def direct_loop(model):
        with torch.no_grad():
            for ids in batches:
                megatron_prefill(model, ids.to(dev), skip_return_logits=True)

    rows = []
    for short, preset in PRESETS:
        times = {"direct": [], "wrapper": []}
        equal = True
        n_tensors = 0
        for rep in range(REPS):
            order = ("direct", "wrapper") if rep % 2 == 0 else ("wrapper", "direct")
            states = {}
            for who in order:
                model = fresh()
                torch.cuda.synchronize()
                t = time.perf_counter()
                if who == "direct":
                    cfg = copy.deepcopy(getattr(mtq, preset))
                    mtq.quantize(model, cfg, direct_loop)
                else:
                    stages.quantize(model, Quantize(format=short), batches, progress=False,
                                    config=quantize_config(Quantize(format=short))[0].config)
                torch.cuda.synchronize()
                times[who].append(time.perf_counter() - t)
                states[who] = stages.amax_state(model)
                del model
            a, b = states["direct"], states["wrapper"]
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            equal = equal and same
            n_tensors = len(a)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"format": short, "preset": preset, "reps": REPS, "amax_tensors": n_tensors, "bitwise_equal": equal,
               "direct_s": [round(x, 4) for x in times["direct"]], "wrapper_s": [round(x, 4) for x in times["wrapper"]],
               "direct_median_s": round(med["direct"], 4), "wrapper_median_s": round(med["wrapper"], 4),
               "ratio": round(med["wrapper"] / med["direct"], 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    (out / "megatron_direct.json").write_text(json.dumps({"model": "bench-dense 8x1024 GQA16/4", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
