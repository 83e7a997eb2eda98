"""Build a Megatron-Core model from a :class:`ModelArch`, load weights into it, save it.

The TransformerConfig mapping is the typed twin of the seed's ``MODEL_ARGS``. The layer spec follows
Megatron-LM's post-training builder: ModelOpt's spec (TE norms and attention, local linears, SequentialMLP
experts) when Transformer Engine imports, the full TE spec for pruning (as ``prune.sh``), otherwise
Megatron-Core's local spec. Weights come from a
Hugging Face directory through ModelOpt's importer, from a Megatron distributed checkpoint (with the
ModelOpt state restored first, so quantizers exist before their ``_extra_state`` loads), or stay random.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import CompatibilityError, SpecError
from ...spec.arch import MLAttention, ModelArch
from ...spec.sources import MegatronCheckpoint
from ..dtypes import torch_dtype

if TYPE_CHECKING:
    from ...spec.recipe import Recipe


def has_transformer_engine() -> bool:
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        from megatron.core.extensions import transformer_engine as _te  # noqa: F401
    except Exception:  # noqa: BLE001 - TE installed but broken for this torch: treat as absent
        return False
    return True


def transformer_config(arch: ModelArch, layout: Any, *, dtype: str = "bf16", cpu_init: bool = False,
                       deterministic: bool = False) -> Any:
    """Megatron-Core's TransformerConfig for ``arch`` split by ``layout`` (dropout off: post-training);
    ``deterministic``: the recipe's, Megatron-Core's ``deterministic_mode`` (``runtime/determinism.py``)."""
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    if arch.mamba is not None:
        raise CompatibilityError("hybrid (Mamba) models are not built by this backend yet", path="model",
                                 hint="use a dense, MoE or MLA architecture")
    if arch.quirks.gpt_oss:
        raise CompatibilityError("gpt-oss needs Megatron-LM's gpt-oss code path, which megatron-core does not ship",
                                 path="model")
    att = arch.attention
    act = arch.activation.type
    tanh_gelu = functools.partial(F.gelu, approximate="tanh")  # Megatron-LM's --openai-gelu
    if act in ("swiglu", "geglu", "geglu_tanh"):
        gated, func = True, {"swiglu": F.silu, "geglu": F.gelu, "geglu_tanh": tanh_gelu}[act]
    elif act in ("gelu", "gelu_tanh"):
        gated, func = False, (F.gelu if act == "gelu" else tanh_gelu)
    elif act == "squared_relu":
        from megatron.core.activations import squared_relu

        gated, func = False, squared_relu
    else:
        raise CompatibilityError(f"activation {act!r} is not supported by this backend", path="activation.type")
    tdtype = torch_dtype(dtype)
    kw: dict[str, Any] = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=att.num_heads,
        normalization="RMSNorm" if arch.norm.type == "rmsnorm" else "LayerNorm",
        layernorm_zero_centered_gamma=arch.norm.type == "layernorm1p",
        layernorm_epsilon=arch.norm.epsilon,
        gated_linear_unit=gated,
        activation_func=func,
        add_bias_linear=arch.add_bias_linear,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        **layout.transformer_config_kwargs(),
        params_dtype=tdtype,
        pipeline_dtype=tdtype,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        use_cpu_initialization=cpu_init,
        qk_layernorm=bool(getattr(att, "qk_layernorm", False)),
        attention_softmax_in_fp32=bool(getattr(att, "softmax_in_fp32", False)),
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        deterministic_mode=deterministic,
    )
    if isinstance(att, MLAttention):
        from megatron.core.transformer.transformer_config import MLATransformerConfig

        kw.update(multi_latent_attention=True, q_lora_rank=att.q_lora_rank, kv_lora_rank=att.kv_lora_rank,
                  qk_head_dim=att.qk_head_dim, qk_pos_emb_head_dim=att.qk_pos_emb_head_dim, v_head_dim=att.v_head_dim,
                  rope_type="rope")
        if arch.position is not None:
            kw["rotary_base"] = arch.position.base
        cls = MLATransformerConfig
    else:
        kw.update(num_query_groups=att.query_groups, kv_channels=arch.head_dim, add_qkv_bias=att.qkv_bias)
        cls = TransformerConfig
    moe = arch.moe
    if moe is not None:
        kw.update(
            num_moe_experts=moe.num_experts,
            moe_router_topk=moe.router_topk,
            moe_ffn_hidden_size=moe.ffn_hidden_size,
            moe_shared_expert_intermediate_size=moe.shared_expert_ffn_size,
            moe_router_score_function=moe.router_score_function,
            moe_router_pre_softmax=moe.router_pre_softmax,
            moe_router_enable_expert_bias=moe.router_enable_expert_bias,
            moe_router_load_balancing_type="none",
            moe_aux_loss_coeff=0.0,
            moe_grouped_gemm=False,  # ModelOpt's builder: SequentialMLP, per-expert quantizers
            moe_token_dispatcher_type="allgather" if cpu_init else "alltoall",  # alltoall makes CUDA streams
            moe_router_dtype=moe.router_dtype,
            moe_layer_freq=[int(x) for x in arch.moe_layers],
        )
        if moe.router_num_groups:
            kw.update(moe_router_num_groups=moe.router_num_groups, moe_router_group_topk=moe.router_group_topk)
        if moe.router_topk_scaling_factor:
            kw["moe_router_topk_scaling_factor"] = moe.router_topk_scaling_factor
    return cls(**kw)


SPECS = MegatronCheckpoint.LAYER_SPECS
"""Layer specs: Megatron-Core's local spec (no Transformer Engine); ModelOpt's spec (TE norms and attention,
local linears: what ModelOpt's quantization examples build); the full TE spec (``TELayerNormColumnParallelLinear``
and ``TEDotProductAttention``: what Megatron-LM's ``prune.sh`` builds with ``--export-default-te-spec``, and the
only one whose attention heads Minitron can prune)."""


def choose_spec(*, te_available: bool, prune: bool) -> str:
    """The spec a run builds: the full TE spec when it prunes, ModelOpt's with TE, the local one without."""
    if not te_available:
        return "local"
    return "te" if prune else "modelopt"


