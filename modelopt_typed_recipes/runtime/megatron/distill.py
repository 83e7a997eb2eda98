"""Knowledge distillation of a Megatron-Core model: ModelOpt's Megatron distillation plugin in a short
training loop, the way Megatron-LM's ``finetune.sh`` runs it with a distillation config.

The student (the model as the earlier stages left it: quantized for QAD, pruned for Minitron) is wrapped
with its teacher by ``mtd.convert(mode="kd_loss")`` and ``adjust_distillation_model_for_mcore``; each
micro-batch's losses are reduced as Megatron-LM's post-training ``loss_func`` does (the criterion outputs are
``(per_token_loss, tp_reduce, is_sequence_parallel)`` tuples; the token sums are all-reduced over tensor
parallelism) and balanced by ``compute_kd_loss``. The weights are bf16; the optimizer keeps fp32 master
copies (``torch.optim.AdamW``: Megatron-Core's own optimizer allocates on CUDA unconditionally, so the same
loop would not run in the CPU tests), clips the global gradient norm over the model-parallel ranks (each
tensor-parallel duplicate counted once) and follows Megatron-Core's ``OptimizerParamScheduler`` for the
learning rate. ``mtd.export`` hands back a plain ``GPTModel`` with the ModelOpt state the earlier stages
gave it (quantizers stay; the distillation modes are dropped), so checkpoints and export work as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from types import MethodType
from typing import TYPE_CHECKING, Any

import attrs

from ...errors import LayoutError, SpecError
from ..progress import track

if TYPE_CHECKING:
    from ...spec.arch import ModelArch
    from ...spec.layout import ParallelLayout
    from ...spec.techniques import Distill

_DISTILL_MODES = ("kd_loss", "export_student")
LR_STYLES = {"constant": "constant", "linear": "linear", "cosine": "cosine",
             "inverse_square_root": "inverse-square-root"}
"""The schedules, by the names the stage uses, mapped to Megatron-Core's ``lr_decay_style``."""


