"""Distill (``modelopt.torch.distill``: logits KL against a teacher, optional intermediate pairs and LM loss):
every check of a Distill stage that needs no model, and its registration.

What is checked here, before any GPU work: that the teacher exists (``before_compression`` needs a compression
stage before this one; a named checkpoint must be of the student's family and vocabulary), that the layer names
fit the backend's naming and the architecture this stage starts from (a pruned model has fewer layers), and the
backend's limits (the Megatron-Core layout rules are in :mod:`..rules`).
"""

from __future__ import annotations

import re

from ...errors import CompatibilityError, RecipeError, SpecError
from ...spec.arch import ModelArch
from ...spec.sources import Builtin, HFCheckpoint, MegatronCheckpoint
from ...spec.techniques import COMPRESSING_TECHNIQUES, Distill
from . import Findings, StageContext, Technique, register

HF_LOGIT_LAYERS = (("output_layer", "output_layer"), ("lm_head", "lm_head"))
"""What the Hugging Face backend takes as ``logit_layers``: it compares the ``lm_head`` logits, and accepts the
Megatron-Core spelling of the default so that one recipe reads the same on both backends."""

LAYER_PREFIX = {"megatron": "decoder.layers", "hf": "model.layers"}
"""How each backend's model names its decoder layers (Megatron-Core's GPTModel, transformers' Llama-style)."""
_LAYER = re.compile(r"^(?P<prefix>[A-Za-z_][\w.]*?\.layers)\.(?P<index>\d+)(?:\.|$)")


def first_compression(stages: tuple[object, ...], before: int) -> int | None:
    """The index of the first quantize/auto_quantize/prune stage before ``before`` (None: there is none)."""
    return next((i for i, s in enumerate(stages[:before])
                 if getattr(s, "technique", None) in COMPRESSING_TECHNIQUES), None)


def trained_while_quantized(stages: tuple[object, ...], before: int, *, source_quantized: bool = False,
                            source_trained: bool = False) -> bool:
    """Whether a distill stage before ``before`` trained the weights of a quantized model, with no quantize or
    auto_quantize stage since (which would have calibrated its ranges again): QAT or QAD, whose export puts
    the weights on their quantizers' grid first (``runtime.quant_grid``). ``source_quantized``: the model is
    quantized before the first stage (``plan.sources.quantized_source``); ``source_trained``: and its weights were
    trained so in an earlier run (``plan.sources.trained_source``)."""
    trained, quantized = source_quantized and source_trained, source_quantized
    for s in stages[:before]:
        technique = getattr(s, "technique", None)
        if technique in ("quantize", "auto_quantize"):
            quantized, trained = True, False
        elif technique == "distill":
            trained = trained or quantized
    return trained


def teacher_span(stages: tuple[object, ...]) -> tuple[int | None, int | None]:
    """Where a run keeps the model for ``teacher: before_compression``: (the stage before which the copy is
    made, the last stage that learns from it), or (None, None) when no stage needs it."""
    users = [i for i, s in enumerate(stages)
             if getattr(s, "technique", None) == "distill" and getattr(s, "teacher", None) == "before_compression"]
    firsts = [first_compression(stages, i) for i in users]
    at = min((f for f in firsts if f is not None), default=None)
    return (at, max(users)) if at is not None else (None, None)


def teacher_arch(stage: Distill, ctx: StageContext) -> tuple[ModelArch | None, list[RecipeError], list[str]]:
    """The teacher's architecture (None when it cannot be known before the run), problems and notes."""
    path = f"{ctx.path}.teacher"
    if stage.teacher == "none":
        return None, [], []
    if stage.teacher == "before_compression":
        first = first_compression(ctx.recipe.stages, ctx.index)
        if first is None:
            return None, [SpecError(
                "teacher: before_compression is the model before the recipe's first quantize/prune stage, and no "
                "such stage comes before this one (the teacher would be the student itself)", path=path,
                hint="put the distill stage after a quantize or prune stage, say teacher: none (finetune on the "
                     "language-model loss), or name a teacher checkpoint {type: hf, path: ...}")], []
        return ctx.archs[first], [], []
    src = stage.teacher_source
    if isinstance(src, Builtin):
        from ..sources import builtin_weights

        student = ctx.archs[0]
        if builtin_weights(student) is None:
            return None, [SpecError(f"{student.name} ships no weights with this package", path=path,
                                    hint="name a checkpoint: {type: hf, path: ...}")], []
        return student, [], []
    if isinstance(src, HFCheckpoint):
        return _hf_teacher(src.path, path, f"{path}.path")
    if isinstance(src, MegatronCheckpoint):
        errors: list[RecipeError] = []
        if not ctx.megatron:
            errors.append(CompatibilityError(
                "the Hugging Face backend reads Hugging Face checkpoints, not Megatron distributed checkpoints",
                path=f"{path}.type", hint="name the teacher's Hugging Face folder, or backend: megatron"))
        errors += _folder_problems(src.path, f"{path}.path", marker="metadata.json",
                                   what="a Megatron distributed checkpoint")
        from ..outputs import user_path
        from ..sources import read_recorded_arch

        recorded = None
        if not errors:
            try:  # the run builds the teacher with it (runtime.megatron.steps reads it the same way)
                recorded = read_recorded_arch(user_path(src.path, path=f"{path}.path"), f"{path}.path")
            except SpecError as err:
                return None, [err], []
        if recorded is not None:  # what the run builds the teacher with, before its hf_reference's config
            return recorded, errors, []
        if src.hf_reference is None:
            return None, errors, [(f"{path}: the Megatron teacher's architecture is read at run time (set "
                                   "hf_reference to its Hugging Face folder to check it now)")]
        arch, more, notes = _hf_teacher(src.hf_reference, path, f"{path}.hf_reference", weights=False)
        return arch, errors + more, notes
    return None, [SpecError(f"unknown teacher {stage.teacher!r}", path=path)], []  # pragma: no cover


