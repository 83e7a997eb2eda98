"""The baseline of ``scale_gpu.py``: the same post-training run written by hand against Megatron-Core and
ModelOpt, without this package (what a user of Megatron-LM's post-training examples writes).

Builds a Megatron-Core ``GPTModel`` (local layer spec) with random weights from a hand-written
``TransformerConfig`` (the values of Megatron-LM's conf files for the model), seeds it as Megatron does
(``model_parallel_cuda_manual_seed``), cuts calibration windows from a text file with a Hugging Face
tokenizer, calls ``mtq.quantize`` with a deep copy of the preset and a ``megatron_prefill`` loop, and
exports with ``export_mcore_gpt_to_hf``. When the export layout differs from the calibration layout (export
is pipeline-parallel only), the model goes through a Megatron distributed checkpoint, as Megatron-LM's
``quantize.sh`` then ``export.sh`` do. Run under torchrun for several GPUs; writes one JSON of timings.
``--deterministic`` does what Megatron-LM's ``--deterministic-mode`` does, by hand: the cuBLAS, Transformer Engine
and NCCL variables before the first CUDA call, PyTorch's deterministic algorithms (warnings only, where an op has
no deterministic kernel) and ``deterministic_mode`` in the TransformerConfig. ``--cpu-threads N`` sets PyTorch's
CPU threads of each process (default: left alone, as a hand-written script does; under torchrun with several
processes that is its ``OMP_NUM_THREADS=1``); ModelOpt's export packs the weights on the CPU.

    torchrun --nproc-per-node=2 benchmarks/scale_direct.py --model qwen3-8b --format fp8 --tp 2 \
        --hf-reference REF --text train.txt --windows 64 --seq 2048 --batch 8 --export-dir OUT --result R.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

# Megatron-LM's conf files (conf/Qwen/Qwen3-8B.sh, conf/meta-llama/Llama-3.1-8B-Instruct.sh,
# conf/Qwen/Qwen3-30B-A3B.sh) as TransformerConfig keyword arguments, plus the GPTModel ones.
MODELS = {
    "qwen3-8b": dict(
        config=dict(num_layers=36, hidden_size=4096, ffn_hidden_size=12288, num_attention_heads=32,
                    num_query_groups=8, kv_channels=128, qk_layernorm=True, layernorm_epsilon=1e-6),
        vocab=151936, max_pos=40960, rope_base=1e6, rope_scaling=None),
    "llama3.1-8b": dict(
        config=dict(num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
                    num_query_groups=8, kv_channels=128, qk_layernorm=False, layernorm_epsilon=1e-5),
        vocab=128256, max_pos=8192, rope_base=500000.0, rope_scaling=8.0),
    "qwen3-30b-a3b": dict(
        config=dict(num_layers=48, hidden_size=2048, ffn_hidden_size=6144, num_attention_heads=32,
                    num_query_groups=4, kv_channels=128, qk_layernorm=True, layernorm_epsilon=1e-6,
                    num_moe_experts=128, moe_router_topk=8, moe_ffn_hidden_size=768,
                    moe_router_score_function="softmax", moe_router_load_balancing_type="none",
                    moe_aux_loss_coeff=0.0, moe_grouped_gemm=False, moe_token_dispatcher_type="alltoall",
                    moe_router_dtype="fp32", moe_layer_freq=[1] * 48),
        vocab=151936, max_pos=40960, rope_base=1e6, rope_scaling=None),
    # the registry's tiny-moe (Qwen3-MoE's structure at toy sizes): a quick check of the EP=2 path
    "tiny-moe": dict(
        config=dict(num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=4,
                    num_query_groups=2, kv_channels=32, qk_layernorm=True, layernorm_epsilon=1e-6,
                    num_moe_experts=8, moe_router_topk=2, moe_ffn_hidden_size=64,
                    moe_router_score_function="softmax", moe_router_load_balancing_type="none",
                    moe_aux_loss_coeff=0.0, moe_grouped_gemm=False, moe_token_dispatcher_type="alltoall",
                    moe_router_dtype="fp32", moe_layer_freq=[1] * 2),
        vocab=1024, max_pos=1024, rope_base=1e6, rope_scaling=None),
    # the package's own trained model (its config.json), imported from its Hugging Face folder with --hf-checkpoint:
    # the run the first measurement timed as a new user would
    "reference-llama": dict(
        config=dict(num_layers=6, hidden_size=256, ffn_hidden_size=768, num_attention_heads=4,
                    num_query_groups=2, kv_channels=64, qk_layernorm=False, layernorm_epsilon=1e-5),
        vocab=4096, max_pos=1024, rope_base=10000.0, rope_scaling=None),
}
PRESETS = {"fp8": "FP8_DEFAULT_CFG", "nvfp4": "NVFP4_DEFAULT_CFG"}
SEED = 1234  # the recipe's seed (Megatron's parallel RNG)
WEIGHT_SEED = 0  # the random weights' seed (the recipe's source: {type: random, seed: 0})


def etp(tp: int, ep: int) -> int:
    """Expert tensor parallelism: Megatron's default (= TP) for dense layouts, 1 beside expert parallelism."""
    return 1 if ep > 1 else tp


