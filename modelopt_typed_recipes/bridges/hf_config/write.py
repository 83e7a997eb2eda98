""":class:`ModelArch` -> a ``config.json`` dict that transformers builds (``AutoConfig.for_model(**cfg)``)."""

from __future__ import annotations

from typing import Any

from ...errors import SpecError
from ...spec.arch import DTYPE_NAMES, Attention, Llama3Scaling, ModelArch, RoPE, YarnScaling
from .diff import diff_hf_config
from .model_types import MODEL_TYPES, HFModelType


def _writer_entry(arch: ModelArch) -> HFModelType:
    for entry in MODEL_TYPES:
        if entry.write is not None and entry.chosen_for is not None and entry.chosen_for(arch):
            return entry
    raise SpecError("no transformers model type builds this architecture", path="")  # llama matches any


def hf_model_type(arch: ModelArch) -> str:
    """The transformers ``model_type`` that builds ``arch``: chosen by structure, in the table's order."""
    return _writer_entry(arch).name


def _hf_rope(pos: RoPE | None, entry: HFModelType) -> dict[str, Any]:
    if pos is None:
        return {}
    out: dict[str, Any] = {"rope_theta": pos.base}
    s = pos.scaling
    if isinstance(s, Llama3Scaling):
        out["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    elif isinstance(s, YarnScaling):
        yarn = {
            "rope_type": "yarn",
            "factor": s.factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
            "beta_fast": s.beta_fast,
            "beta_slow": s.beta_slow,
            "mscale": s.mscale,
            "mscale_all_dim": s.mscale_all_dim,
        }
        out["rope_scaling"] = {k: v for k, v in yarn.items() if v is not None}
    elif entry.rope_defaults.get("rope_type", "default") != "default":
        out["rope_scaling"] = {"rope_type": "default"}  # not the model type's default (gpt-oss: YaRN)
    return out


def to_hf_config(arch: ModelArch) -> dict[str, Any]:
    """A ``config.json`` dict for ``arch`` that transformers builds (``AutoConfig.for_model(**cfg)``).

    Supported: llama, qwen2, qwen3, qwen3_moe, mixtral, llama4_text, deepseek_v2/v3 (also Kimi-K2),
    gpt_oss, nemotron, nemotron_h, gpt_neox. The result is checked by reading it back: a field the
    chosen model type cannot express raises :class:`SpecError` naming that field, so
    ``from_hf_config(to_hf_config(a))`` always equals ``a`` up to :data:`.diff.DIFF_IGNORED`.
    """
    entry = _writer_entry(arch)
    if entry.write is None or entry.architecture is None:  # _writer_entry picks writers only
        raise SpecError(f"model type {entry.name} is read, never written", path="")
    att = arch.attention
    cfg: dict[str, Any] = {
        "architectures": [entry.architecture],
        "model_type": entry.name,
        "vocab_size": arch.vocab.size,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": att.num_heads,
        "max_position_embeddings": arch.max_position_embeddings,
        "tie_word_embeddings": arch.tie_embeddings,
        "dtype": DTYPE_NAMES[arch.params_dtype],
        "torch_dtype": DTYPE_NAMES[arch.params_dtype],
    }
    if isinstance(att, Attention):
        cfg["num_key_value_heads"] = att.query_groups
        cfg["head_dim"] = arch.head_dim
    cfg.update(_hf_rope(arch.position, entry))
    entry.write(arch, entry, cfg)
    # read it back: whatever the model type cannot express shows up as a difference
    try:
        diffs = diff_hf_config(arch, cfg)
    except SpecError as err:
        raise SpecError(
            f"cannot be written as a {entry.name} config.json: {err.message}", path=err.path, hint=err.hint
        ) from None
    if diffs:
        first = diffs[0]
        more = f" (and {len(diffs) - 1} more: {', '.join(d.path for d in diffs[1:4])})" if len(diffs) > 1 else ""
        raise SpecError(
            f"transformers' {entry.name} cannot express {first.ours!r} (it would read back as {first.theirs!r}){more}",
            path=first.path,
        )
    return cfg
