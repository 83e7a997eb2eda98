"""Where a model's weights come from: a Hugging Face folder, a Megatron-Core checkpoint, random init or the
weights shipped with the package. A recipe's ``source`` is one; so is a distillation stage's named ``teacher``."""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs

from ._validate import non_empty_str, one_of, seed_range
from .serde import typed_fields


# --------------------------------------------------------------------------- where the weights come from
@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class HFCheckpoint:
    """A local Hugging Face checkpoint directory (``config.json`` + safetensors + tokenizer)."""

    type: Literal["hf"] = attrs.field(default="hf", validator=one_of(["hf"]))
    path: str = attrs.field(validator=non_empty_str)


@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class MegatronCheckpoint:
    """A Megatron-Core distributed checkpoint directory (optionally with ModelOpt state)."""

    type: Literal["megatron"] = attrs.field(default="megatron", validator=one_of(["megatron"]))
    path: str = attrs.field(validator=non_empty_str)
    hf_reference: str | None = None
    """HF directory or id holding the config and tokenizer that export and calibration need."""

    INFO_FILE: ClassVar[str] = "mtr_checkpoint.json"
    """Written beside the shards by this package: the layer spec the weights were saved with (read by
    ``plan.sources.saved_layer_spec``)."""
    LAYER_SPECS: ClassVar[tuple[str, ...]] = ("local", "modelopt", "te")
    """The layer specs an info file may name (``runtime.megatron.build.SPECS``)."""


@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class RandomInit:
    """Random weights from the architecture (tests and dry runs; never for real results)."""

    type: Literal["random"] = attrs.field(default="random", validator=one_of(["random"]))
    seed: int = attrs.field(default=0, validator=seed_range)


@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class Builtin:
    """Weights and tokenizer that ship inside this package (the ``reference-llama`` model)."""

    type: Literal["builtin"] = attrs.field(default="builtin", validator=one_of(["builtin"]))


Source = HFCheckpoint | MegatronCheckpoint | RandomInit | Builtin
