"""Prune (ModelOpt's Minitron on Megatron-Core): its gates. Sizes against the model are the spec's own check
(:meth:`~...spec.techniques.Prune.validate_for`); the Megatron-Core layout limits are in :mod:`..rules`."""

from __future__ import annotations

from ...errors import CompatibilityError, RecipeError, SpecError
from ...spec.recipe import HFCheckpoint, MegatronCheckpoint
from ...spec.techniques import Prune
from . import Findings, StageContext, Technique, register


def check(stage: Prune, ctx: StageContext) -> Findings:
    from .. import versions

    errors: list[RecipeError] = versions.minitron(ctx.env, ctx.path, cuda=ctx.cuda)
    if ctx.arch.moe is not None and isinstance(ctx.recipe.source, HFCheckpoint):
        # measured on the GPU machine, 2x H200 (benchmarks/megatron_gpu.md, prune): ModelOpt 0.47's
        # HF importer leaves TE SequentialMLP experts without _extra_state, and its MoE mappings
        # have no rule for TEGroupedMLP experts, so the TE spec Minitron needs cannot be filled.
        errors.append(CompatibilityError(
            "pruning a mixture-of-experts model from a Hugging Face checkpoint is not possible with "
            "ModelOpt 0.47: its importer cannot load experts into the Transformer Engine layer spec "
            "that Minitron needs", path=ctx.path,
            hint="prune a dense model, or start from a Megatron checkpoint saved with the TE spec"))
    if stage.is_search and ctx.recipe.evaluation is None:
        # megatron/stages.prune says so only after the model is built and scored
        errors.append(SpecError(
            "a params/active_params target is searched by held-out perplexity, and the recipe has no evaluation "
            "data", path="evaluation", hint=f"add evaluation: {{dataset: reference-heldout}}, or give {ctx.path} "
            "explicit sizes"))
    src = ctx.recipe.source
    first = next(i for i, s in enumerate(ctx.recipe.stages) if s.technique == stage.technique)
    if isinstance(src, MegatronCheckpoint) and ctx.index == first:
        from ..sources import saved_layer_spec

        saved = saved_layer_spec(src)
        if saved is not None and saved != "te":
            errors.append(CompatibilityError(
                f"Minitron prunes the Transformer Engine layer spec; this checkpoint was saved with the {saved!r} "
                "spec", path=ctx.path,
                hint="start from the Hugging Face checkpoint, or a checkpoint saved by a pruning run"))
    return Findings(errors=tuple(errors))


TECHNIQUE = register(Technique(
    name="prune", spec=Prune, title="Minitron pruning", check=check, needs_te_spec=True,
    executors={"megatron": "modelopt_typed_recipes.runtime.megatron.steps:prune"},
))