def _folder_problems(folder: str, path: str, *, marker: str, what: str) -> list[RecipeError]:
    from ..outputs import user_path
    from ..sources import unsearchable

    try:
        p = user_path(folder, path=path)
    except SpecError as err:
        return [err]
    locked = unsearchable(p, folder, path)
    if locked is not None:
        return [locked]
    if not p.is_dir():
        return [SpecError(f"{folder[:300]!r} is not a directory", path=path, hint=f"point at {what}")]
    if not (p / marker).is_file():
        return [SpecError(f"{folder[:300]!r} has no {marker}: not {what}", path=path, hint=f"point at {what}")]
    return []


def _hf_teacher(folder: str, path: str, field: str, *,
                weights: bool = True) -> tuple[ModelArch | None, list[RecipeError], list[str]]:
    """The teacher's architecture from a Hugging Face folder; ``weights``: the run loads the folder's weights
    too (a Megatron teacher's ``hf_reference`` gives only its config, which an export's config serves as well)."""
    from ...bridges.hf_config import load_hf_config
    from ..outputs import user_path
    from ..sources import hf_config_problems

    errors = _folder_problems(folder, field, marker="config.json", what="a Hugging Face checkpoint")
    if not errors and weights:
        errors = hf_config_problems(user_path(folder, path=field), field)
    if errors:
        return None, errors, []
    try:
        arch = load_hf_config(user_path(folder, path=field))
    except RecipeError as err:
        return None, [type(err)(f"the teacher's config.json: {err.message}", path=field, hint=err.hint)], []
    return arch, [], []


def teacher_problems(student: ModelArch, teacher: ModelArch, path: str) -> list[RecipeError]:
    """A teacher whose logits cannot be compared with the student's: another vocabulary or model family."""
    from ..sources import model_family

    out: list[RecipeError] = []
    if teacher.vocab.size != student.vocab.size:
        out.append(CompatibilityError(
            f"the teacher's vocabulary has {teacher.vocab.size} tokens and the student's {student.vocab.size}: "
            "their logits cannot be compared token by token", path=path,
            hint="distil from a model of the same family and tokenizer"))
    if model_family(teacher) != model_family(student):
        out.append(CompatibilityError(
            f"the teacher is a {model_family(teacher)} model and the student a {model_family(student)} model",
            path=path,
            hint="distil from a model of the same family (the same architecture and tokenizer)"))
    return out


def layer_problems(stage: Distill, ctx: StageContext, teacher: ModelArch | None) -> list[RecipeError]:
    """Layer names that do not exist in the backend's model of the student (or teacher) architecture."""
    out: list[RecipeError] = []
    backend = "megatron" if ctx.megatron else "hf"
    if not ctx.megatron and tuple(stage.logit_layers) not in HF_LOGIT_LAYERS:
        out.append(CompatibilityError(
            f"the Hugging Face backend compares the lm_head logits, not {list(stage.logit_layers)}",
            path=f"{ctx.path}.logit_layers", hint="drop logit_layers (or write [lm_head, lm_head])"))
    for i, pair in enumerate(stage.intermediate_layer_pairs):
        for side, (name, arch) in enumerate(((pair[0], ctx.arch), (pair[1], teacher))):
            where = f"{ctx.path}.intermediate_layer_pairs[{i}][{side}]"
            m = _LAYER.match(name)
            if m is None:
                continue
            prefix, index = m["prefix"], int(m["index"])
            if prefix != LAYER_PREFIX[backend]:
                other = "hf" if backend == "megatron" else "megatron"
                fix = name.replace(prefix, LAYER_PREFIX[backend], 1) if prefix == LAYER_PREFIX[other] else ""
                out.append(SpecError(
                    f"{name!r} is not a layer of the {'Megatron-Core' if ctx.megatron else 'Hugging Face'} model "
                    f"(its layers are {LAYER_PREFIX[backend]}.N)", path=where,
                    hint=f"write {fix!r}" if fix else f"name a layer as {LAYER_PREFIX[backend]}.N"))
            elif arch is not None and index >= arch.num_layers:
                who = "student" if side == 0 else "teacher"
                out.append(SpecError(
                    f"layer {index} does not exist: the {who} ({arch.name}) has {arch.num_layers} layers here",
                    path=where, hint=f"use an index below {arch.num_layers}"))
    if stage.intermediate_layer_pairs and not ctx.megatron and teacher is not None \
            and teacher.hidden_size != ctx.arch.hidden_size:
        out.append(CompatibilityError(
            f"intermediate layers of different widths ({ctx.arch.hidden_size} and {teacher.hidden_size}) need a "
            "learned projection, which the Hugging Face backend does not add", path=f"{ctx.path}.intermediate_layer_pairs",
            hint="compare logits only (drop intermediate_layer_pairs), or run on the Megatron-Core backend"))
    return out


