"""The built-in architectures, one module per family. Each entry cites its source and documents
every place where it deliberately differs from the seed's ``conf/`` file (see ``_seed.py``)."""

from __future__ import annotations

from ...spec.arch import ModelArch

FAMILY_MODULES = ("llama", "qwen", "deepseek", "kimi", "nemotron", "gpt_oss", "mixtral", "gptneox", "reference")


def all_models() -> list[ModelArch]:
    import importlib

    out: list[ModelArch] = []
    for name in FAMILY_MODULES:
        out.extend(importlib.import_module(f"{__name__}.{name}").MODELS)
    from ..tiny import TINY_MODELS

    out.extend(TINY_MODELS)
    return out
