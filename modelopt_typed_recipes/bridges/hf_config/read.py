"""A Hugging Face ``config.json`` -> a validated :class:`ModelArch`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import SpecError
from ...spec.arch import ModelArch
from .access import ConfigReader, ConfigValueError, short_repr
from .json_file import read_config_json
from .model_types import BY_NAME, HFModelType, model_type

_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")

# ModelArch field path -> the config.json key it came from (so a validation error names the file's key)
_HF_KEY = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "attention.num_heads": "num_attention_heads",
    "moe.router_topk": "num_experts_per_tok",
    "moe.router_num_groups": "n_group",
    "moe.router_group_topk": "topk_group",
    "moe.layer_freq": "first_k_dense_replace",
}


def remote_code(config: Mapping[str, Any]) -> str | None:
    """Why loading this checkpoint would run its own code, or ``None`` when transformers' classes suffice.

    A ``config.json`` with ``auto_map`` ships modelling code; transformers needs it (and
    ``trust_remote_code``) only for a ``model_type`` it has no class for (Kimi-K2). The bridge never sets
    ``trust_remote_code`` by itself: running a checkpoint's code is the user's decision.
    """
    name = config.get("model_type")
    auto_map = config.get("auto_map")
    mapped = ", ".join(sorted(str(k) for k in auto_map)[:4]) if isinstance(auto_map, Mapping) else ""
    entry = BY_NAME.get(name) if isinstance(name, str) else None
    if entry is not None and entry.config_class is None:
        return f"transformers has no {name} model: only the checkpoint's own code builds it"
    if auto_map is not None:
        known = f"; transformers builds {name} with its own classes without it" if entry is not None else ""
        return f"config.json names the checkpoint's own code (auto_map: {short_repr(mapped)}){known}"
    return None


def _default_name(hf_id: str | None, config: Mapping[str, Any], t: HFModelType) -> str:
    source = hf_id or config.get("_name_or_path") or ""
    base = source.rstrip("/").rsplit("/", 1)[-1][:96] if isinstance(source, str) else ""
    name = "".join("-" if c.isspace() or c == ":" else c for c in base.lower()).strip("-")
    return name or f"hf-{t.name.replace('_', '-')}"


def from_hf_config(
    config: Mapping[str, Any],
    *,
    name: str | None = None,
    hf_id: str | None = None,
    trust_remote_code: bool = False,
) -> ModelArch:
    """A validated :class:`ModelArch` from a Hugging Face ``config.json`` dict.

    ``null`` values count as absent, and an absent optional key takes transformers' default for the model
    type (see :mod:`.model_types`). Llama-4's text model may sit under ``text_config``; errors there carry
    the ``text_config.`` prefix. Any problem is a :class:`SpecError` whose ``path`` is the config key.

    ``trust_remote_code`` is recorded on the result only when asked for; a config that ships its own
    code (``auto_map``) or that only its own code builds gets a note saying so (:func:`remote_code`).
    """
    if not isinstance(config, Mapping):
        raise SpecError(f"expected a mapping (the parsed config.json), got {type(config).__name__}")
    top = ConfigReader(config)
    t = model_type(top.str("model_type"), remote_code="auto_map" in config)
    reader = ConfigReader(config, defaults=t.defaults)
    if t.text_config and top.has("text_config"):
        reader = ConfigReader(top.dict("text_config"), "text_config.", defaults=t.defaults)
    if hf_id is None:
        source = config.get("_name_or_path")
        hf_id = source if isinstance(source, str) and _HF_ID.fullmatch(source) else None
    fields = t.read(reader, t)
    notes = [f"from Hugging Face config.json (model_type {t.name})", *fields.pop("_notes", [])]
    why = remote_code(config)
    if why is not None:
        asked = "trust_remote_code set as asked" if trust_remote_code else (
            "trust_remote_code left off (from-hf --trust-remote-code, or trust_remote_code=True, sets it)"
        )
        notes.append(f"{why}; {asked}")
    fields["seq_length"] = min(fields["max_position_embeddings"], 4096)
    try:
        return ModelArch(
            name=name or _default_name(hf_id, config, t),
            hf_id=hf_id,
            family=t.family,
            notes=tuple(notes),
            trust_remote_code=trust_remote_code,
            **fields,
        )
    except SpecError as err:
        key = _HF_KEY.get(err.path)
        raise ConfigValueError(err.message, path=reader.path(key) if key else err.path, hint=err.hint) from None


def load_hf_config(
    path: str | Path, *, name: str | None = None, hf_id: str | None = None, trust_remote_code: bool = False
) -> ModelArch:
    """:func:`from_hf_config` on a ``config.json`` file (or a checkpoint folder holding one), read with
    bounds (:func:`.json_file.read_config_json`)."""
    return from_hf_config(read_config_json(path), name=name, hf_id=hf_id, trust_remote_code=trust_remote_code)
