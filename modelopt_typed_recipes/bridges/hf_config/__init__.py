"""Hugging Face ``config.json`` <-> :class:`ModelArch`: read, compare and write.

One module per job: :mod:`.read` (``from_hf_config`` / ``load_hf_config``: the architecture facts of a
checkpoint's ``config.json``, read with bounds by :mod:`.json_file`), :mod:`.diff` (``diff_hf_config``:
where a registry entry disagrees with such a file) and :mod:`.write` (``to_hf_config``: a dict that
``transformers.AutoConfig.for_model(**cfg)`` accepts, so the CPU backend builds a real model of the same
shape). What differs between model types (key spellings, transformers' defaults, biases, activations,
which reader and writer) sits in one table, :data:`.model_types.MODEL_TYPES`. Pure translation: no
torch, no transformers here.

Mapping choices worth knowing: a key the file leaves out takes transformers' default for the model type
(GPT-NeoX rotates a quarter of each head, DeepSeek-V3 routes by sigmoid scores scaled by 2.5, DeepSeek-V2's
``q_lora_rank`` is 1536 unless the file says ``null``); ``gelu_new``, ``gelu_fast`` and ``gelu_pytorch_tanh``
are GELU's tanh approximation (``gelu_tanh``, Megatron's ``--openai-gelu``); ``attention.kv_channels`` is
left unset when ``head_dim`` equals ``hidden_size / num_attention_heads``; ``seq_length`` is
``min(max_position_embeddings, 4096)``; Nemotron-H has no position embedding (transformers' NemotronH
attention applies none, whatever ``rope_theta`` says); Llama-4's ``use_qk_norm`` is a weightless L2 norm
(``quirks.export_qk_l2_norm``); gpt-oss's clamped SwiGLU is Megatron's quick-GeGLU with offset 1 and clamp
``swiglu_limit``; DeepSeek's multi-token-prediction layers and Llama-4's chunked attention are noted, not
modelled (transformers builds neither); ``trust_remote_code`` is set only when the caller asks.
"""

from __future__ import annotations

from .diff import DIFF_IGNORED, FieldDiff, diff_hf_config
from .json_file import MAX_BYTES, MAX_DEPTH, MAX_INT_DIGITS, parse_config_json, read_config_json
from .model_types import HF_MODEL_TYPES, MODEL_TYPES, HFModelType
from .read import from_hf_config, load_hf_config, remote_code
from .write import hf_model_type, to_hf_config

__all__ = [
    "DIFF_IGNORED",
    "HF_MODEL_TYPES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MODEL_TYPES",
    "FieldDiff",
    "HFModelType",
    "diff_hf_config",
    "from_hf_config",
    "hf_model_type",
    "load_hf_config",
    "parse_config_json",
    "read_config_json",
    "remote_code",
    "to_hf_config",
]
