"""Per-rank GPU memory of a post-training stage, estimated before launch.

Terms, for the most loaded rank (the pipeline stage holding the most bytes):

* ``weights``: the rank's share of the bf16 parameters. Attention, dense MLP and Mamba linears split by
  TP; routed experts by EP*ETP; norms and the router are replicated; the embedding (padded to TP)
  sits on the first stage and the output layer on the last.
* ``quantizer_state``: ModelOpt's per-tensor/per-channel/per-block amax buffers and AWQ/SmoothQuant
  scales, as bytes per quantized weight (``MemoryModel.quantizer_bytes_per_param``).
* ``fake_quant``: the fake-quantized copy of the largest linear weight plus the quantized copy of its
  input, which live during each quantized GEMM; counted by how far they lift the forward's peak.
* ``activations``: the calibration (or training) forward for ``batch x seq_length`` tokens through
  ModelOpt's ``megatron_prefill``: what stays allocated through it (hidden-state copies, its causal mask,
  Megatron-Core's attention score buffer, the MoE dispatchers' routing state; see
  :func:`forward_activation_bytes`) plus the largest transient on top (local attention's softmax, the
  MLP/Mamba intermediates or the full-vocabulary logits). An export run in the process that calibrated on
  the same layout still holds the score buffer (``estimate(..., calibrated_in_process=True)``).
* ``kv_cache``: the KV cache of a sanity generation (0 unless ``generate_tokens``).
* ``cuda_workspace``: PyTorch's cuBLAS workspace, taken at the process's first GEMM and kept
  (``MemoryModel.cublas_workspace_bytes``).
* ``export_buffers``: ModelOpt's unified export moves each weight to the host (``.to(dtype).cpu()``) and
  packs it there, so the GPU holds only the block scales it derives from the weights (kept on the GPU until
  the files are written) and the temporaries of the largest linear while they are made. Megatron-LM's
  export builds the model with CPU initialisation (``--use-cpu-initialization``, Kimi-K2's export also
  ``--init-model-with-meta-device``) and never moves it to the GPU: then the weights, the quantizer state
  and these buffers live in host memory (``host_bytes``), not on the GPU.
* ``optimizer``: distillation trains: fp32 gradients, fp32 master weights and the two fp32 Adam moments
  (the last three divided by DP: Megatron-LM's distributed optimizer).
* ``teacher``: a distillation stage's frozen bf16 teacher (its own architecture: the unpruned model after a
  prune stage) and its logits, kept for the loss; its forward runs without autograd, so no activations stay.

The coefficients live in :class:`MemoryModel`; ``benchmarks/memory_plan.md`` compares the estimate
with ``torch.cuda.max_memory_allocated`` on an H100 with small models (where local attention held the peak)
and records how the defaults were calibrated; ``benchmarks/scale_gpu.md`` compares it at real sizes on H200s
(8 B dense and a 30 B MoE, where the logits held it); ``tests/test_plan_memory_scale.py`` keeps both.
Capacity comes from :mod:`.gpus` minus a reserve for the CUDA context and NCCL.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from ..errors import LayoutError, ResourceError
from ..spec.arch import MLAttention, ModelArch
from ..spec.formats import get_format
from ..spec.layout import ParallelLayout
from . import rules
from .gpus import GIB, GpuSpec, usable_bytes

BF16 = 2


@attrs.frozen(kw_only=True)
class MemoryModel:
    """Coefficients of the estimate. ``attention_bytes_per_score`` was fitted to a measurement (H100,
    ``benchmarks/memory_plan.md``: local attention held every peak there) and ``export_weight_bytes`` bounds
    what H200 exports held (``benchmarks/scale_gpu.md``); the others count the tensors each step keeps alive
    (read from Megatron-Core 0.19 and ModelOpt 0.47), checked where they held a measured peak."""

    hidden_copies: float = 4.0
    """bf16 ``[tokens, hidden]`` tensors alive between sub-layers (residual, norm output, attention output...);
    counted, not fitted."""
    attention_bytes_per_score: float = 14.5
    """Local (unfused) attention with the softmax in fp32 (``attention_softmax_in_fp32``, Megatron-Core's
    ``TransformerConfig`` default), bytes per ``[batch, heads/TP, seq, seq]`` score element at its peak:
    Megatron's persistent bf16 score buffer (2, counted as resident), the fp32 softmax input and output
    (4 + 4) and the bf16 probabilities (2), 12 counted. Calibrated on H100: 14.8 measured for the 0.5B model at
    TP=1 (benchmarks/memory_plan.md; that run kept the config's default fp32 softmax)."""
    attention_bytes_per_score_bf16: float = 6.5
    """The same with the softmax in bf16 (an architecture without ``softmax_in_fp32``, as the builder then
    asks; Qwen3 and Llama 3.1): ``forward_torch_softmax`` masks the bf16 score buffer in place and returns bf16
    probabilities, so 2 (buffer) + 2 counted, plus the 2.5 that the fp32 fit found above its own count. This
    term alone used to be 14.5 for these models, 15.2 GiB at 8 x 2,048 tokens and 32 heads: the quantize plan
    of qwen3-8b and llama-3.1-8b was 13-20 % over the H200 peaks, which the logits held, not attention."""
    mlp_copies: float = 2.0
    """bf16 copies of the first MLP projection's output alive at once (fc1 output and activation)."""
    logits_copies: float = 2.0
    """bf16 full-vocabulary logits and the contiguous transposed copy ``GPTModel`` returns; with TP > 1 the rank's
    own vocabulary slice is alive beside them while they are gathered (qwen3-8b at TP 2 on an H200: planned
    within 4 %, benchmarks/scale_gpu.md; the slice alone under-planned it by 25 %)."""
    fake_quant_weight_copies: float = 1.0
    """bf16-sized copies of the largest linear weight alive while it is fake-quantized (1 with ModelOpt's CUDA
    kernel; its eager fallback holds fp32 temporaries, about 5). Only raises the peak when the linears, not
    attention or the logits, hold it: not observable in the H100 runs, where attention dominated."""
    fake_quant_input_copies: float = 1.0
    """bf16-sized copies of the largest linear input alive while it is fake-quantized (same caveat)."""
    export_weight_bytes: float = 3.0
    """Bytes per element of the largest linear weight alive on the GPU while the exporter derives its scales:
    for block formats ModelOpt's ``reduce_block_amax`` clones it in bf16 (2) beside fp32 per-block amax and
    scale arrays; H200 NVFP4 exports held 2.8-2.9 above the weights, the kept block scales and the score
    buffer (llama-3.1-8b, qwen3-8b). Per-tensor FP8 makes no copy (36-62 MiB measured above the rest), so 3 is
    a bound there. The embedding and output matrices go to the host without a GPU copy: the MoE export after
    its hand-over held 28.50 GiB for 28.44 GiB of weights."""
    quantizer_bytes_per_param: dict[str, float] = attrs.field(factory=lambda: {
        "fp8": 0.0, "nvfp4": 0.0, "nvfp4_awq": 4 / 16, "int4_awq": 4 / 128 + 2 / 128, "w4a8_awq": 4 / 128 + 2 / 128,
        "int8_sq": 0.01, "int8": 0.0, "fp8_blockwise": 4 / (128 * 128), "mxfp8": 0.0, "mxfp4": 0.0, "bf16": 0.0,
    })
    """Stored quantizer buffers per quantized weight (per-tensor amax is negligible; AWQ keeps block amax): sizes
    from the formats' block shapes, not measured (NVFP4/INT4 quantizer state is on ``memory_plan.md``'s
    "Not measured" list)."""
    cublas_workspace_bytes: int = 32 * 2**20
    """PyTorch's cuBLAS workspace on Hopper (4,096 KiB x 8): taken from the caching allocator at the process's
    first GEMM and kept for its life, so every later peak holds it, an export's too. Invisible at 8 B
    parameters; at the reference model's 6.8 M it was most of what the plan missed on an H200 (quantize 305.5 MB
    measured against 265.3 planned without it, the export after it 114.7 against 81.9)."""


DEFAULT_MODEL = MemoryModel()


@attrs.frozen(kw_only=True)
class MemoryPlan:
    """The per-rank estimate of the most loaded rank, against one GPU's capacity."""

    stage: str
    layout: ParallelLayout
    gpu: str
    pipeline_stage: int
    """Index of the most loaded pipeline stage (the one reported)."""
    terms: dict[str, int]
    weights_quantized_bytes: int
    """That rank's weights once exported in the target format (for deployment sizing)."""
    capacity_bytes: int
    usable_bytes: int
    batch: int
    seq_length: int
    quant_format: str
    measured: bool
    """Whether this stage's formula was compared with a GPU measurement (quantize, prune, export: yes)."""
    host_bytes: int = 0
    """Bytes the rank keeps in host memory instead (an export whose model is built on the CPU)."""

    @property
    def per_rank_bytes(self) -> int:
        return sum(self.terms.values())

    @property
    def fits(self) -> bool:
        return self.per_rank_bytes <= self.usable_bytes

    def summary(self) -> dict[str, object]:
        return {
            "per_rank_bytes": self.per_rank_bytes,
            "per_rank_gib": round(self.per_rank_bytes / GIB, 3),
            "capacity_bytes": self.capacity_bytes,
            "usable_bytes": self.usable_bytes,
            "fits": self.fits,
            "terms": dict(self.terms),
            "weights_quantized_bytes": self.weights_quantized_bytes,
            "pipeline_stage": self.pipeline_stage,
            "gpu": self.gpu,
            "batch": self.batch,
            "seq_length": self.seq_length,
            "quant_format": self.quant_format,
            "measured_formula": self.measured,
            "host_bytes": self.host_bytes,
        }


# --------------------------------------------------------------------------- per-rank parameters
@attrs.frozen(kw_only=True)
class RankParams:
    """Parameters one rank of one pipeline stage holds, by role."""

    linear: float  # quantizable decoder linears
    other: float  # norms, biases, router, embeddings, output layer
    largest_linear: float  # elements of the largest single linear weight on the rank
    largest_linear_in: int  # its input width
    layer_max: float  # parameters of the largest layer on the rank
    attention_layers: int
    mlp_kinds: frozenset[str]
    moe_layers: int = 0

    @property
    def total(self) -> float:
        return self.linear + self.other


def _layer_kinds_by_stage(arch: ModelArch, layout: ParallelLayout) -> list[list[tuple[bool, str]]]:
    kinds = list(arch.layer_kinds())
    stages = arch.mamba.pipeline_stages if arch.mamba is not None else None
    if stages:
        counts = [len(s) for s in stages]
        if len(counts) != layout.pipeline_parallel:  # a rules error; report the even-ish split anyway
            counts = [len(kinds) // layout.pipeline_parallel] * layout.pipeline_parallel
    else:
        counts = list(layout.stage_layers(arch.num_layers))
    out, start = [], 0
    for n in counts:
        out.append(kinds[start:start + n])
        start += n
    return out


def rank_params(arch: ModelArch, layout: ParallelLayout, stage_index: int) -> RankParams:
    """What one rank of pipeline stage ``stage_index`` holds (uses ``ModelArch``'s per-block counts)."""
    tp, etp, ep = layout.tensor_parallel, layout.expert_tensor_parallel, layout.expert_parallel
    pp = layout.pipeline_parallel
    h = arch.hidden_size
    att = arch.attention
    gated = arch.activation.gated
    linear = other = 0.0
    largest, largest_in, layer_max = 0.0, h, 0.0
    n_attn = n_moe = 0
    mlp_kinds: set[str] = set()

    def big(elements: float, width_in: int) -> None:
        nonlocal largest, largest_in
        if elements > largest:
            largest, largest_in = elements, width_in

    for has_attn, mlp in _layer_kinds_by_stage(arch, layout)[stage_index]:
        layer = 0.0
        if has_attn:
            n_attn += 1
            a, b = arch._attention_params()
            linear += a / tp
            other += b
            layer += a / tp + b
            if isinstance(att, MLAttention):
                big(h * (att.kv_lora_rank + att.qk_pos_emb_head_dim), h)
                big(att.num_heads * att.v_head_dim * h / tp, att.num_heads * att.v_head_dim // tp)
            else:
                d = arch.head_dim
                big(h * (att.num_heads + 2 * att.query_groups) * d / tp, h)
                big(att.num_heads * d * h / tp, att.num_heads * d // tp)
        if mlp == "mamba":
            mlp_kinds.add("mamba")
            a, b = arch._mamba_params()
            linear += a / tp
            other += b / tp
            layer += (a + b) / tp
            heads, head_dim, groups, state = arch.require_mamba().resolved(h)
            inner = heads * head_dim
            big(h * (2 * inner + 2 * groups * state + heads) / tp, h)
        elif mlp == "dense":
            mlp_kinds.add("dense")
            a, b = arch._mlp_params(h, arch.ffn_hidden_size)
            linear += a / tp
            other += b / tp + arch._norm_params(h)
            layer += (a + b) / tp
            big(h * arch.ffn_hidden_size * (2 if gated else 1) / tp, h)
            big(arch.ffn_hidden_size * h / tp, arch.ffn_hidden_size // tp)
        elif mlp == "moe":
            mlp_kinds.add("moe")
            n_moe += 1
            moe = arch.require_moe()
            width = moe.latent_size or h
            lin_e, bias_e = arch._mlp_params(width, moe.ffn_hidden_size)
            local_experts = moe.num_experts / ep
            experts = local_experts * (lin_e + bias_e) / etp
            linear += local_experts * lin_e / etp
            other += local_experts * bias_e / etp + h * moe.num_experts + arch._norm_params(h)
            layer += experts + h * moe.num_experts
            big(width * moe.ffn_hidden_size * (2 if gated else 1) / etp, width)
            if moe.latent_size:
                linear += 2 * h * moe.latent_size / tp
                layer += 2 * h * moe.latent_size / tp
            if moe.shared_expert_ffn_size:
                lin_s, bias_s = arch._mlp_params(h, moe.shared_expert_ffn_size)
                linear += lin_s / tp
                other += bias_s / tp
                layer += (lin_s + bias_s) / tp
                big(h * moe.shared_expert_ffn_size * (2 if gated else 1) / tp, h)
        layer_max = max(layer_max, layer)

    embed = arch.vocab.padded(tp) * h / tp
    if stage_index == 0:
        other += embed
    if stage_index == pp - 1:
        other += arch._norm_params(h)  # final norm
        if not arch.tie_embeddings or pp > 1:
            other += embed  # output layer (a tied model keeps a second copy on the last stage when PP>1)
    return RankParams(linear=linear, other=other, largest_linear=largest, largest_linear_in=largest_in,
                      layer_max=layer_max, attention_layers=n_attn, mlp_kinds=frozenset(mlp_kinds), moe_layers=n_moe)


# --------------------------------------------------------------------------- activations
ROUTER_BYTES = {"fp32": 4, "fp64": 8, None: BF16}
"""Bytes of a routing probability: Megatron-Core casts the router's probabilities to its logits' dtype, the
``router_dtype`` when set, else the parameters' (bf16)."""


def forward_activation_bytes(arch: ModelArch, layout: ParallelLayout, params: RankParams, *, batch: int,
                             seq_length: int, last_stage: bool, model: MemoryModel = DEFAULT_MODEL) -> dict[str, int]:
    """Activation bytes of one inference forward of ``batch x seq_length`` tokens on one rank, as ModelOpt's
    ``megatron_prefill`` runs it (local layer spec, Megatron-Core 0.19).

    ``resident``: allocated through the whole forward and at its peak:

    * ``hidden_copies`` bf16 hidden states;
    * the causal mask ``megatron_prefill`` builds without CP (bool ``[batch, 1, seq, seq]``);
    * ``persistent``, which outlives the forward: local attention's ``baddbmm`` writes its bf16 scores into
      Megatron-Core's ``GlobalMemoryBuffer`` ("mpu"), allocated at the first forward and kept for the process's
      life (until the parallel groups are rebuilt); and each MoE layer's ``MoEAlltoAllTokenDispatcher`` keeps
      ``probs`` and ``routing_map`` (``[tokens, experts]``, router dtype and bool) and the int64 permutation of
      its ``tokens x topk`` copies until the next forward (0.52 GiB for qwen3-30b-a3b's 48 layers at 16,384
      tokens: the 30 B MoE's H200 peak is within 0.2 % with it, 1.1 % under without).

    ``peak``: the largest transient on top: local attention past its score buffer, the MLP/MoE/Mamba
    intermediates, the mask's fp32 construction, or the logits. The logits held every H200 peak at 8 x 2,048
    tokens (qwen3-8b, llama-3.1-8b, qwen3-30b-a3b): ``GPTModel`` returns a contiguous transposed copy of the
    bf16 logits, and at TP > 1 ``megatron_prefill`` gathers the full vocabulary on every rank
    (``runtime_gather_output``: the rank's slice beside the gathered copies). On a first or middle pipeline
    stage ``megatron_prefill`` receives the last stage's logits into a buffer of the same size."""
    tp, cp, pp = layout.tensor_parallel, layout.context_parallel, layout.pipeline_parallel
    h = arch.hidden_size
    s_local = seq_length // cp if cp > 1 else seq_length
    tokens = batch * s_local
    sp_tokens = tokens // tp if layout.sequence_parallel else tokens
    hidden = model.hidden_copies * sp_tokens * h * BF16 + (tokens * h * BF16 if layout.sequence_parallel else 0)
    mask = batch * seq_length * seq_length if cp == 1 else 0  # bool, one byte an element
    persistent = 0.0
    peaks = {"none": 0.0, "mask": 8.0 * mask - mask}  # fp32 ones and their triu, then the bool copy
    att = arch.attention
    if params.attention_layers:
        heads = att.num_heads / tp
        if isinstance(att, MLAttention):
            qk = att.qk_head_dim + att.qk_pos_emb_head_dim
            proj = tokens * heads * (qk * 2 + att.v_head_dim) * BF16
        else:
            proj = tokens * (att.num_heads + 2 * att.query_groups) / tp * arch.head_dim * BF16
        scores = batch * heads * s_local * seq_length
        per_score = model.attention_bytes_per_score if att.softmax_in_fp32 else model.attention_bytes_per_score_bf16
        persistent += scores * BF16  # the score buffer
        peaks["attention"] = proj + scores * (per_score - BF16)
    if "dense" in params.mlp_kinds:
        width = arch.ffn_hidden_size * (2 if arch.activation.gated else 1) / tp
        peaks["mlp"] = model.mlp_copies * tokens * width * BF16
    if "moe" in params.mlp_kinds:
        moe = arch.require_moe()
        routed = tokens * moe.router_topk  # token copies after dispatch (all-to-all keeps the count per rank)
        width = moe.ffn_hidden_size * (2 if arch.activation.gated else 1) / layout.expert_tensor_parallel
        per_expert = routed / moe.num_experts  # SequentialMLP runs one expert at a time
        peaks["moe"] = 2 * routed * (moe.latent_size or h) * BF16 + model.mlp_copies * per_expert * width * BF16
        routing_state = tokens * moe.num_experts * (ROUTER_BYTES[moe.router_dtype] + 1) + routed * 8
        persistent += params.moe_layers * routing_state
    if "mamba" in params.mlp_kinds:
        heads, head_dim, groups, state = arch.require_mamba().resolved(h)
        inner = heads * head_dim
        peaks["mamba"] = 2 * tokens * (2 * inner + 2 * groups * state + heads) / tp * BF16
    vocab = arch.vocab.padded(tp)
    if last_stage:
        peaks["logits"] = tokens * BF16 * (model.logits_copies * vocab + (vocab / tp if tp > 1 else 0))
    elif pp > 1:  # the broadcast from the last stage lands in a [batch, seq, vocab] buffer here
        peaks["logits"] = tokens * BF16 * vocab
    linear_peak = max(peaks.get("mlp", 0.0), peaks.get("moe", 0.0), peaks.get("mamba", 0.0))
    return {"resident": int(hidden + mask + persistent), "persistent": int(persistent),
            "peak": int(max(peaks.values())), "linear_peak": int(linear_peak), "tokens": tokens}


def training_activation_bytes(arch: ModelArch, layout: ParallelLayout, params: RankParams, *, batch: int,
                              seq_length: int) -> int:
    """Activations kept for backward without recomputation (Korthikanti et al. 2022: 34sbh + 5as^2b per layer)."""
    tp, cp = layout.tensor_parallel, layout.context_parallel
    s = seq_length // cp
    layers = max(1, len(_layer_kinds_by_stage(arch, layout)[0]))
    per_layer = s * batch * arch.hidden_size * (10 + 24 / tp) + 5 * arch.attention.num_heads * s * s * batch / tp
    if layout.sequence_parallel:
        per_layer = 34 * s * batch * arch.hidden_size / tp + 5 * arch.attention.num_heads * s * s * batch / tp
    return int(per_layer * layers)


# --------------------------------------------------------------------------- the plan
def estimate(arch: ModelArch, layout: ParallelLayout, gpu: GpuSpec, *, stage: str = "quantize",
             batch: int = 1, seq_length: int | None = None, quant_format: str = "fp8",
             generate_tokens: int = 0, weights_on_host: bool = False, teacher: ModelArch | None = None,
             with_teacher: bool = True, calibrated_in_process: bool = False,
             model: MemoryModel = DEFAULT_MODEL) -> MemoryPlan:
    """The memory plan of the most loaded rank of ``layout`` for ``stage`` on ``gpu``.

    ``weights_on_host``: an export whose model is built with CPU initialisation (Megatron-LM's export flow):
    the weights, the quantizer state and the export's buffers stay in host memory and count as
    ``host_bytes``. ``calibrated_in_process``: an export in the process that ran the ``batch x seq_length``
    calibration forward on this same layout (a recipe's quantize then export with no hand-over between
    layouts): Megatron-Core's attention score buffer is still allocated (2.0 GiB of the H200 TP=1 exports'
    peaks at 8 x 2,048 tokens and 32 heads). A standalone export, as Megatron-LM's export script runs, or one
    after a hand-over (the parallel groups, and with them the buffer, are rebuilt) has none. ``teacher``: the
    architecture of a distillation stage's teacher (default: the student's); ``with_teacher=False``: a
    distillation stage without one (training on the LM loss)."""
    stage = rules.check_stage_name(stage)
    fmt = get_format(quant_format)
    seq = seq_length or arch.seq_length
    best: tuple[int, int, dict[str, int], int] | None = None
    for index in range(layout.pipeline_parallel):
        p = rank_params(arch, layout, index)
        last = index == layout.pipeline_parallel - 1
        terms: dict[str, int] = {"weights": int(p.total * BF16)}
        quantizing = stage in ("quantize", "auto_quantize")
        # the quantizers' buffers stay in the model that the export packs
        terms["quantizer_state"] = int(p.linear * model.quantizer_bytes_per_param.get(fmt.name, 0.0)) \
            if quantizing or stage == "export" else 0
        act = forward_activation_bytes(arch, layout, p, batch=batch, seq_length=seq, last_stage=last, model=model)
        if stage in ("quantize", "prune"):
            terms["activations"] = act["resident"] + act["peak"]
        elif stage == "export":  # no forward; the score buffer of an earlier one in the same process
            terms["activations"] = act["persistent"] if calibrated_in_process else 0
        else:  # auto_quantize and distill run a backward pass
            terms["activations"] = training_activation_bytes(arch, layout, p, batch=batch, seq_length=seq) \
                + act["persistent"] + act["peak"]
        if quantizing and fmt.name != "bf16":
            # temporaries of a quantized GEMM; they coexist with the linear layers' activations, not with the
            # attention scores or the logits, so they count only by how far they lift the peak
            temps = (model.fake_quant_weight_copies * p.largest_linear * BF16
                     + model.fake_quant_input_copies * act["tokens"] * p.largest_linear_in * BF16)
            terms["fake_quant"] = int(max(0, act["linear_peak"] + temps - act["peak"]))
        else:
            terms["fake_quant"] = 0
        if stage == "auto_quantize":  # gradients of the weights scored, bf16
            terms["fake_quant"] += int(p.linear * BF16)
        kv_layers = p.attention_layers
        tp = layout.tensor_parallel
        kv_share = 1 if isinstance(arch.attention, MLAttention) else tp
        n_attn = max(1, arch.layer_counts.attention)
        terms["kv_cache"] = int(generate_tokens * arch.kv_cache_bytes_per_token() * kv_layers / n_attn / kv_share)
        terms["cuda_workspace"] = model.cublas_workspace_bytes
        terms["export_buffers"] = 0
        if stage == "export":  # block scales kept until written, and the largest weight's temporaries
            terms["export_buffers"] = int(p.linear * fmt.scale_bits / 8
                                          + model.export_weight_bytes * p.largest_linear)
        if stage == "distill":
            dp = layout.data_parallel
            terms["optimizer"] = int(p.total * (4 + 12 / dp))  # fp32 grads + (master, Adam m, v) sharded over DP
            t_arch = teacher or arch
            t_params = rank_params(t_arch, layout, index) if teacher is not None else p
            tp = layout.tensor_parallel
            logits = act["tokens"] * t_arch.vocab.padded(tp) / tp * BF16 if last else 0
            terms["teacher"] = int(t_params.total * BF16 + logits) if with_teacher else 0
        total = sum(terms.values())
        if best is None or total > best[0]:
            quantized = int(p.linear * fmt.weight_bits / 8 + p.other * BF16)
            best = (total, index, terms, quantized)
    if best is None:  # pragma: no cover - a layout has at least one pipeline stage
        raise LayoutError("the layout has no pipeline stage", path="pipeline_parallel")
    _total, index, terms, quantized = best
    host = 0
    if weights_on_host and stage == "export":
        host = terms["weights"] + terms["quantizer_state"] + terms["export_buffers"]
        terms = {**terms, "weights": 0, "quantizer_state": 0, "export_buffers": 0}
    return MemoryPlan(host_bytes=host,
        stage=stage, layout=layout, gpu=gpu.name, pipeline_stage=index, terms=terms,
        weights_quantized_bytes=quantized, capacity_bytes=gpu.memory_bytes, usable_bytes=usable_bytes(gpu),
        batch=batch, seq_length=seq, quant_format=fmt.name, measured=stage in ("quantize", "prune", "export"),
    )


def fitting_layouts(arch: ModelArch, gpu: GpuSpec, gpus: int, *, stage: str = "quantize", batch: int = 1,
                    seq_length: int | None = None, quant_format: str = "fp8", weights_on_host: bool = False,
                    model: MemoryModel = DEFAULT_MODEL) -> Iterator[tuple[ParallelLayout, MemoryPlan]]:
    """Valid single-replica layouts for ``stage`` on at most ``gpus`` GPUs that fit, smallest first."""
    for layout in rules.candidate_layouts(arch, stage, gpus, seq_length=seq_length):
        mem = estimate(arch, layout, gpu, stage=stage, batch=batch, seq_length=seq_length,
                       quant_format=quant_format, weights_on_host=weights_on_host, model=model)
        if mem.fits:
            yield layout, mem


def smallest_fitting(arch: ModelArch, gpu: GpuSpec, gpus: int, **kwargs: object) -> ParallelLayout | None:
    """The layout with the fewest GPUs per model replica that fits (``None``: nothing fits)."""
    for layout, _mem in fitting_layouts(arch, gpu, gpus, **kwargs):  # type: ignore[arg-type]
        return layout
    return None


def require_fit(mem: MemoryPlan, arch: ModelArch, gpu: GpuSpec, gpus: int, *,
                model: MemoryModel = DEFAULT_MODEL) -> MemoryPlan:
    """Raise :class:`ResourceError` naming the smallest layout that fits when ``mem`` does not."""
    if mem.fits:
        return mem
    smallest = smallest_fitting(arch, gpu, gpus, stage=mem.stage, batch=mem.batch, seq_length=mem.seq_length,
                                quant_format=mem.quant_format, weights_on_host=mem.host_bytes > 0, model=model)
    need = f"{mem.per_rank_bytes / GIB:.1f} GiB per rank"
    have = f"{mem.usable_bytes / GIB:.1f} GiB usable on a {gpu.name}"
    if smallest is None:
        hint = f"no {mem.stage} layout of {arch.name} fits on {gpus} x {gpu.name}; use more or larger GPUs"
    else:
        hint = f"the smallest layout that fits on {gpus} x {gpu.name} is {smallest.short()}"
    raise ResourceError(f"{mem.stage} of {arch.name} with {mem.layout.short()} needs {need}, {have}",
                        path="layout", hint=hint)