def set_layout(tp: int, pp: int, ep: int) -> None:
    from megatron.core import parallel_state, tensor_parallel

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             expert_model_parallel_size=ep, expert_tensor_parallel_size=etp(tp, ep))
    tensor_parallel.model_parallel_cuda_manual_seed(SEED)


def transformer_config(name: str, tp: int, pp: int, ep: int, deterministic: bool = False):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        **MODELS[name]["config"], normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        hidden_dropout=0.0, attention_dropout=0.0, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep, expert_tensor_parallel_size=etp(tp, ep), params_dtype=torch.bfloat16,
        pipeline_dtype=torch.bfloat16, bf16=True, add_qkv_bias=False, gradient_accumulation_fusion=False,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, attention_softmax_in_fp32=False,
        deterministic_mode=deterministic)


def make_deterministic() -> None:
    """Megatron-LM's --deterministic-mode by hand; the variables are read when cuBLAS, NCCL and Transformer Engine
    first start, so this runs before any CUDA call."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0")
    os.environ.setdefault("NCCL_ALGO", "Ring")
    torch.use_deterministic_algorithms(True, warn_only=True)


def build(name: str, tp: int, pp: int, ep: int, deterministic: bool = False):
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    m = MODELS[name]
    cfg = m["config"]
    config = transformer_config(name, tp, pp, ep, deterministic)
    spec = get_gpt_layer_local_spec(num_experts=cfg.get("num_moe_experts"), moe_grouped_gemm=False,
                                    qk_layernorm=cfg["qk_layernorm"], normalization="RMSNorm")
    rope = dict(rope_scaling=True, rope_scaling_factor=m["rope_scaling"]) if m["rope_scaling"] else {}
    model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=m["vocab"],
                     max_sequence_length=m["max_pos"], pre_process=parallel_state.is_pipeline_first_stage(),
                     post_process=parallel_state.is_pipeline_last_stage(),
                     share_embeddings_and_output_weights=False, position_embedding_type="rope",
                     rotary_base=int(m["rope_base"]), rotary_percent=1.0, **rope)
    return model.to(torch.cuda.current_device()).eval()


class ByteTokenizer:
    """UTF-8 bytes as token ids and 256 as end-of-text, called as a transformers tokenizer is: the text of a toy
    vocabulary (tiny-moe) too small for a real tokenizer."""

    eos_token_id = 256

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode("utf-8"))}


def windows(text_file: str, tokenizer_dir: str, n: int, seq: int) -> torch.Tensor:
    """Documents (form-feed separated, or one JSON line each with a ``text`` field) tokenised, joined with
    end-of-text, cut into n windows of seq tokens."""
    from pathlib import Path

    from transformers import AutoTokenizer

    if any(Path(tokenizer_dir).glob("tokenizer*")):
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:  # a toy vocabulary too small for a real tokenizer (tiny-moe)
        tok = ByteTokenizer()
    ids: list[int] = []
    with open(text_file, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()] if text_file.endswith(".jsonl") \
            else f.read().split("\f")
    for doc in docs:
        if not doc.strip():
            continue
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(ids) >= n * seq:
            break
    k = min(n, len(ids) // seq)
    return torch.tensor(ids[: k * seq], dtype=torch.long).view(k, seq)


def peak() -> int:
    """The most loaded rank's peak allocation since the last reset."""
    t = torch.tensor([torch.cuda.max_memory_allocated()], device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--format", required=True, choices=sorted(PRESETS))
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--export-pp", type=int, default=None, help="export layout (pipeline only); default: world size")
    p.add_argument("--hf-reference", required=True)
    p.add_argument("--hf-checkpoint", action="store_true", help="load the weights from --hf-reference with "
                   "ModelOpt's import_mcore_gpt_from_hf (a trained model) instead of random ones")
    p.add_argument("--text", required=True)
    p.add_argument("--windows", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--export-dir", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--deterministic", action="store_true", help="bitwise reproducible (Megatron-LM's "
                   "--deterministic-mode): slower, same amax in every run of an MoE calibration")
    p.add_argument("--cpu-threads", type=int, default=None, help="torch.set_num_threads(N) before any work "
                   "(ModelOpt's export packs the weights on the CPU); default: PyTorch's own count, which under "
                   "torchrun with several processes is its OMP_NUM_THREADS=1, as a hand-written script leaves it")
    a = p.parse_args()
    if a.deterministic:
        make_deterministic()
    threads_before = torch.get_num_threads()
    if a.cpu_threads is not None:
        if a.cpu_threads < 1:
            p.error("--cpu-threads must be 1 or more")
        torch.set_num_threads(a.cpu_threads)

    import modelopt.torch.export as mte
    import modelopt.torch.quantization as mtq
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    try:  # interpreter start and the imports above, as our run's "startup" + "setup" count them
        import psutil

        timings["before_main"] = time.time() - psutil.Process().create_time()
    except ImportError:
        pass
    peaks: dict[str, int] = {}
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    if "MASTER_PORT" not in os.environ:  # one process: any free port (two may run at once on one host)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl")
    world = dist.get_world_size()
    set_layout(a.tp, 1, a.ep)
    t = time.perf_counter()
    from megatron.core import tensor_parallel

    torch.manual_seed(WEIGHT_SEED)
    tensor_parallel.model_parallel_cuda_manual_seed(WEIGHT_SEED)
    model = build(a.model, a.tp, 1, a.ep, a.deterministic)
    if a.hf_checkpoint:
        mte.import_mcore_gpt_from_hf(model, a.hf_reference, dtype=torch.bfloat16)
    timings["build"] = time.perf_counter() - t
    data = windows(a.text, a.hf_reference, a.windows, a.seq)
    all_windows = int(data.shape[0])
    # each data-parallel replica calibrates on its share, dealt as ModelOpt's Megatron calibration loader (used by
    # Megatron-LM's quantize.py) deals it: DistributedSampler, no shuffle; mtq max-reduces the amax across them
    from megatron.core import parallel_state
    from torch.utils.data import DistributedSampler

    if parallel_state.get_data_parallel_world_size() > 1:
        data = data[list(DistributedSampler(range(data.shape[0]), shuffle=False,
                                            num_replicas=parallel_state.get_data_parallel_world_size(),
                                            rank=parallel_state.get_data_parallel_rank()))]

    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    dev = torch.cuda.current_device()

    def loop(m):
        with torch.no_grad():
            for i in range(0, data.shape[0], a.batch):
                megatron_prefill(m, data[i : i + a.batch].to(dev), skip_return_logits=True)

    mtq.quantize(model, copy.deepcopy(getattr(mtq, PRESETS[a.format])), loop)
    torch.cuda.synchronize()
    timings["quantize"] = time.perf_counter() - t
    torch.cuda.empty_cache()  # calibration's cached blocks freed before the first NCCL call on the default group,
    peaks["quantize"] = peak()  # whose buffers come from outside PyTorch's allocator (out of memory otherwise)

    export_pp = a.export_pp or world
    if (a.tp, a.ep) != (1, 1) or export_pp != 1:  # export is pipeline-parallel only: through a checkpoint
        from megatron.core import dist_checkpointing
        from modelopt.torch.opt.plugins import restore_sharded_modelopt_state, save_sharded_modelopt_state

        t = time.perf_counter()
        ckpt = a.export_dir + ".ckpt"
        if dist.get_rank() == 0:
            os.makedirs(ckpt, exist_ok=True)
        dist.barrier()
        dist_checkpointing.save(model.sharded_state_dict(), ckpt)
        save_sharded_modelopt_state([model], ckpt)
        del model
        torch.cuda.empty_cache()
        set_layout(1, export_pp, 1)
        model = build(a.model, 1, export_pp, 1, a.deterministic)
        models = [model]
        restore_sharded_modelopt_state(models, ckpt)
        model = models[0]
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), ckpt), strict=False)
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(ckpt)
        timings["handover"] = time.perf_counter() - t

    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    if dist.get_rank() == 0:
        os.makedirs(a.export_dir, exist_ok=True)
    dist.barrier()
    router = MODELS[a.model]["config"].get("moe_router_dtype")
    mte.export_mcore_gpt_to_hf(model, a.hf_reference, dtype=torch.bfloat16, export_dir=a.export_dir,
                               **({"moe_router_dtype": router} if router else {}))
    dist.barrier()
    timings["export"] = time.perf_counter() - t
    peaks["export"] = peak()
    timings["total_in_process"] = time.perf_counter() - t0
    if dist.get_rank() == 0:
        with open(a.result, "w") as f:
            json.dump({"timings": timings, "peaks": peaks, "windows": all_windows, "windows_this_replica": int(data.shape[0]), "world": world,
                       "deterministic": torch.are_deterministic_algorithms_enabled(),
                       "cpu_threads": {"threads": torch.get_num_threads(), "torch_threads_before": threads_before,
                                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