def spec_for_run(recipe: Recipe, *, te_available: bool) -> str:
    """The spec a run builds: a Megatron checkpoint's own (its shard names depend on it), else
    :func:`choose_spec`'s (the full TE spec when a technique needs it: Minitron pruning)."""
    from ...plan.sources import saved_layer_spec
    from ...plan.techniques import technique_for

    if isinstance(recipe.source, MegatronCheckpoint):
        saved = saved_layer_spec(recipe.source)
        if saved in SPECS:
            return saved
    return choose_spec(te_available=te_available, prune=any(technique_for(s).needs_te_spec for s in recipe.stages))


def layer_spec(arch: ModelArch, config: Any, *, spec: str) -> Any:
    """The layer (or, when MoE is not on every layer, decoder block) spec named by ``spec``."""
    if spec not in SPECS:
        raise ValueError(f"unknown layer spec {spec!r}; one of {SPECS}")
    moe = arch.moe
    every_layer_moe = moe is not None and all(arch.moe_layers)
    if spec == "modelopt":
        from megatron.core.post_training.modelopt.gpt.model_specs import get_gpt_modelopt_spec

        return get_gpt_modelopt_spec(config, local_core_attention=False, remap_te_layernorm=False)
    if moe is not None and not every_layer_moe:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

        return get_gpt_decoder_block_spec(config, use_transformer_engine=spec == "te")
    qk_layernorm = bool(getattr(arch.attention, "qk_layernorm", False))
    mla = isinstance(arch.attention, MLAttention)
    experts = moe.num_experts if moe is not None else None
    if spec == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(
            num_experts=experts, moe_grouped_gemm=False, qk_layernorm=qk_layernorm, multi_latent_attention=mla)
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(
        num_experts=experts,
        moe_grouped_gemm=False,
        qk_layernorm=qk_layernorm,
        multi_latent_attention=mla,
        normalization=config.normalization,
    )


def build_model(arch: ModelArch, layout: Any, *, dtype: str = "bf16", device: str = "cuda",
                spec: str | None = None, deterministic: bool = False) -> Any:
    """An unwrapped ``GPTModel`` for this rank's pipeline stage, in eval mode, on ``device``.

    ``spec`` names the layer spec (:data:`SPECS`); without it, ModelOpt's spec when Transformer Engine
    imports, else the local one. ``deterministic``: the recipe's (:func:`transformer_config`)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    if spec is None:
        spec = choose_spec(te_available=has_transformer_engine(), prune=False)
    config = transformer_config(arch, layout, dtype=dtype, cpu_init=device == "cpu", deterministic=deterministic)
    layers = layer_spec(arch, config, spec=spec)
    pos = arch.position
    kw: dict[str, Any] = {}
    if pos is not None:
        kw.update(position_embedding_type="rope", rotary_base=int(pos.base), rotary_percent=pos.percent)
        scaling = pos.scaling
        if scaling is not None and scaling.type == "llama3":
            kw.update(rope_scaling=True, rope_scaling_factor=scaling.factor)
        elif scaling is not None:
            raise CompatibilityError(f"RoPE scaling {scaling.type!r} is not mapped for GPTModel yet",
                                     path="position.scaling")
    else:
        kw["position_embedding_type"] = "none"
    model = GPTModel(
        config=config,
        transformer_layer_spec=layers,
        vocab_size=arch.vocab.padded(layout.tensor_parallel),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=arch.tie_embeddings,
        **kw,
    )
    if device == "cuda":
        import torch

        model = model.to(torch.cuda.current_device())
    return model.eval()


def import_hf(model: Any, hf_dir: str, *, dtype: str, workspace: str | None = None) -> None:
    """ModelOpt's HF -> Megatron-Core importer (TP/PP/EP aware); the directory must hold config.json."""
    import modelopt.torch.export as mte

    if not (Path(hf_dir) / "config.json").is_file():
        raise SpecError(f"{hf_dir!r} has no config.json", path="source.path")
    mte.import_mcore_gpt_from_hf(model, hf_dir, workspace_dir=workspace, dtype=torch_dtype(dtype))


