"""Which device and backend a recipe runs on: decided here only, for ``check`` and ``run_post_training`` alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ..errors import CompatibilityError, RecipeError

if TYPE_CHECKING:
    from ..spec.recipe import Recipe
    from .environment import Environment

BackendName = Literal["hf", "megatron"]
Device = Literal["cpu", "cuda"]
Dtype = Literal["fp32", "bf16", "fp16"]


def choose_device(recipe: Recipe, env: Environment) -> Device:
    """``device: auto``: CUDA when the machine has it, else the CPU."""
    if recipe.device == "cuda":
        return "cuda"
    if recipe.device == "cpu":
        return "cpu"
    return "cuda" if env.cuda else "cpu"


def device_problem(recipe: Recipe, env: Environment) -> RecipeError | None:
    """``device: cuda`` on a machine without CUDA."""
    if recipe.device == "cuda" and not env.cuda:
        return CompatibilityError("device: cuda, but this machine has no CUDA GPU", path="device",
                                  hint="use device: cpu (Hugging Face backend) or auto")
    return None


def choose_backend(recipe: Recipe, env: Environment) -> BackendName:
    """``backend: auto``: Megatron-Core when the run has a CUDA device and megatron-core is installed, else
    Hugging Face. An explicit backend is kept (its problems are reported by :func:`backend_problems`)."""
    if recipe.backend != "auto":
        return recipe.backend
    device = choose_device(recipe, env)
    return "megatron" if device == "cuda" and env.cuda and env.megatron_core else "hf"


def choose_dtype(recipe: Recipe, device: Device) -> Dtype:
    """``dtype: auto``: fp32 on the CPU, bf16 on CUDA."""
    if recipe.dtype != "auto":
        return recipe.dtype
    return "fp32" if device == "cpu" else "bf16"


def backend_problems(backend: BackendName, env: Environment, *, cuda: bool, world_size: int = 1) -> list[RecipeError]:
    """What the chosen backend needs from the machine and the launch (``world_size``: torchrun's WORLD_SIZE)."""
    if backend != "megatron":
        return [multi_rank_problem(world_size)] if world_size > 1 else []
    from . import versions

    return versions.megatron_backend(env, cuda=cuda)


def multi_rank_problem(world_size: int) -> RecipeError:
    """The Hugging Face backend under a launch of several processes: each would run the whole recipe (the same
    model, the same stages) into the one staging folder, so it is refused before any work."""
    return CompatibilityError(
        f"the Hugging Face backend runs a recipe in one process, but this launch has {world_size} processes "
        "(torchrun's WORLD_SIZE); each would run the whole recipe into the same output folder", path="backend",
        hint="start it as one process (python -m modelopt_typed_recipes run RECIPE, without torchrun), or set "
             "backend: megatron to spread the model over several GPUs")
