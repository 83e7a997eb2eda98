"""A transformers model and its tokenizer for a recipe: shipped weights, a local checkpoint, or random init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import CompatibilityError, SpecError
from ...spec.arch import ModelArch
from ...spec.recipe import RandomInit, Recipe
from ..dtypes import torch_dtype



class ByteTokenizer:
    """UTF-8 bytes as token ids (0-255) plus one end-of-text id (256): the tokenizer of random-init models.

    A random-init model has no trained tokenizer; bytes keep its data real text, deterministic and within
    any vocabulary of 257 or more entries.
    """

    eos_token_id = 256
    eos_token = "<|endoftext|>"

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(text, list):
            return {"input_ids": [list(t.encode("utf-8")) for t in text]}
        return {"input_ids": list(text.encode("utf-8"))}

    def save_pretrained(self, directory: str | Path) -> None:
        """Nothing to write: a byte tokenizer has no files (the manifest records it)."""


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
        config.eos_token_id = ByteTokenizer.eos_token_id
        torch.manual_seed(recipe.source.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
        tokenizer: Any = ByteTokenizer()
    else:
        from ..data import load_tokenizer

        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(dtype))
        tokenizer = load_tokenizer(folder)
    model.to(device).eval()
    return model, tokenizer, folder


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
