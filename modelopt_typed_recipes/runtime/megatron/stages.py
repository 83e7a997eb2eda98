"""The ModelOpt calls of each stage on a Megatron-Core model: quantize, auto-quantize, prune, export.

Each function takes the built model and plain inputs and calls ModelOpt the way its Megatron-LM
examples do; a Quantize stage's config comes from the plan (composed once), auto-quantize inputs from
``runtime.modelopt_config`` (shared with the Hugging Face backend, never mutating ModelOpt's own dicts). The forward pass is
ModelOpt's ``megatron_prefill`` (TP/PP/EP aware), run under ``torch.no_grad`` with the shared progress
bar (stderr) on rank 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...bridges import modelopt_names as mn
from ...errors import CompatibilityError, DataError, SpecError
from ...spec.arch import ModelArch
from ...spec.techniques import AutoQuantize, Prune, Quantize
from ..modelopt_config import AutoQuantizeInputs
from ..modelopt_config import auto_quantize_inputs as shared_auto_quantize_inputs
from ..progress import track


# --------------------------------------------------------------------------- forward passes
def _bars(progress: bool) -> bool:
    """Progress bars on rank 0 only (every rank runs the same loop)."""
    from ..distributed import is_main

    return progress and is_main()


def _device() -> Any:
    import torch

    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def forward_loop(batches: Sequence[Any], *, label: str = "calibrating", progress: bool = True) -> Callable[[Any], None]:
    """ModelOpt's ``forward_loop(model)``: every calibration batch through ``megatron_prefill``."""
    import torch
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill

    def loop(model: Any) -> None:
        device = _device()
        with torch.no_grad():
            for ids in track(batches, label, enabled=_bars(progress)):
                megatron_prefill(model, ids.to(device), skip_return_logits=True)

    return loop


def perplexity(model: Any, batches: Sequence[Any], *, progress: bool = True, label: str = "evaluating") -> float:
    """exp(mean next-token cross-entropy) over every token of ``batches`` (same on every rank)."""
    from modelopt.torch.utils.plugins.megatron_generate import megatron_prefill

    from .. import evaluate

    model.eval()
    return evaluate.perplexity(batches, lambda ids: megatron_prefill(model, ids), device=_device(), label=label,
                               progress=_bars(progress))


# --------------------------------------------------------------------------- quantize
MOE_CALIBRATION_INCOMPLETE = "MoE calibration incomplete"
"""How ModelOpt 0.47's error begins (``modelopt.torch.quantization.model_calib._check_moe_calibration_complete``,
a plain RuntimeError; tests/test_calibration_sharding.py reads that function's source so a rewording fails CI)."""


@contextmanager
def experts_calibrated_on_every_replica() -> Iterator[None]:
    """ModelOpt's max calibration (``mtq.quantize``, and ``mtq.auto_quantize`` for each candidate) as a DataError
    when an expert got tokens on one data-parallel replica's share of the windows and none on another's: its scale
    cannot be agreed. ModelOpt checks on every rank together (no rank is left waiting); other RuntimeErrors pass.

    The check is ModelOpt's ``model_calib._check_moe_calibration_complete``, called inside ``max_calibrate``
    between the forwards and the amax sync; it raises a plain RuntimeError, and no public call could repeat it
    afterwards (the sync that follows it needs every rank to hold the amax), so its message is what we match."""
    try:
        yield
    except RuntimeError as err:
        if MOE_CALIBRATION_INCOMPLETE not in str(err):
            raise
        raise DataError("some experts received no calibration tokens on some data-parallel replicas, so their "
                        "scales cannot be agreed", path="calibration.num_samples",
                        hint="calibrate on more windows (each replica takes 1/DP of them), or lower "
                             "layout.data_parallel") from err


def quantize(model: Any, stage: Quantize, batches: Sequence[Any], *, config: dict[str, Any],
             progress: bool = True) -> dict[str, Any]:
    """``mtq.quantize`` in place with ``config`` (the plan's, composed once: ``StagePlan.quant_config``),
    calibrating on ``batches`` when the config needs data, then ``mtq.compress`` if asked. Returns the config."""
    import modelopt.torch.quantization as mtq

    cfg = config
    loop = forward_loop(batches, progress=progress) if mtq.need_calibration(cfg) else None
    with experts_calibrated_on_every_replica():
        mtq.quantize(model, cfg, loop)
    if stage.compress:
        mtq.compress(model)
    return cfg