# --------------------------------------------------------------------------- Megatron distributed checkpoints
def save_checkpoint(model: Any, directory: Path, *, arch: ModelArch, spec: str | None = None,
                    checks: bool = True, trained_while_quantized: bool = False) -> Path:
    """Weights + ModelOpt state as a Megatron distributed checkpoint, written to a temporary folder
    and renamed when complete (a crash leaves no half checkpoint under the final name).

    ``checks=False`` skips Megatron-Core's global check that every shard has exactly one writer (an all-gather
    of every rank's shard metadata, checked on rank 0: seconds with thousands of quantizers per rank). The
    layout hand-over passes it: the same job reads the folder back at once, and a shard no rank wrote fails
    that load. ``trained_while_quantized`` goes into the info file beside ``spec``: a later run's export of this
    checkpoint snaps weights trained while quantized (``plan.sources.trained_source``)."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from modelopt.torch.opt.plugins import save_sharded_modelopt_state

    from ...spec.serde import to_yaml

    tmp = directory.with_name(directory.name + ".partial")
    if dist.get_rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    _results_queue_in_process()
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp), validate_access_integrity=checks)
    save_sharded_modelopt_state([model], str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        (tmp / "model_arch.yaml").write_text(to_yaml(arch))
        if spec is not None:
            info = {"layer_spec": spec, "trained_while_quantized": trained_while_quantized}  # plan.sources reads
            (tmp / MegatronCheckpoint.INFO_FILE).write_text(json.dumps(info) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    dist.barrier()
    return directory


def _results_queue_in_process() -> None:
    """Give Megatron-Core's checkpoint writer an in-process results queue before its first save.

    Left to itself the writer (``filesystem_async``, megatron-core 0.16 to 0.19) makes its queue with a
    ``multiprocessing`` Manager: a server process that lives as long as ours and, after a ``kill -9``, forever,
    holding the killed run's stdout and stderr (a caller waiting for them waits for good). Our saves are
    synchronous: the writer's results are put on the queue in this process (its threads, or its forked
    workers' results collected here), so a thread-safe ``queue.Queue`` does the same job with no extra process.
    """
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", False) is None:
        filesystem_async._results_queue = queue.Queue()


def load_checkpoint(model: Any, directory: str | Path, *, checks: bool = True) -> Any:
    """Restore ModelOpt's modes (quantizers) then the weights and quantizer state of a dist checkpoint.

    ModelOpt's restore reads every ``_extra_state`` of the checkpoint (each quantizer's state, Transformer
    Engine's FP8 metadata) and sets it, so the weights' load leaves those out rather than read and set
    each one a second time (half the load of a model with thousands of quantizers per rank).
    ``checks=False`` skips Megatron-Core's all-gathered check that the ranks' reads cover each shard once
    (:func:`save_checkpoint` says when that is safe)."""
    import modelopt.torch.opt as mto
    from megatron.core import dist_checkpointing
    from modelopt.torch.opt.plugins import restore_sharded_modelopt_state

    d = str(directory)
    if not Path(d, "metadata.json").is_file():
        raise SpecError(f"{d!r} is not a Megatron distributed checkpoint (no metadata.json)", path="source.path")
    models = [model]
    restores = Path(d, "modelopt_state").is_dir() and not mto.ModeloptStateManager.is_converted(model)
    restore_sharded_modelopt_state(models, d)
    model = models[0]
    sharded = model.sharded_state_dict()
    if restores:
        sharded = {k: v for k, v in sharded.items() if "_extra_state" not in k}
    state = dist_checkpointing.load(sharded, d, validate_access_integrity=checks)
    model.load_state_dict(state, strict=False)
    return model


def read_hf_architecture(hf_dir: str) -> str | None:
    try:
        return json.loads(Path(hf_dir, "config.json").read_text()).get("architectures", [None])[0]
    except (OSError, ValueError, IndexError):
        return None
