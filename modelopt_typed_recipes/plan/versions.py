"""Version and machine gates: what ModelOpt 0.47 and Megatron-Core need before a stage can run at all.

Each gate is a function returning the typed errors for one stage path, so the technique checks
(:mod:`.techniques`) and the backend choice (:mod:`.backend_choice`) state each requirement once.
"""

from __future__ import annotations

from ..errors import CompatibilityError, RecipeError
from .environment import Environment

MIN_MCORE_EXPORT = (0, 18)
MIN_MCORE_PRUNE = (0, 18)


def megatron_backend(env: Environment, *, cuda: bool) -> list[RecipeError]:
    """The Megatron-Core backend needs megatron-core and a CUDA device (its forward needs CUDA)."""
    out: list[RecipeError] = []
    if env.megatron_core is None:
        out.append(CompatibilityError("backend megatron needs megatron-core, which is not installed",
                                      path="backend", hint="pip install 'megatron-core>=0.16' or use backend: hf"))
    if not cuda:
        out.append(CompatibilityError("the Megatron-Core backend runs on CUDA GPUs (its forward needs CUDA)",
                                      path="backend", hint="use backend: hf on a machine without a GPU"))
    return out


def export_from_megatron(env: Environment, path: str) -> list[RecipeError]:
    if env.mcore_at_least(MIN_MCORE_EXPORT):
        return []
    return [CompatibilityError(
        f"export from Megatron-Core needs megatron-core >= 0.18 (ModelOpt 0.47 imports HybridModel); "
        f"installed: {env.megatron_core}", path=path, hint="pip install 'megatron-core>=0.18' (Python >= 3.12)")]


def minitron(env: Environment, path: str, *, cuda: bool) -> list[RecipeError]:
    """Minitron pruning: megatron-core >= 0.18, Transformer Engine, CUDA."""
    out: list[RecipeError] = []
    if not env.mcore_at_least(MIN_MCORE_PRUNE):
        out.append(CompatibilityError(
            f"Minitron pruning needs megatron-core >= 0.18 (ModelOpt 0.47's NAS plugin imports HybridModel); "
            f"installed: {env.megatron_core}", path=path, hint="pip install 'megatron-core>=0.18' (Python >= 3.12)"))
    if not env.transformer_engine:
        out.append(CompatibilityError(
            "Minitron pruning needs Transformer Engine (ModelOpt's mcore_minitron mode registers only with it)",
            path=path, hint="install transformer-engine[pytorch] matching your CUDA"))
    if not cuda:
        out.append(CompatibilityError("Minitron pruning needs a CUDA GPU", path=path))
    return out


def kv_cache_on_megatron(env: Environment, path: str, *, megatron: bool, detail: bool = True) -> list[RecipeError]:
    """KV-cache quantizers on Megatron-Core exist only with Transformer Engine attention."""
    if not megatron or env.transformer_engine:
        return []
    if detail:
        return [CompatibilityError(
            "KV-cache quantization on Megatron-Core needs Transformer Engine attention (TEDotProductAttention); "
            "with local attention ModelOpt's KV quantizers silently match nothing",
            path=path, hint="install Transformer Engine, or drop the KV-cache format")]
    return [CompatibilityError("KV-cache quantization on Megatron-Core needs Transformer Engine attention",
                               path=path, hint="drop kv_cache or install Transformer Engine")]
