"""Distillation of a transformers model with ``modelopt.torch.distill``: the Hugging Face backend's training loop.

The student is the run's model as the earlier stages left it (with its ModelOpt quantizers after a quantize
stage: their fake quantization passes gradients straight through, so this is QAD). ``mtd.convert`` wraps it
with the frozen teacher in a ``DistillationModel`` (mode ``kd_loss``): a criterion per compared layer pair
(ModelOpt's ``LogitsDistillationLoss`` on the ``lm_head`` logits, with the stage's temperature; cosine or MSE
on intermediate hidden states) and a loss balancer that weighs them as Megatron-LM's distillation does.
AdamW updates fp32 parameters (the master weights); on CUDA the forward runs under bf16 autocast. ``mtd.export``
unwraps the student at the end, so the later stages (quantize, export) see a plain model again.
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from modelopt.torch.distill import DistillationLossBalancer
from modelopt.torch.distill.loss_balancers import STUDENT_LOSS_KEY
from modelopt.torch.distill.losses import LogitsDistillationLoss

from ...errors import CompatibilityError, RecipeError

if TYPE_CHECKING:
    from ...spec.techniques import Distill

LOGITS_LAYER = "lm_head"
"""The module of a transformers causal LM whose output is the logits."""


# --------------------------------------------------------------------------- losses
class HiddenStateCosineLoss(torch.nn.modules.loss._Loss):
    """1 - cosine similarity of student and teacher hidden states, per token (Megatron-LM's default for
    intermediate pairs). A decoder layer's output may be a tuple: its hidden states come first."""

    def forward(self, out_s: Any, out_t: Any) -> Any:
        s, t = _hidden(out_s), _hidden(out_t)
        return 1.0 - F.cosine_similarity(s.float(), t.float().detach(), dim=-1)


class HiddenStateMSELoss(torch.nn.modules.loss._Loss):
    """Mean squared error of student and teacher hidden states, per token."""

    def forward(self, out_s: Any, out_t: Any) -> Any:
        s, t = _hidden(out_s), _hidden(out_t)
        return F.mse_loss(s.float(), t.float().detach(), reduction="none").mean(-1)


def _hidden(out: Any) -> Any:
    return out[0] if isinstance(out, tuple | list) else out


INTERMEDIATE_LOSSES = {"cosine": HiddenStateCosineLoss, "mse": HiddenStateMSELoss}


class KDLossBalancer(DistillationLossBalancer):
    """Megatron-LM's weighing of the distillation losses (ModelOpt's ``LogitsAndIntermediatesLossBalancer`` of
    its Megatron-Core plugin, which needs megatron-core to import): the mean intermediate loss is scaled to the
    logits loss's magnitude; with ``skip_lm_loss`` the total is their sum; otherwise the distillation loss is
    scaled to the LM loss's magnitude, times ``kd_loss_scale``, and added to it."""

    def __init__(self, *, kd_loss_scale: float, skip_lm_loss: bool) -> None:
        super().__init__()
        self.kd_loss_scale = kd_loss_scale
        self.skip_lm_loss = skip_lm_loss
        self.last: dict[str, float] = {}

    def forward(self, loss_dict: dict[str, Any]) -> Any:
        losses = dict(loss_dict)
        lm = losses.pop(STUDENT_LOSS_KEY, None)
        logits_key = next(k for k in losses if k.startswith(LogitsDistillationLoss.__name__))
        logits = losses.pop(logits_key)
        inter = sum(losses.values()) / len(losses) if losses else None
        kd = logits
        if inter is not None:
            kd = logits + inter * (logits.detach() / inter.detach().clamp_min(1e-12))
        self.last = {"logits_loss": float(logits.detach()),
                     "intermediate_loss": float(inter.detach()) if inter is not None else 0.0,
                     "lm_loss": float(lm.detach()) if lm is not None else float("nan")}
        if self.skip_lm_loss or lm is None:
            return kd
        if float(kd.detach()) > 0 and float(lm.detach()) > 0:
            kd = kd * (lm.detach() / kd.detach())
        return lm + self.kd_loss_scale * kd


