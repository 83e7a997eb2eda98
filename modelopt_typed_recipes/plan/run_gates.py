"""What a run would stop on late, said by ``check`` before any model is built (issue 17), where it is no
technique's or source's own check: data files, and the architectures the Megatron-Core builder refuses.

Each function mirrors a refusal that the runtime raises only after loading libraries or building the model
(its place is named in the docstring); the runtime keeps its own refusal as the last guard.
"""

from __future__ import annotations

from ..errors import CompatibilityError, DataError, RecipeError
from ..spec.arch import ModelArch
from ..spec.recipe import Recipe, TextData
from .outputs import user_path

MEGATRON_ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh", "gelu", "gelu_tanh", "squared_relu")
"""Activations ``megatron/build.transformer_config`` maps to Megatron-Core (a test keeps the two in step)."""

def data_problems(recipe: Recipe) -> list[RecipeError]:
    """Calibration/evaluation files that are not there (``runtime/data.read_documents``)."""
    out: list[RecipeError] = []
    for field, data in (("calibration", recipe.calibration), ("evaluation", recipe.evaluation)):
        if not isinstance(data, TextData):
            continue
        for i, name in enumerate(data.files):
            try:
                p = user_path(name, path=f"{field}.files[{i}]")
            except RecipeError as err:
                out.append(err)
                continue
            if not p.is_file():
                out.append(DataError(f"{name[:300]!r} does not exist or is not a file", path=f"{field}.files[{i}]",
                                     hint="point at .txt or .jsonl files on this machine"))
    return out


def megatron_build_problems(arch: ModelArch) -> list[RecipeError]:
    """Architectures the Megatron-Core backend's model builder refuses (``megatron/build.transformer_config``
    and ``build_model``), which it reaches only after distributed set-up."""
    out: list[RecipeError] = []
    if arch.mamba is not None:
        out.append(CompatibilityError("hybrid (Mamba) models are not built by the Megatron-Core backend yet",
                                      path="model", hint="use a dense, MoE or MLA architecture"))
    if arch.quirks.gpt_oss:
        out.append(CompatibilityError(
            "gpt-oss needs Megatron-LM's gpt-oss code path, which megatron-core does not ship", path="model"))
    if arch.activation.type not in MEGATRON_ACTIVATIONS:
        out.append(CompatibilityError(f"activation {arch.activation.type!r} is not supported by the Megatron-Core "
                                      "backend", path="model.activation.type"))
    scaling = arch.position.scaling if arch.position is not None else None
    if scaling is not None and scaling.type != "llama3":
        out.append(CompatibilityError(f"RoPE scaling {scaling.type!r} is not mapped for Megatron-Core's GPTModel yet",
                                      path="model.position.scaling"))
    return out