@attrs.frozen(kw_only=True)
class Training:
    """The loop's settings in plain values (the executor fills it from the stage and its plan)."""

    steps: int
    micro_batch_size: int
    gradient_accumulation_steps: int = 1
    learning_rate: float
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    min_learning_rate: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0

    @classmethod
    def of(cls, stage: Distill, steps: int) -> Training:
        """The stage's training fields, with the step count its plan resolved."""
        return cls(steps=steps, micro_batch_size=stage.micro_batch_size,
                   gradient_accumulation_steps=stage.gradient_accumulation_steps, learning_rate=stage.learning_rate,
                   lr_schedule=stage.lr_schedule, warmup_steps=stage.warmup_steps,
                   min_learning_rate=stage.min_learning_rate, weight_decay=stage.weight_decay,
                   adam_beta1=stage.adam_beta1, adam_beta2=stage.adam_beta2, clip_grad=stage.clip_grad)

    @property
    def windows_per_step(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps


@attrs.frozen(kw_only=True)
class KDLoss:
    """The loss, with the names of Megatron-LM's distillation config (``--export-kd-cfg``)."""

    logit_layers: tuple[str, str] = ("output_layer", "output_layer")
    intermediate_layer_pairs: tuple[tuple[str, ...], ...] = ()
    skip_lm_loss: bool = True
    kd_loss_scale: float = 1.0
    logit_kl_temperature: float = 1.0

    @classmethod
    def of(cls, stage: Distill) -> KDLoss:
        return cls(logit_layers=tuple(stage.logit_layers), intermediate_layer_pairs=stage.intermediate_layer_pairs,  # type: ignore[arg-type]
                   skip_lm_loss=stage.skip_lm_loss, kd_loss_scale=stage.kd_loss_scale,
                   logit_kl_temperature=stage.logit_kl_temperature)


# --------------------------------------------------------------------------- teacher
def copy_model(model: Any, arch: ModelArch, layout: ParallelLayout, *, dtype: str, device: str, spec: str,
               deterministic: bool = False) -> Any:
    """A second model with ``model``'s weights (the teacher kept before compression). ``copy.deepcopy``
    cannot copy a Megatron-Core model (its modules hold process groups), so the copy is built again
    for the same layout and spec and loaded from the state dict."""
    import torch

    from . import build

    teacher = build.build_model(arch, layout, dtype=dtype, device=device, spec=spec, deterministic=deterministic)
    with torch.no_grad():
        teacher.load_state_dict(model.state_dict(), strict=True)
    teacher.requires_grad_(False)
    return teacher.eval()


def model_bytes(model: Any) -> int:
    """Bytes of the parameters and buffers on this rank (what a kept copy costs)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


# --------------------------------------------------------------------------- wrapping
def wrap(student: Any, teacher: Any, loss: KDLoss) -> Any:
    """``mtd.convert(kd_loss)`` with the Megatron plugin's criterion and balancer, adjusted for
    Megatron-Core (teacher hidden from checkpoints, LM loss skipped when ``skip_lm_loss``)."""
    import modelopt.torch.distill as mtd
    import modelopt.torch.distill.plugins.megatron as mtd_mcore

    cfg = mtd_mcore.DistillationConfig(
        intermediate_layer_pairs=[tuple(p) for p in loss.intermediate_layer_pairs],
        logit_layers=loss.logit_layers,
        skip_lm_loss=loss.skip_lm_loss, kd_loss_scale=loss.kd_loss_scale,
        logit_kl_temperature=loss.logit_kl_temperature)
    cfg = mtd_mcore.setup_distillation_config(cfg, student.config, teacher.config)
    names = {n for n, _ in student.named_modules()}
    for (s, t) in [tuple(loss.logit_layers), *[p[:2] for p in loss.intermediate_layer_pairs]]:
        for side, name, model in (("student", s, student), ("teacher", t, teacher)):
            if name not in (names if side == "student" else {n for n, _ in model.named_modules()}):
                raise SpecError(f"the {side} has no module {name!r}", path="stages.distill",
                                hint="name a module of the Megatron-Core GPTModel, e.g. 'output_layer' or "
                                     "'decoder.final_layernorm'")
    kd = mtd.convert(student, mode=[("kd_loss", {"teacher_model": teacher, "criterion": cfg.criterion,
                                                 "loss_balancer": cfg.loss_balancer})])
    mtd_mcore.adjust_distillation_model_for_mcore(kd, cfg)
    kd._lm_loss_of_logits = kd.compute_language_model_loss
    kd.compute_language_model_loss = MethodType(_lm_loss_on_a_copy, kd)
    return kd


def _lm_loss_on_a_copy(self: Any, labels: Any, logits: Any) -> Any:
    """The student's LM loss on a copy of fp32 logits: Megatron-Core's ``vocab_parallel_cross_entropy`` works
    in place on fp32 logits (bf16 ones it casts first), which would overwrite the logits the distillation hook
    captured for the KL loss."""
    import torch

    return self._lm_loss_of_logits(labels, logits.clone() if logits.dtype == torch.float32 else logits)


def unwrap(kd: Any) -> Any:
    """The student as a plain ``GPTModel`` (``mtd.export``) whose ModelOpt state keeps only the earlier
    stages' modes: a checkpoint of it restores without a teacher."""
    import modelopt.torch.distill as mtd
    import modelopt.torch.opt as mto

    student = mtd.export(kd)
    for name, value in list(vars(student).items()):  # the plugin's (and wrap's) per-instance overrides
        if isinstance(value, MethodType) and value.__func__.__module__.startswith(("modelopt.torch.distill", __name__)):
            delattr(student, name)
    key = mto.ModeloptStateManager._state_key
    state = getattr(student, key, None)
    if state is not None:
        state[:] = [(m, s) for m, s in state if m not in _DISTILL_MODES]
        if not state:
            mto.ModeloptStateManager.remove_state(student)
    return student.eval()


# --------------------------------------------------------------------------- loss reduction
def masked_sum(output: Any, mask: Any) -> Any:
    """Sum of a per-token loss over the mask, as Megatron-LM's post-training ``_mask_loss``: a criterion's
    ``(loss, tp_reduce, is_sequence_parallel)`` tuple is summed over the tensor-parallel ranks."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    tp_reduce = sequence_parallel = False
    if isinstance(output, tuple):
        output, tp_reduce, sequence_parallel = output
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if sequence_parallel and tp > 1:  # an intermediate activation split over the sequence
        mask = torch.tensor_split(mask, tp, dim=1)[parallel_state.get_tensor_model_parallel_rank()]
    total = torch.sum(output.reshape(-1).float() * mask.reshape(-1).float())
    if (tp_reduce or sequence_parallel) and tp > 1:
        dist.all_reduce(total, group=parallel_state.get_tensor_model_parallel_group())
    return total


# --------------------------------------------------------------------------- optimizer
class MasterAdamW:
    """AdamW over fp32 master copies of bf16 weights: gradients are cast up, the global norm is clipped over
    the model-parallel ranks, the step runs in fp32 and the result is written back to the model's weights.
    Biases and 1-D weights (norms) get no weight decay, as in Megatron-LM."""

    def __init__(self, params: Sequence[Any], train: Training) -> None:
        import torch
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        self.params = list(params)
        self.masters = [p.detach().float().clone() if p.dtype != torch.float32 else p for p in self.params]
        for m in self.masters:
            m.requires_grad_(True)
        decay = [m for p, m in zip(self.params, self.masters, strict=True) if p.ndim > 1]
        no_decay = [m for p, m in zip(self.params, self.masters, strict=True) if p.ndim <= 1]
        fused = bool(self.masters) and self.masters[0].is_cuda
        groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "wd_mult": 0.0}]
        self.opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=train.learning_rate,
                                     betas=(train.adam_beta1, train.adam_beta2),
                                     eps=1e-8, weight_decay=train.weight_decay, fused=fused)
        self.clip = train.clip_grad
        self.scheduler = OptimizerParamScheduler(
            self.opt, init_lr=0.0 if train.warmup_steps else train.learning_rate, max_lr=train.learning_rate,
            min_lr=train.min_learning_rate, lr_warmup_steps=train.warmup_steps,
            lr_decay_steps=max(train.steps, train.warmup_steps + 1), lr_decay_style=LR_STYLES[train.lr_schedule],
            start_wd=train.weight_decay, end_wd=train.weight_decay, wd_incr_steps=max(train.steps, 1),
            wd_incr_style="constant")
        self._sequence_parallel = [getattr(p, "sequence_parallel", False) for p in self.params]
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

        self._counted = [param_is_not_tensor_parallel_duplicate(p) for p in self.params]

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def step(self) -> Any:
        """One optimizer step from the gradients the model holds; returns the gradient norm before clipping (a
        tensor: the caller reads it with the step's other figures, one device synchronisation per step)."""
        import torch
        import torch.distributed as dist
        from megatron.core import parallel_state

        tp_group = parallel_state.get_tensor_model_parallel_group()
        tp = parallel_state.get_tensor_model_parallel_world_size()
        for p, m, sp in zip(self.params, self.masters, self._sequence_parallel, strict=True):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            if sp and tp > 1:  # norms under sequence parallelism saw a slice of the tokens each
                dist.all_reduce(g, group=tp_group)
            p.grad = None
            m.grad = g.float() if g.dtype != torch.float32 else g
        dp = parallel_state.get_data_parallel_world_size()
        if dp > 1:  # the replicas' gradients averaged (one flat all-reduce)
            grads = [m.grad for m in self.masters]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=parallel_state.get_data_parallel_group())
            flat /= dp
            torch._foreach_copy_(grads, [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)])
        counted = [m.grad for m, c in zip(self.masters, self._counted, strict=True) if c]
        sq = torch.stack(torch._foreach_norm(counted)).float().pow(2).sum() if counted else \
            torch.zeros((), device=self.masters[0].device)
        if parallel_state.get_model_parallel_group() is not None and dist.get_world_size() > 1:
            dist.all_reduce(sq, group=parallel_state.get_model_parallel_group())
        norm = sq.sqrt()
        if self.clip and self.clip > 0:
            coef = torch.clamp(self.clip / (norm + 1e-6), max=1.0)
            torch._foreach_mul_([m.grad for m in self.masters], coef)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            pairs = [(p, m) for p, m in zip(self.params, self.masters, strict=True) if p is not m]
            if pairs:
                torch._foreach_copy_([p for p, _ in pairs], [m for _, m in pairs])
        self.scheduler.step(1)
        return norm