# --------------------------------------------------------------------------- schedule
def lr_at(stage: Distill, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``: linear warm-up from 0, then
    ``constant``, ``linear`` or ``cosine`` decay to ``min_learning_rate`` (Megatron-LM's ``--lr-decay-style``)."""
    lr, low, warm = stage.learning_rate, stage.min_learning_rate, stage.warmup_steps
    if warm and step < warm:
        return lr * (step + 1) / warm
    if stage.lr_schedule == "constant":
        return lr
    span = max(1, total - warm)
    t = min(1.0, (step - warm) / span)
    if stage.lr_schedule == "linear":
        return lr - (lr - low) * t
    return low + (lr - low) * 0.5 * (1 + math.cos(math.pi * t))


# --------------------------------------------------------------------------- the loop
def convert(student: Any, teacher: Any, stage: Distill, *, path: str) -> tuple[Any, KDLossBalancer]:
    """``mtd.convert`` of the student with the teacher, the criteria and the balancer."""
    import modelopt.torch.distill as mtd

    criterion: dict[tuple[str, str], Any] = {
        (LOGITS_LAYER, LOGITS_LAYER): LogitsDistillationLoss(temperature=stage.logit_kl_temperature, reduction="none"),
    }
    for i, pair in enumerate(stage.intermediate_layer_pairs):
        for side, (name, model) in enumerate(((pair[0], student), (pair[1], teacher))):
            try:
                model.get_submodule(name)
            except AttributeError:
                raise CompatibilityError(f"the {'student' if side == 0 else 'teacher'} has no module {name!r}",
                                         path=f"{path}.intermediate_layer_pairs[{i}][{side}]",
                                         hint="name a module of the transformers model, e.g. model.layers.3") from None
        criterion[(pair[0], pair[1])] = INTERMEDIATE_LOSSES[pair[2] if len(pair) == 3 else "cosine"]()
    balancer = KDLossBalancer(kd_loss_scale=stage.kd_loss_scale, skip_lm_loss=stage.skip_lm_loss)
    model = mtd.convert(student, mode=[("kd_loss", {"teacher_model": teacher, "criterion": criterion,
                                                    "loss_balancer": balancer})])
    return model, balancer


def train(student: Any, teacher: Any | None, stage: Distill, *, calibration: Any, tokenizer: Any, device: str,
          seed: int, path: str, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train ``student`` for the stage's steps; returns the plain student (``mtd.export``) and what happened."""
    import modelopt.torch.distill as mtd

    from ..data import training_windows
    from ..progress import track

    seq = stage.window_length(calibration.seq_length)
    total = stage.total_steps(seq)
    per_step = stage.micro_batch_size * stage.gradient_accumulation_steps
    windows, distinct = training_windows(stage, calibration, tokenizer, needed=total * per_step, seed=seed,
                                         path=path)
    torch.manual_seed(seed)

    aligned = align_with_export(student)
    dtypes = _dtypes(student)
    student.float()  # fp32 master weights: the optimizer updates these; compute may run in bf16 (autocast)
    autocast = device == "cuda"
    model, balancer = (convert(student, teacher, stage, path=path) if teacher is not None else (student, None))
    model.train()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr_at(stage, 0, total), betas=(stage.adam_beta1, stage.adam_beta2),
                                  weight_decay=stage.weight_decay)
    losses: list[float] = []
    parts: list[dict[str, float]] = []
    norms: list[float] = []
    lrs: list[float] = []
    t0 = time.perf_counter()
    tokens = 0
    try:
        for step in track(range(total), f"{'distill' if teacher is not None else 'finetune'} {path}", enabled=progress):
            lr = lr_at(stage, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(stage.gradient_accumulation_steps):
                start = (step * stage.gradient_accumulation_steps + micro) * stage.micro_batch_size
                ids = windows[start:start + stage.micro_batch_size].to(device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    out = model(input_ids=ids, labels=ids, use_cache=False)
                    if teacher is not None:
                        loss = model.compute_kd_loss(student_loss=out.loss.float(),
                                                     loss_reduction_fn=lambda x: x.float().mean())
                    else:
                        loss = out.loss.float()
                if not torch.isfinite(loss):
                    raise RecipeError(f"the training loss became {float(loss)} at step {step}", path=path,
                                      hint="lower learning_rate, or raise warmup_steps")
                (loss / stage.gradient_accumulation_steps).backward()
                step_loss += float(loss.detach()) / stage.gradient_accumulation_steps
                tokens += int(ids.shape[0]) * (int(ids.shape[1]) - 1)  # predicted tokens, as Megatron-Core's loop counts
            if stage.clip_grad > 0:
                norms.append(float(torch.nn.utils.clip_grad_norm_(params, stage.clip_grad)))
            optimizer.step()
            losses.append(step_loss)
            lrs.append(lr)
            if balancer is not None:
                parts.append(dict(balancer.last))
    finally:
        seconds = time.perf_counter() - t0
        model.eval()
        if teacher is not None:
            model = mtd.export(model)
        optimizer.zero_grad(set_to_none=True)
        del optimizer
        _restore_dtypes(model, dtypes)
    details: dict[str, Any] = {
        "teacher": "none" if teacher is None else "kept",
        "steps": total, "tokens": tokens, "seq_length": seq, "micro_batch_size": stage.micro_batch_size,
        "gradient_accumulation_steps": stage.gradient_accumulation_steps,
        "training_windows": distinct, "epochs": round(total * per_step / distinct, 3),
        "tokens_per_second": tokens / seconds if seconds > 0 else None, "train_seconds": seconds,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "loss_curve": _curve(losses), "lr_first": lrs[0] if lrs else None, "lr_last": lrs[-1] if lrs else None,
        "grad_norm_last": norms[-1] if norms else None,
        "precision": "fp32 master weights, bf16 autocast" if autocast else "fp32",
        "aligned_with_export": aligned,
    }
    if parts:
        details["loss_parts_first"], details["loss_parts_last"] = parts[0], parts[-1]
    return model, details


def align_with_export(model: Any) -> bool:
    """Give a quantized student the quantization grid its export will have, before it learns on it.

    ModelOpt's HF export re-smooths layers that read the same input (q/k/v, gate/up: one AWQ pre-quant scale, one
    input and per-tensor weight range, the weights re-scaled and their ranges collected again;
    ``requantize_resmooth_fused_llm_layers``). After PTQ that moves the grid a little; after QAD it would move
    the grid the weights were trained for. Applied here first, the export's pass changes nothing, and the
    exported model is the trained one. Returns whether the model has quantizers (and was aligned)."""
    from modelopt.torch.export.unified_export_hf import requantize_resmooth_fused_llm_layers
    from modelopt.torch.quantization.nn import TensorQuantizer

    if not any(isinstance(m, TensorQuantizer) and m.is_enabled for m in model.modules()):
        return False

    with torch.no_grad():
        requantize_resmooth_fused_llm_layers(model)
    return True


def _dtypes(model: Any) -> dict[str, Any]:
    """The dtype of every parameter and floating buffer (quantizer ranges may differ from the weights')."""
    out = {n: p.dtype for n, p in model.named_parameters()}
    out.update({n: b.dtype for n, b in model.named_buffers() if b.is_floating_point()})
    return out


def _restore_dtypes(model: Any, dtypes: dict[str, Any]) -> None:
    """Each tensor back in the dtype it had before training (the run's dtype for the weights)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in dtypes and p.dtype != dtypes[name]:
                p.data = p.data.to(dtypes[name])
        for name, b in model.named_buffers():
            if name in dtypes and b.dtype != dtypes[name]:
                b.data = b.data.to(dtypes[name])


def _curve(values: list[float], points: int = 11) -> list[float]:
    """About ``points`` evenly spaced values of a loss curve (the first and the last included)."""
    if len(values) <= points:
        return [round(v, 5) for v in values]
    idx = sorted({round(i * (len(values) - 1) / (points - 1)) for i in range(points)})
    return [round(values[i], 5) for i in idx]


def frozen_copy(model: Any) -> Any:
    """The teacher: a deep copy of ``model`` in eval mode, without gradients."""
    teacher = copy.deepcopy(model)
    teacher.eval().requires_grad_(False)
    return teacher


def load_teacher(src: Any, plan: Any, *, path: str) -> Any:
    """A named teacher checkpoint (a Hugging Face folder, or the shipped weights) on the run's device and dtype."""
    from transformers import AutoModelForCausalLM

    from ...plan.outputs import user_path
    from ...plan.sources import builtin_weights
    from ...spec.sources import Builtin, HFCheckpoint
    from ..dtypes import torch_dtype

    if isinstance(src, Builtin):
        folder = builtin_weights(plan.arch)
    elif isinstance(src, HFCheckpoint):
        folder = user_path(src.path, path=f"{path}.path")
    else:
        raise CompatibilityError("the Hugging Face backend reads Hugging Face checkpoints, not Megatron distributed "
                                 "checkpoints", path=f"{path}.type", hint="name the teacher's Hugging Face folder")
    if folder is None:
        raise CompatibilityError(f"{plan.arch.name} ships no weights with this package", path=path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(plan.dtype))
    except (OSError, ValueError) as exc:
        raise CompatibilityError(f"cannot load the teacher from {str(folder)[:200]!r}: {exc}"[:400],
                                 path=f"{path}.path") from None
    return frozen_copy(model.to(plan.device))
