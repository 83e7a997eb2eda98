"""Measure peak GPU memory of the things the memory plan predicts, on the GPU machine.

    python benchmarks/memory_plan_measure.py --out DIR        # driver: TP=1 on 1 GPU, then TP=2 on 2 GPUs

For two Megatron-Core GPTModel sizes (~0.5B and ~1.4B parameters; local layer spec, bf16, RMSNorm, SwiGLU,
RoPE, GQA 16/4, untied 32000-row vocabulary) and TP=1 / TP=2 (sequence parallel on), each rank records
``torch.cuda.max_memory_allocated`` above its baseline for:

* ``weights``: building the model on the GPU;
* ``forward``: one bf16 forward of batch x seq tokens under ``torch.no_grad`` (prune's calibration);
* ``calibrate``: ``mtq.quantize(model, FP8_DEFAULT_CFG, forward_loop)`` with that forward as the loop;
* ``fake_quant_forward``: one forward of the quantized model (FP8 fake quant on weights and inputs).

ModelOpt's FP8 CUDA extension takes ~60 s to compile on a fresh machine; ``--fp8-kernel eager`` (default)
uses its eager fallback instead (fp32 temporaries) and says so in the output.

Tokens are byte-level ids of real text (this repository's own files): memory does not depend on the
values, and the standards forbid random tokens as data. The driver launches workers with the plan's own
torchrun argv (``modelopt_typed_recipes.plan.launch.plan(..., program=...)``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {
    "0.5b": {"num_layers": 24, "hidden_size": 1024, "ffn_hidden_size": 4096, "num_heads": 16, "query_groups": 4},
    "1.4b": {"num_layers": 28, "hidden_size": 2048, "ffn_hidden_size": 5632, "num_heads": 16, "query_groups": 4},
}
VOCAB = 32000
BATCH, SEQ = 2, 2048


def arch_for(size: str):
    """The same model as a ModelArch, for the plan's prediction (the worker's ``TransformerConfig`` keeps
    Megatron-Core's default ``attention_softmax_in_fp32=True``, hence ``softmax_in_fp32``)."""
    from modelopt_typed_recipes.spec.arch import Attention, ModelArch, RoPE, Vocab

    s = SIZES[size]
    return ModelArch(name=f"bench-{size}", family="bench", num_layers=s["num_layers"], hidden_size=s["hidden_size"],
                     ffn_hidden_size=s["ffn_hidden_size"],
                     attention=Attention(num_heads=s["num_heads"], num_query_groups=s["query_groups"],
                                         softmax_in_fp32=True),
                     position=RoPE(), vocab=Vocab(size=VOCAB, padded_size=VOCAB), seq_length=SEQ,
                     max_position_embeddings=SEQ)


def real_text_tokens(n: int) -> list[int]:
    text = b""
    for path in sorted(ROOT.glob("modelopt_typed_recipes/**/*.py")) + sorted(ROOT.glob("*.md")):
        text += path.read_bytes()
        if len(text) >= n:
            break
    while len(text) < n:
        text += text
    return list(text[:n])


