"""The built-in architectures, one module per family. Each entry cites its source and documents
every place where it deliberately differs from the seed's ``conf/`` file."""

from __future__ import annotations

from ...spec.arch import ModelArch


def all_models() -> list[ModelArch]:
    from . import llama

    return [*llama.MODELS]
