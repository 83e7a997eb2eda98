"""The reference model that ships with the package: a small Llama trained on Python's own documentation.

Weights, tokenizer and the text splits live in ``modelopt_typed_recipes/data/reference/`` (made by
``scripts/train_reference.py``; figures in ``benchmarks/reference_training.md``). Shapes are legal for
Megatron-Core at tensor parallel 1 and 2 (heads 4, query groups 2, head dim 64) and the vocabulary needs
no padding (4096 = 32 x 128), so ModelOpt's HF importer loads the same weights into Megatron-Core.
"""

from __future__ import annotations

from pathlib import Path

from ...spec.arch import Attention, ModelArch, Norm, RoPE, Vocab

REFERENCE = ModelArch(
    name="reference-llama",
    family="llama",
    aliases=("reference",),
    num_layers=6,
    hidden_size=256,
    ffn_hidden_size=768,
    attention=Attention(num_heads=4, num_query_groups=2),
    position=RoPE(base=10000),
    norm=Norm(type="rmsnorm", epsilon=1e-5),
    vocab=Vocab(size=4096, padded_size=4096),
    tie_embeddings=False,
    seq_length=256,
    max_position_embeddings=1024,
    params_dtype="bf16",
    notes=(
        "trained by scripts/train_reference.py on pydoc_data.topics + standard-library docstrings",
        "weights and tokenizer ship with the package: source: {type: builtin}",
    ),
)

MODELS: list[ModelArch] = [REFERENCE]

# registry name -> folder (inside the package) holding config.json, model.safetensors and the tokenizer
BUILTIN_WEIGHTS: dict[str, str] = {"reference-llama": "data/reference"}


def builtin_weights_dir(name: str) -> Path | None:
    """The shipped Hugging Face checkpoint folder of a registry model, or None when it ships none."""
    rel = BUILTIN_WEIGHTS.get(name)
    return Path(__file__).resolve().parents[2] / rel if rel else None