def quantizer_summary(model: Any) -> dict[str, int]:
    """Enabled quantizers by role (``weight``, ``input``, ``output``, ``kv``) on this rank."""
    from modelopt.torch.quantization.nn import SequentialQuantizer, TensorQuantizer

    out: Counter[str] = Counter()
    for name, mod in model.named_modules():
        if isinstance(mod, TensorQuantizer | SequentialQuantizer) and not name.endswith(tuple(f".{i}" for i in range(8))):
            enabled = mod.is_enabled if isinstance(mod, TensorQuantizer) else any(q.is_enabled for q in mod)
            if enabled:
                leaf = name.rsplit(".", 1)[-1]
                role = "kv" if leaf.endswith("bmm_quantizer") else leaf.removesuffix("_quantizer")
                out[role] += 1
    return dict(out)


def amax_state(model: Any) -> dict[str, Any]:
    """Every quantizer's amax and pre_quant_scale tensors (CPU copies) by name, for bitwise comparison."""
    import torch

    out: dict[str, Any] = {}
    for name, buf in model.named_buffers():
        if name.endswith(("_amax", "_pre_quant_scale", "_global_amax")):
            out[name] = buf.detach().to("cpu", copy=True)
    for name, p in model.named_parameters():
        if "quantizer" in name:
            out[name] = p.detach().to("cpu", copy=True)
    return dict(sorted(out.items(), key=lambda kv: kv[0])) if out else {"<none>": torch.zeros(0)}


# --------------------------------------------------------------------------- auto-quantize
def auto_quantize_inputs(stage: AutoQuantize, *, path: str = "") -> AutoQuantizeInputs:
    """``mtq.auto_quantize`` inputs: ModelOpt's default-disabled modules (output layer, routers...) not searched
    and, without a recipe, left out of the effective-bits budget (the budget is over the searchable decoder
    linears, as the format table's weight_bits are)."""
    return shared_auto_quantize_inputs(stage, path=path, disabled=mn.default_disabled_patterns(),
                                       budget_excludes_disabled=True)


def auto_quantize(model: Any, stage: AutoQuantize, batches: Sequence[Any], *, replicas: int = 1,
                  progress: bool = True, path: str = "") -> dict[str, Any]:
    """``mtq.auto_quantize`` with the loss (gradient) or the logits (kl_div) of ``megatron_prefill``-style
    forwards; returns the search state's best (``effective_bits`` achieved, score) and the score steps.

    ``batches``: this data-parallel replica's share of the windows, one of ``replicas``. ModelOpt max-reduces the
    candidates' amax and sums each layer's score over the replicas, so each scores its part of ``score_size``
    (``AutoQuantizeInputs.score_steps``) and the search sees what one process sees on all the windows."""
    import modelopt.torch.quantization as mtq
    import torch
    from megatron.core import parallel_state
    if parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise CompatibilityError("auto-quantize needs PP=1", path="layout.pipeline_parallel")
    inputs = auto_quantize_inputs(stage, path=path)
    device = _device()
    batch_size = batches[0].shape[0] if batches else 1
    loader = [b.to(device) for b in batches]

    def _call(m: Any, ids: Any, labels: Any | None) -> Any:
        s = ids.shape[1]
        pos = torch.arange(s, device=ids.device).unsqueeze(0).expand(ids.shape[0], -1)
        mask = torch.triu(torch.ones((1, 1, s, s), device=ids.device), diagonal=1).bool()
        if labels is not None:  # per-token loss from Megatron's vocab-parallel cross-entropy (TP-aware)
            return m(ids, pos, mask, labels=labels)
        return m(ids, pos, mask, runtime_gather_output=True)

    def forward_backward_step(m: Any, ids: Any) -> None:
        loss = _call(m, ids[:, :-1], ids[:, 1:].contiguous())
        loss.float().mean().backward()

    def forward_step(m: Any, ids: Any) -> Any:  # logits, with autograd (megatron_prefill runs under no_grad)
        return _call(m, ids, None)

    kwargs: dict[str, Any] = dict(
        constraints=inputs.constraints, quantization_formats=inputs.formats,
        data_loader=loader, disabled_layers=inputs.disabled_layers, num_calib_steps=len(loader),
        num_score_steps=inputs.score_steps(batches=len(loader), batch_size=batch_size, replicas=replicas),
        method=inputs.method, verbose=False,
    )
    kwargs["forward_step"] = forward_step  # ModelOpt 0.47 asserts it for both methods
    if inputs.method == "gradient":
        kwargs["forward_backward_step"] = forward_backward_step
    with experts_calibrated_on_every_replica():
        model, state = mtq.auto_quantize(model, **kwargs)
    model.eval()
    best = state.get("best", {}) if isinstance(state, dict) else {}
    return {"effective_bits": (best.get("constraints") or {}).get("effective_bits"),
            "is_satisfied": best.get("is_satisfied"), "score": best.get("score"),
            "score_steps": kwargs["num_score_steps"]}