def check(stage: Distill, ctx: StageContext) -> Findings:
    errors: list[RecipeError] = []
    warnings: list[str] = []
    teacher, errs, notes = teacher_arch(stage, ctx)
    errors += errs
    warnings += notes
    if teacher is not None and stage.teacher_source is not None:
        errors += teacher_problems(ctx.arch, teacher, f"{ctx.path}.teacher")
    errors += layer_problems(stage, ctx, teacher)
    data = stage.data
    if data is not None:
        from ..outputs import user_path

        for i, name in enumerate(data.files):
            where = f"{ctx.path}.data.files[{i}]"
            try:
                p = user_path(name, path=where)
            except RecipeError as err:
                errors.append(err)
                continue
            if not p.is_file():
                from ...errors import DataError

                errors.append(DataError(f"{name[:300]!r} does not exist or is not a file", path=where,
                                        hint="point at .txt or .jsonl files on this machine"))
    memory = None
    if ctx.megatron and ctx.layout is not None:
        memory, note = memory_plan(stage, ctx, teacher)
        warnings += [note] if note else []
    return Findings(errors=tuple(errors), warnings=tuple(warnings), memory=memory)


ASSUMED_GPU = "h100-80gb"
"""The GPU a distillation figure is computed for when this machine shows none the GPU table knows (``plan``'s
default ``--gpu``); the figure says so (``gpu_assumed``) and the check adds a note."""


def memory_plan(stage: Distill, ctx: StageContext, teacher: ModelArch | None) -> tuple[dict[str, object], str]:
    """The stage's per-rank memory on the machine's GPU (:data:`ASSUMED_GPU` when none is known, which the
    figure and a note say): student weights, fp32 gradients, master weights and Adam moments, the teacher,
    activations of one micro batch. Notes, not errors: the distillation formula is an estimate not yet compared
    with a measured peak, and the GPU may be assumed."""
    from .. import memory
    from ..gpus import get_gpu

    found = None
    if ctx.env.gpu_name:
        try:
            found = get_gpu(ctx.env.gpu_name)
        except RecipeError:
            pass
    gpu = found or get_gpu(ASSUMED_GPU)
    seq = stage.window_length(ctx.recipe.calibration.seq_length)
    if ctx.layout is None:  # pragma: no cover - the caller checks
        return {}, ""
    plan = memory.estimate(ctx.arch, ctx.layout, gpu, stage="distill", batch=stage.micro_batch_size, seq_length=seq,
                           teacher=teacher, with_teacher=stage.has_teacher)
    notes = []
    if found is None:
        seen = f"{ctx.env.gpu_name!r}, not in the GPU table," if ctx.env.gpu_name else "no GPU"
        notes.append(f"the distillation memory figure ({plan.per_rank_bytes / 2**30:.1f} GiB per rank) assumes "
                     f"{gpu.name} GPUs ({seen} found here), and is an estimate: its formula is not yet compared with a "
                     f"measured peak")
    if not plan.fits:
        notes.append(f"distillation is estimated at {plan.per_rank_bytes / 2**30:.1f} GiB per rank, more than the "
                     f"{plan.usable_bytes / 2**30:.1f} GiB usable on a {gpu.name}; raise tensor_parallel or lower "
                     f"micro_batch_size")
    summary = {**plan.summary(), "gpu_assumed": found is None}
    return summary, f"{ctx.path}: " + "; ".join(notes) if notes else ""


TECHNIQUE = register(Technique(
    name="distill", spec=Distill, title="distillation", check=check, calibrates=False,
    executors={"hf": "modelopt_typed_recipes.runtime.hf.steps:distill",
               "megatron": "modelopt_typed_recipes.runtime.megatron.steps:distill"},
))
