"""Named recipes: ``<model>:<technique>`` (``Qwen/Qwen3-8B:fp8``) -> stages plus the layouts to run them.

The seed spells these as a positional ``QUANT_CFG`` and environment variables per model (``EP=8`` for
Qwen3-30B-A3B, ``TP=8 ETP=1 EP=64`` and an export ``PP=16`` split 3/.../2 for Kimi-K2, quantize ``EP=4`` then
export ``PP=4`` for Nemotron-3); here each is one frozen entry. A named recipe is not yet a run: it has
no checkpoint or output folder; :meth:`NamedRecipe.to_recipe` adds those.

Listing and lookup go through the same :class:`Registry` as architectures, so downstream packages add
entries through the ``modelopt_typed_recipes.recipes`` entry-point group and users through
:func:`register`.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import SpecError, UnknownNameError
from ..spec.arch import ModelArch
from ..spec.layout import ParallelLayout
from ..spec.recipe import HFCheckpoint, Recipe, Source, TextData
from ..spec.techniques import AutoQuantize, Export, Prune, Quantize, Stage
from . import get_arch
from .registry import Registry


@attrs.frozen(kw_only=True)
class NamedRecipe:
    """A reusable recipe for one model: stages, the layout to quantize with and the one to export with."""

    name: str = attrs.field()
    """``<hf id or registry name>:<technique>``."""
    model: str
    """Registry name or HF id of the architecture."""
    technique: str
    """The part after ``:`` (``fp8``, ``auto-4.5bits``, ``prune-24-layers``)."""
    stages: tuple[Stage, ...]
    layout: ParallelLayout | None = None
    """Layout of the quantize/prune stage as the seed documents it (None: one GPU)."""
    export_layout: ParallelLayout | None = None
    """Layout of the export stage (None: the library re-plans it, pipeline only)."""
    description: str = ""
    source: str = ""
    """Where the layout comes from (seed file or CI config)."""

    @name.validator
    def _check_name(self, _a: attrs.Attribute, value: str) -> None:
        if ":" not in value or not value.split(":", 1)[1]:
            raise SpecError(f"named recipe {value!r} must be '<model>:<technique>'", path="name")

    @property
    def techniques(self) -> tuple[str, ...]:
        return tuple(s.technique for s in self.stages)

    def to_recipe(self, *, output_dir: str, source: Source | None = None, checkpoint: str | None = None,
                  calibration: TextData | None = None, **fields: Any) -> Recipe:
        """A runnable :class:`Recipe`: add the weights (``checkpoint`` = HF directory) and the output folder."""
        if source is None:
            if checkpoint is None:
                raise SpecError(f"{self.name} needs weights", path="source",
                                hint="to_recipe(checkpoint='/path/to/hf_dir', output_dir=...)")
            source = HFCheckpoint(path=checkpoint)
        kwargs: dict[str, Any] = dict(name=self.name, model=self.model, source=source, stages=self.stages,
                                      output_dir=output_dir, **fields)
        if calibration is not None:
            kwargs["calibration"] = calibration
        if self.layout is not None and "layout" not in fields:
            kwargs["layout"] = self.layout
        return Recipe(**kwargs)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "technique": self.technique,
            "stages": [s.label for s in self.stages],
            "layout": self.layout.short() if self.layout is not None else "1 GPU",
            "export_layout": self.export_layout.short() if self.export_layout is not None else None,
            "description": self.description,
        }


# --------------------------------------------------------------------------- built-in entries
_EXPORT = Export()


def _standard(model: str, *, layout: ParallelLayout | None = None, export_layout: ParallelLayout | None = None,
              prune_layers: int | None = None, source: str = "", int4: bool = True) -> list[NamedRecipe]:
    """fp8, nvfp4, (int4-awq), auto-4.5bits and (prune-N-layers) for one model."""
    common: dict[str, Any] = dict(model=model, layout=layout, export_layout=export_layout, source=source)
    out = [
        NamedRecipe(name=f"{model}:fp8", technique="fp8", stages=(Quantize(format="fp8"), _EXPORT),
                    description="FP8 E4M3 weights and activations, exported as a unified HF checkpoint", **common),
        NamedRecipe(name=f"{model}:nvfp4", technique="nvfp4", stages=(Quantize(format="nvfp4"), _EXPORT),
                    description="NVFP4 W4A4 (Blackwell kernels), exported as a unified HF checkpoint", **common),
        NamedRecipe(name=f"{model}:nvfp4-kv-fp8", technique="nvfp4-kv-fp8",
                    stages=(Quantize(recipe="general/ptq/nvfp4_default-kv_fp8_cast"), _EXPORT),
                    description="ModelOpt's built-in NVFP4 + FP8 KV-cache recipe (needs Transformer Engine)",
                    **common),
        NamedRecipe(
                    name=f"{model}:auto-4.5bits", technique="auto-4.5bits",
                    stages=(AutoQuantize(effective_bits=4.5, formats=("nvfp4_awq", "fp8")), _EXPORT),
                    description="per-layer NVFP4/FP8 search at 4.5 effective bits (auto-quantize needs PP=1)",
                    **common),
    ]
    if int4:
        out.append(NamedRecipe(name=f"{model}:int4-awq", technique="int4-awq", stages=(Quantize(format="int4_awq"),),
                               description="INT4 AWQ weights (block 128); kept as a Megatron checkpoint "
                                           "(ModelOpt's HF export does not write AWQ)", **common))
    if prune_layers is not None:
        out.append(NamedRecipe(name=f"{model}:prune-{prune_layers}-layers", technique=f"prune-{prune_layers}-layers",
                               stages=(Prune(num_layers=prune_layers), _EXPORT),
                               description=f"Minitron depth pruning to {prune_layers} layers (TP=1; needs "
                                           "Transformer Engine and megatron-core >= 0.18)", model=model,
                               layout=None, export_layout=export_layout, source=source))
    return out


def _builtin() -> list[NamedRecipe]:
    out: list[NamedRecipe] = []
    out += _standard("Qwen/Qwen3-8B", prune_layers=24, source="seed README: prune Qwen3-8B to 24 layers")
    out += _standard("Qwen/Qwen3-0.6B", prune_layers=20)
    out += _standard("meta-llama/Llama-3.2-1B-Instruct", prune_layers=12)
    out += _standard("meta-llama/Llama-3.1-8B-Instruct", prune_layers=24)
    out += _standard("Qwen/Qwen3-30B-A3B", layout=ParallelLayout(expert_parallel=8, data_parallel=8,
                                                                 expert_tensor_parallel=1),
                     source="ModelOpt launcher config Qwen3-30B-A3B: EP=8")
    out += _standard("moonshotai/Kimi-K2-Instruct",
                     layout=ParallelLayout(tensor_parallel=8, expert_tensor_parallel=1, expert_parallel=64,
                                           data_parallel=8),
                     export_layout=ParallelLayout(pipeline_parallel=16, first_stage_layers=3, last_stage_layers=2),
                     source="seed conf/moonshotai/kimi_k2_instruct{,_export}.sh: TP=8 ETP=1 EP=64; export PP=16 3/2",
                     int4=False)
    out += _standard("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
                     layout=ParallelLayout(expert_parallel=4, data_parallel=4, expert_tensor_parallel=1),
                     export_layout=ParallelLayout(pipeline_parallel=4),
                     source="ModelOpt launcher Nemotron-3 configs: quantize EP=4, export PP=4", int4=False)
    # the package's own small model: every format that runs on one GPU, and the CPU ones
    ref = "reference-llama"
    out += [
        NamedRecipe(name=f"{ref}:fp8", model=ref, technique="fp8", stages=(Quantize(format="fp8"), _EXPORT),
                    description="FP8 on the reference model (runs on the CPU too)"),
        NamedRecipe(name=f"{ref}:int4-awq", model=ref, technique="int4-awq", stages=(Quantize(format="int4_awq"),),
                    description="INT4-AWQ on the reference model (runs on the CPU too)"),
        NamedRecipe(name=f"{ref}:nvfp4", model=ref, technique="nvfp4", stages=(Quantize(format="nvfp4"), _EXPORT),
                    description="NVFP4 on the reference model (GPU)"),
        NamedRecipe(name=f"{ref}:auto-6bits", model=ref, technique="auto-6bits",
                    stages=(AutoQuantize(effective_bits=6.0, formats=("int4_awq", "fp8")),),
                    description="INT4-AWQ/FP8 search at 6 effective bits"),
    ]
    return out


def _keys(r: NamedRecipe) -> list[str]:
    keys = [r.name]
    # also reachable by the registry short name of the model (qwen3-8b:fp8)
    arch = _arch_or_none(r.model)
    if arch is None:
        return keys
    for alias in {arch.name, *(arch.aliases or ())}:
        key = f"{alias}:{r.technique}"
        if key.lower() != r.name.lower():
            keys.append(key)
    return keys


RECIPES: Registry[NamedRecipe] = Registry(
    "named recipe", keys=_keys, entry_point_group="modelopt_typed_recipes.recipes", loaders=[_builtin],
)


def get_recipe(name: str) -> NamedRecipe:
    """Look a named recipe up: ``Qwen/Qwen3-8B:fp8`` or ``qwen3-8b:fp8`` (any case)."""
    return RECIPES.get(name)


def register(recipe: NamedRecipe, *, replace: bool = False) -> NamedRecipe:
    """Add a user recipe; its name must be new unless ``replace``."""
    return RECIPES.register(recipe, replace=replace)


def list_recipes(*, model: str | None = None, technique: str | None = None) -> list[NamedRecipe]:
    """Named recipes, optionally for one model (HF id or registry name) and/or one technique
    (``fp8``, ``quantize``, ``auto_quantize``, ``prune``, ``export``; substring of the technique label)."""
    out = list(RECIPES)
    if model is not None:
        wanted = {model.lower()}
        arch = _arch_or_none(model)
        if arch is not None:
            wanted |= {arch.name.lower(), (arch.hf_id or "").lower()}
        out = [r for r in out if r.model.lower() in wanted or _arch_name(r.model) in wanted]
    if technique is not None:
        t = technique.lower().replace("_", "-")
        out = [r for r in out if t in r.technique.lower() or any(t == s.replace("_", "-") for s in r.techniques)]
    return out


def _arch_or_none(model: str) -> ModelArch | None:
    """The registry architecture of ``model``; None for one that another package registers later."""
    try:
        return get_arch(model)
    except UnknownNameError:
        return None


def _arch_name(model: str) -> str:
    arch = _arch_or_none(model)
    return arch.name.lower() if arch is not None else model.lower()