# --------------------------------------------------------------------------- prune
def prune_constraints(stage: Prune) -> dict[str, Any]:
    """Minitron's constraints: ``export_config`` alone, or a params / active-params target."""
    if stage.is_search:
        return {"params": stage.params} if stage.params is not None else {"active_params": stage.active_params}
    return {"export_config": dict(stage.export_config)}


def minitron_divisors(stage: Prune) -> dict[str, int]:
    """Search-space divisors that make each requested size one of Minitron's choices.

    ModelOpt offers multiples of a divisor (defaults: hidden 256, FFN 512, layers 2), so a target such as
    ``ffn_hidden_size: 640`` would not exist in its search space; a divisor equal to the target (the gcd
    when FFN sizes share one divisor) keeps exactly the requested sizes reachable. Searches keep ModelOpt's
    defaults."""
    import math

    if stage.is_search:
        return {}
    ec = stage.export_config
    out: dict[str, int] = {"num_layers_divisor": 1}
    if "hidden_size" in ec:
        out["hidden_size_divisor"] = ec["hidden_size"]
    ffn = [ec[k] for k in ("ffn_hidden_size", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size") if k in ec]
    if ffn:
        out["ffn_hidden_size_divisor"] = math.gcd(*ffn)
    if "num_moe_experts" in ec:
        out["num_moe_experts_divisor"] = ec["num_moe_experts"]
    if "mamba_head_dim" in ec:
        out["mamba_head_dim_divisor"] = ec["mamba_head_dim"]
    return out


def minitron_available() -> bool:
    import modelopt.torch.prune as mtp

    return hasattr(mtp, "mcore_minitron")


def prune(model: Any, stage: Prune, arch: ModelArch, batches: Sequence[Any], *, progress: bool = True,
          score_func: Callable[[Any], float] | None = None) -> tuple[Any, ModelArch]:
    """``mtp.prune(mode="mcore_minitron")`` in place; returns the model and the architecture it now has."""
    import modelopt.torch.opt as mto
    import modelopt.torch.prune as mtp

    if not minitron_available():
        raise CompatibilityError(
            "ModelOpt's mcore_minitron mode is not registered: it needs Transformer Engine, CUDA and "
            "megatron-core >= 0.18", path="stages.prune", hint="install transformer-engine[pytorch]")
    config: dict[str, Any] = {"forward_loop": forward_loop(batches, label="scoring", progress=progress)}
    if stage.is_search:
        if score_func is None:
            raise SpecError("a params target needs a score function (held-out perplexity)", path="evaluation")
        config["score_func"] = score_func
    divisors = minitron_divisors(stage)
    mode: Any = ([("mcore_minitron", mtp.mcore_minitron.get_mcore_minitron_config(**divisors))]
                 if divisors else "mcore_minitron")
    model, _state = mtp.prune(model, mode=mode, constraints=prune_constraints(stage), dummy_input=None,
                              config=config)
    if mto.ModeloptStateManager.has_state_for_mode_type("prune", model=model):
        mto.ModeloptStateManager.remove_state(model)
    return model, arch_after_prune(arch, stage, model.config)


def arch_after_prune(arch: ModelArch, stage: Prune, config: Any) -> ModelArch:
    """The pruned architecture, read back from the model's TransformerConfig and checked against the stage."""
    import attrs

    expected = stage.pruned(arch)
    got: dict[str, Any] = {
        "num_layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "ffn_hidden_size": config.ffn_hidden_size,
    }
    changes: dict[str, Any] = dict(got)
    att = expected.attention
    if hasattr(att, "num_query_groups"):
        changes["attention"] = attrs.evolve(att, num_heads=config.num_attention_heads, kv_channels=config.kv_channels)
    if expected.moe is not None and config.num_moe_experts:
        changes["moe"] = attrs.evolve(expected.moe, num_experts=config.num_moe_experts,
                                      ffn_hidden_size=config.moe_ffn_hidden_size,
                                      shared_expert_ffn_size=config.moe_shared_expert_intermediate_size)
    pruned = attrs.evolve(expected, **changes)
    if not stage.is_search:
        for k, v in stage.export_config.items():
            have = {
                "hidden_size": pruned.hidden_size, "ffn_hidden_size": pruned.ffn_hidden_size,
                "num_layers": pruned.num_layers, "num_attention_heads": pruned.attention.num_heads,
                "num_moe_experts": pruned.moe.num_experts if pruned.moe else None,
                "moe_ffn_hidden_size": pruned.moe.ffn_hidden_size if pruned.moe else None,
            }.get(k, v)
            if have != v:
                raise CompatibilityError(f"Minitron left {k}={have}, the stage asked for {v}", path=f"stages.prune.{k}")
    return pruned


# --------------------------------------------------------------------------- export
def export_hf(model: Any, hf_reference: str, export_dir: str, *, dtype: str = "bf16", vllm_fakequant: bool = False,
              moe_router_dtype: str | None = None) -> None:
    """ModelOpt's unified HF export (or its vLLM fake-quant variant); ``export_dir`` must be a str."""
    import modelopt.torch.export as mte

    from ..dtypes import torch_dtype

    fn = mte.export_mcore_gpt_to_hf_vllm_fq if vllm_fakequant else mte.export_mcore_gpt_to_hf
    kwargs: dict[str, Any] = dict(dtype=torch_dtype(dtype), export_dir=str(export_dir))
    if moe_router_dtype is not None:
        kwargs["moe_router_dtype"] = moe_router_dtype
    fn(model, str(hf_reference), **kwargs)


# Sizes a pruned model's exported config.json must carry. ModelOpt's exporter rewrites only the dense ones
# (layers, hidden, heads, head_dim, intermediate); MoE sizes are left at the source's values.
_STRUCTURAL_HF_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "num_experts", "num_local_experts",
                       "moe_intermediate_size", "shared_expert_intermediate_size", "n_routed_experts")


def sync_exported_config(export_dir: str | Path, arch: ModelArch) -> dict[str, tuple[Any, Any]]:
    """Make the exported ``config.json`` describe ``arch`` (the pruned architecture); returns what changed."""
    import json

    from ...bridges.hf_config import to_hf_config

    path = Path(export_dir) / "config.json"
    cfg = json.loads(path.read_text())
    want = to_hf_config(arch)
    changed = {k: (cfg[k], want[k]) for k in _STRUCTURAL_HF_KEYS if k in cfg and k in want and cfg[k] != want[k]}
    if changed:
        cfg.update({k: v for k, (_, v) in changed.items()})
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    return changed


def write_hf_reference(directory: str | Path, arch: ModelArch, tokenizer: Any) -> Path:
    """A stand-in for the source Hugging Face folder of a random-weight model: ``config.json`` from the
    architecture (``bridges.hf_config``) with the run's tokenizer and its special-token ids. ModelOpt's
    exporter reads the config and copies the tokenizer files from it; no weights are needed."""
    import json

    from ...bridges.hf_config import to_hf_config

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = to_hf_config(arch)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None or key in cfg:
            cfg[key] = value
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(out))
    return out
