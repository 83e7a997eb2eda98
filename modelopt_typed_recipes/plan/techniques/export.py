"""Export (ModelOpt's unified Hugging Face checkpoint, or vLLM's fake-quant variant): its gates."""

from __future__ import annotations

from ...spec.techniques import Export
from . import Findings, StageContext, Technique, register


def check(stage: Export, ctx: StageContext) -> Findings:
    if not ctx.megatron:
        return Findings()
    from ...errors import SpecError
    from ...spec.recipe import MegatronCheckpoint
    from .. import versions

    errors = list(versions.export_from_megatron(ctx.env, ctx.path))
    src = ctx.recipe.source
    if isinstance(src, MegatronCheckpoint) and src.hf_reference is None:
        errors.append(SpecError(
            "export writes the source model's Hugging Face config and tokenizer, and a Megatron checkpoint has "
            "neither", path="source.hf_reference",
            hint="set source.hf_reference to the model's Hugging Face folder (config.json + tokenizer)"))
    return Findings(errors=tuple(errors))


TECHNIQUE = register(Technique(
    name="export", spec=Export, title="export", check=check, calibrates=False,
    executors={"hf": "modelopt_typed_recipes.runtime.hf.steps:export",
               "megatron": "modelopt_typed_recipes.runtime.megatron.steps:export"},
))