# --------------------------------------------------------------------------- the loop
def micro_batches(windows: Any, size: int, *, replicas: int = 1, replica: int = 0) -> Iterator[Any]:
    """Micro-batches of ``size`` whole windows, in order; the windows repeat, in order, when they run out
    (the stage's training text is read the same way on both backends). With data-parallel ``replicas``, each
    global micro-batch of ``size * replicas`` windows is split among them and this yields ``replica``'s part."""
    n = windows.shape[0]
    if n == 0:
        raise SpecError("the training text gives no window", path="stages.distill.data")
    i = 0
    while True:
        idx = [(i + replica * size + k) % n for k in range(size)]
        i = (i + size * replicas) % n
        yield windows[idx]


def _inputs(ids: Any, cache: dict[tuple[int, ...], tuple[Any, Any]]) -> tuple[Any, Any, Any, Any]:
    """Inputs, positions, causal mask and next-token labels of a window batch (the last token only labels);
    positions and mask are built once per shape."""
    import torch

    x, labels = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    if x.shape not in cache:
        s = x.shape[1]
        pos = torch.arange(s, device=x.device).unsqueeze(0).expand(x.shape[0], -1)
        cache[x.shape] = (pos, torch.triu(torch.ones((1, 1, s, s), device=x.device), diagonal=1).bool())
    pos, mask = cache[x.shape]
    return x, pos, mask, labels


