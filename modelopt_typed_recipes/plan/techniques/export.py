"""Export (ModelOpt's unified Hugging Face checkpoint, or vLLM's fake-quant variant): its gates."""

from __future__ import annotations

from ...spec.techniques import Export
from . import Findings, StageContext, Technique, register


def check(stage: Export, ctx: StageContext) -> Findings:
    if not ctx.megatron:
        return Findings()
    from .. import versions

    return Findings(errors=tuple(versions.export_from_megatron(ctx.env, ctx.path)))


TECHNIQUE = register(Technique(
    name="export", spec=Export, title="export", check=check, calibrates=False,
    executors={"hf": "modelopt_typed_recipes.runtime.hf.steps:export",
               "megatron": "modelopt_typed_recipes.runtime.megatron.steps:export"},
))