def worker(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    tp = dist.get_world_size()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    tensor_parallel.model_parallel_cuda_manual_seed(1234)

    import modelopt.torch.quantization as mtq

    if args.fp8_kernel == "eager":
        from modelopt.torch.quantization import extensions

        extensions.get_cuda_ext_fp8.extension = None  # skip the 60 s build: ModelOpt's eager FP8 path

    ids = torch.tensor(real_text_tokens(BATCH * SEQ), dtype=torch.long, device="cuda").view(BATCH, SEQ)
    pos = torch.arange(SEQ, device="cuda").unsqueeze(0).expand(BATCH, SEQ)
    results = []
    for size in args.sizes.split(","):
        s = SIZES[size]
        cfg = TransformerConfig(
            num_layers=s["num_layers"], hidden_size=s["hidden_size"], ffn_hidden_size=s["ffn_hidden_size"],
            num_attention_heads=s["num_heads"], num_query_groups=s["query_groups"], normalization="RMSNorm",
            gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, bf16=True,
            params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16, tensor_model_parallel_size=tp,
            sequence_parallel=False, hidden_dropout=0.0, attention_dropout=0.0,
        )
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        row: dict = {"size": size, "tp": tp, "rank": dist.get_rank(), "batch": BATCH, "seq": SEQ}
        t0 = time.time()
        model = GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                         vocab_size=VOCAB, max_sequence_length=SEQ, position_embedding_type="rope",
                         share_embeddings_and_output_weights=False).cuda().eval()
        row["params_local"] = sum(p.numel() for p in model.parameters())
        row["weights"] = torch.cuda.memory_allocated() - base
        row["weights_peak"] = torch.cuda.max_memory_allocated() - base

        def fwd(m):
            with torch.no_grad():
                out = m(ids, pos, None)
            del out

        torch.cuda.reset_peak_memory_stats()
        fwd(model)
        torch.cuda.synchronize()
        row["forward"] = torch.cuda.max_memory_allocated() - base
        torch.cuda.reset_peak_memory_stats()
        t1 = time.time()
        mtq.quantize(model, mtq.FP8_DEFAULT_CFG, forward_loop=fwd)
        torch.cuda.synchronize()
        row["calibrate"] = torch.cuda.max_memory_allocated() - base
        row["calibrate_s"] = round(time.time() - t1, 2)
        row["after_quantize"] = torch.cuda.memory_allocated() - base
        torch.cuda.reset_peak_memory_stats()
        fwd(model)
        torch.cuda.synchronize()
        row["fake_quant_forward"] = torch.cuda.max_memory_allocated() - base
        row["fp8_kernel"] = args.fp8_kernel
        row["build_to_end_s"] = round(time.time() - t0, 2)
        row["gpu"] = torch.cuda.get_device_name()
        row["total_memory"] = torch.cuda.get_device_properties(0).total_memory
        del model
        gc.collect()
        torch.cuda.empty_cache()
        rows: list = [None] * dist.get_world_size()
        dist.all_gather_object(rows, row)
        if dist.get_rank() == 0:
            for r in rows:
                print(json.dumps(r), flush=True)
            if args.out:
                with open(Path(args.out) / "memory_plan_raw.jsonl", "a") as f:
                    for r in rows:
                        f.write(json.dumps(r) + "\n")
        results.append(row)
    ps.destroy_model_parallel()
    dist.destroy_process_group()
    return 0


def driver(args: argparse.Namespace) -> int:
    from modelopt_typed_recipes.plan.launch import plan

    Path(args.out).mkdir(parents=True, exist_ok=True)
    rc_all = 0
    for tp in (int(t) for t in args.tps.split(",")):
        program = [str(Path(__file__).relative_to(ROOT)), "--worker", "--out", args.out, "--sizes", args.sizes,
                   "--fp8-kernel", args.fp8_kernel]
        lp = plan(arch_for("0.5b"), tp, tensor_parallel=tp, sequence_parallel=False, environ={}, program=program, seq_length=SEQ, batch=BATCH)
        argv = list(lp.argv)
        if shutil.which(argv[0]) is None:
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        print("$ " + " ".join(argv), flush=True)
        t0 = time.time()
        rc = subprocess.run(argv, cwd=ROOT, env={**os.environ, **dict(lp.env)}).returncode
        print(f"-> rc={rc} in {time.time() - t0:.1f}s", flush=True)
        rc_all |= rc
    return rc_all


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--out", default="benchmarks/memory_plan_out")
    p.add_argument("--sizes", default="0.5b,1.4b")
    p.add_argument("--tps", default="1,2", help="tensor-parallel sizes to measure, in turn")
    p.add_argument("--fp8-kernel", default="eager", choices=["eager", "cuda"])
    args = p.parse_args()
    return worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    raise SystemExit(main())