def train_loop(model: Any, windows: Any, train: Training, *, distilling: bool, progress: bool = False,
               on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """``train.steps`` optimizer steps of ``gradient_accumulation_steps`` micro-batches each over ``windows``
    (token ids [N, L]). ``model`` is a distillation model (``wrap``) when ``distilling``, else the student
    alone (fine-tuning / QAT on the LM loss). Returns the loss curve and the throughput."""
    import torch
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        raise LayoutError("distillation on Megatron-Core runs with PP=1 (the pipeline schedule is not driven "
                          "by this loop)", path="layout.pipeline_parallel", hint="use tensor parallelism")
    if parallel_state.get_context_parallel_world_size() > 1:
        raise LayoutError("distillation on Megatron-Core runs with CP=1 (the loss mask is not split over context "
                          "ranks)", path="layout.context_parallel", hint="use tensor or data parallelism")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = MasterAdamW(params, train)
    model.train()
    batches = micro_batches(windows, train.micro_batch_size,
                            replicas=parallel_state.get_data_parallel_world_size(),
                            replica=parallel_state.get_data_parallel_rank())
    curve: list[dict[str, float]] = []
    shapes: dict[tuple[int, ...], tuple[Any, Any]] = {}
    tokens = 0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for step in track(range(train.steps), "distilling" if distilling else "training", enabled=progress):
        total = torch.zeros((), device=device)
        logits_total = torch.zeros((), device=device)
        for _ in range(train.gradient_accumulation_steps):
            ids = next(batches).to(device, non_blocking=True)
            x, pos, mask, labels = _inputs(ids, shapes)
            loss_mask = torch.ones_like(labels, dtype=torch.float32)
            n = loss_mask.sum()
            out = model(x, pos, mask, labels=labels)  # per-token LM loss [b, s] (zeros when skip_lm_loss)
            lm = masked_sum(out, loss_mask)
            if distilling:
                losses = model.compute_kd_loss(student_loss=lm,
                                               loss_reduction_fn=lambda o, m=loss_mask: masked_sum(o, m))
                loss = losses["kd_loss"] / n
                logits_total += losses["logits_loss"].detach() / n
            else:
                loss = lm / n
            (loss / train.gradient_accumulation_steps).backward()
            total += loss.detach()
            tokens += int(labels.numel())
        lr = opt.lr
        norm = opt.step()
        acc = train.gradient_accumulation_steps
        loss_v, logits_v, norm_v = torch.stack([total, logits_total, norm.to(total.dtype)]).tolist()
        row = {"step": step + 1, "loss": loss_v / acc, "grad_norm": norm_v, "lr": lr}
        if distilling:
            row["logits_loss"] = logits_v / acc
        curve.append(row)
        if on_step is not None:
            on_step(step + 1, row)
    sync()
    seconds = time.perf_counter() - t0
    model.eval()
    tokens *= parallel_state.get_data_parallel_world_size()  # every replica trained on as many, its own windows
    return {"steps": train.steps, "tokens": tokens, "seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds > 0 else None,
            "loss_first": curve[0]["loss"] if curve else None, "loss_last": curve[-1]["loss"] if curve else None,
            "curve": curve}


def distill(student: Any, teacher: Any | None, windows: Any, train: Training, loss: KDLoss, *,
            progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Distil ``student`` from ``teacher`` (None: train on the LM loss alone) on ``windows``; returns the
    student as a plain ``GPTModel`` and what the loop did."""
    if teacher is None:
        report = train_loop(student, windows, train, distilling=False, progress=progress)
        student.eval()
        return student, report
    kd = wrap(student, teacher, loss)
    try:
        report = train_loop(kd, windows, train, distilling=True, progress=progress)
    finally:
        student = unwrap(kd)
    return student, report

