"""A transformers model and its tokenizer for a recipe: shipped weights, a local checkpoint, or random init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import CompatibilityError, SpecError
from ...spec.arch import ModelArch
from ...spec.recipe import RandomInit, Recipe
from ..data import random_init_tokenizer
from ..dtypes import torch_dtype


def hf_config_for(arch: ModelArch) -> dict[str, Any]:
    from ...bridges.hf_config import to_hf_config
    from ...errors import RecipeError

    try:
        return to_hf_config(arch)
    except RecipeError as err:
        raise CompatibilityError(f"transformers cannot build {arch.name}: {err}", path="model") from None


def load_model(recipe: Recipe, arch: ModelArch, folder: Path | None, *, device: str,
               dtype: str) -> tuple[Any, Any, Path | None]:
    """(model in eval mode on ``device``, tokenizer, checkpoint folder or None). ``folder``: the plan's
    ``weights_dir`` (None: random init from the architecture)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if folder is None:
        if not isinstance(recipe.source, RandomInit):
            raise CompatibilityError(
                "the Hugging Face backend reads Hugging Face checkpoints, not Megatron distributed checkpoints",
                path="source.type", hint="backend: megatron (on a GPU), or export the checkpoint to HF first")
        cfg = hf_config_for(arch)
        if arch.vocab.size < 257:
            raise SpecError(f"random init uses a byte tokenizer, which needs vocab.size >= 257 (got {arch.vocab.size})",
                            path="model.vocab.size")
        model_type = cfg.pop("model_type")
        config = AutoConfig.for_model(model_type, **cfg)
        # the reference tokenizer when the vocabulary holds its ids (its files then go into an export), else
        # bytes: the same windows as on Megatron-Core
        tokenizer: Any = random_init_tokenizer(arch.vocab.size)
        config.eos_token_id = tokenizer.eos_token_id
        torch.manual_seed(recipe.source.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    else:
        from ..data import load_tokenizer

        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(dtype))
        tokenizer = load_tokenizer(folder)
    model.to(device).eval()
    return model, tokenizer, folder


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
