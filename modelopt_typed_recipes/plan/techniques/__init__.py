"""One registry keyed by stage class: each technique declares its spec class, its checks and one executor
per backend (a handler table keyed by type, as torchao's ``register_quantize_module_handler`` is).

Adding a technique is a spec class (``spec/techniques.py``, in the ``Stage`` union), one module here that
registers a :class:`Technique`, and one executor per backend that runs it. Nothing outside this registry
dispatches on stage classes: the planner asks :func:`technique_for` for the checks, the backends for
their executor (imported only when a run needs it, so planning never imports torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from ...errors import CompatibilityError, RecipeError, SpecError

if TYPE_CHECKING:
    from ...bridges.modelopt_names import ComposedConfig
    from ...spec.arch import ModelArch
    from ...spec.layout import ParallelLayout
    from ...spec.recipe import Recipe
    from ..backend_choice import BackendName
    from ..coverage import Coverage
    from ..environment import Environment

S = TypeVar("S")

BACKEND_TITLES: dict[str, str] = {"megatron": "Megatron-Core", "hf": "Hugging Face"}


@attrs.frozen(kw_only=True)
class StageContext:
    """What a technique's check may look at: the recipe, the stage's place, model, layout and machine."""

    recipe: Recipe
    index: int
    arch: ModelArch
    """The architecture this stage starts from."""
    archs: tuple[ModelArch, ...]
    """The architecture every stage starts from (a prune stage changes it for later stages)."""
    backend: BackendName
    env: Environment
    cuda: bool
    """Whether the run has a CUDA device."""
    layout: ParallelLayout | None = None
    """The stage's own layout (Megatron-Core backend), or None."""

    @property
    def path(self) -> str:
        return f"stages[{self.index}]"

    @property
    def megatron(self) -> bool:
        return self.backend == "megatron"


@attrs.frozen(kw_only=True)
class Findings:
    """What a technique's check found out about one stage: problems, notes and what the run will use."""

    errors: tuple[RecipeError, ...] = ()
    warnings: tuple[str, ...] = ()
    coverage: Coverage | None = None
    config_source: str | None = None
    """The ModelOpt preset or recipe the stage uses."""
    quant_config: ComposedConfig | None = None
    """The composed ModelOpt quantize config (Quantize stages), composed here once for the run."""
    memory: dict[str, object] | None = None
    """The stage's per-rank memory plan (``plan.memory``'s summary), for techniques that estimate one."""


def _no_cuda_problem(_stage: object, _path: str) -> RecipeError | None:
    return None


def _no_environment_problem(_stage: object, _env: Environment, _path: str) -> RecipeError | None:
    return None


@attrs.frozen(kw_only=True)
class Technique(Generic[S]):
    """A post-training technique: its spec class, checks and executors by backend."""

    name: str
    """The one name everywhere: the spec's ``technique`` tag, the plan rules' and the CLI's stage name."""
    spec: type[S]
    title: str
    """How messages name it (``Minitron pruning``)."""
    check: Callable[[S, StageContext], Findings]
    """Every problem of a stage on a backend and machine, without building anything."""
    executors: Mapping[str, str]
    """Backend name -> ``module:function`` that runs the stage (imported lazily)."""
    needs_te_spec: bool = False
    """Whether the Megatron-Core model must be built with the full Transformer Engine layer spec."""
    calibrates: bool = True
    """Whether the stage reads calibration windows (its spec may set ``calibration_samples``)."""
    cuda_problem: Callable[[S, str], RecipeError | None] = _no_cuda_problem
    """Why the stage cannot run on the CPU (fake-quant kernels that exist only for CUDA), or None."""
    environment_problem: Callable[[S, Environment, str], RecipeError | None] = _no_environment_problem
    """Why the stage cannot run with what this machine has installed (auto-quantize: pulp's CBC solver), or
    None. ``check_recipe`` (so the ``check`` command) and ``run_post_training`` both ask it, before any model."""

    def runs_on(self, backend: str) -> bool:
        return backend in self.executors

    def backend_problem(self, backend: str, path: str) -> RecipeError | None:
        """A CompatibilityError when ``backend`` has no executor for this technique."""
        if self.runs_on(backend):
            return None
        others = [b for b in self.executors if b != backend]
        where = " and ".join(BACKEND_TITLES.get(b, b) for b in others)
        return CompatibilityError(f"{self.title} runs on the {where} backend only", path=path,
                                  hint=f"backend: {others[0]}" if others else "")

    def executor(self, backend: str) -> Callable[..., Any]:
        """The function that runs this technique on ``backend`` (imports the backend's module)."""
        problem = self.backend_problem(backend, "backend")
        if problem is not None:
            raise problem
        module, _, attr = self.executors[backend].partition(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        return fn


_BY_CLASS: dict[type, Technique[Any]] = {}
_BY_NAME: dict[str, Technique[Any]] = {}


def register(technique: Technique[S]) -> Technique[S]:
    """Add a technique (one per spec class and name)."""
    if technique.spec in _BY_CLASS or technique.name in _BY_NAME:
        raise ValueError(f"technique {technique.name!r} ({technique.spec.__name__}) is registered already")
    _BY_CLASS[technique.spec] = technique
    _BY_NAME[technique.name] = technique
    return technique


def technique_for(stage: S) -> Technique[S]:
    """The registered technique of a stage object."""
    try:
        return _BY_CLASS[type(stage)]
    except KeyError:
        raise SpecError(f"no technique is registered for {type(stage).__name__}",
                        hint="register a plan.techniques.Technique for it") from None


def technique_named(name: str) -> Technique[Any]:
    return _BY_NAME[name]


def names() -> tuple[str, ...]:
    """Registered technique names, in registration order."""
    return tuple(_BY_NAME)


def _register_builtin() -> None:
    """Import every module of this package: each registers its technique (a new one needs no edit here)."""
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: _ORDER.get(m.name, len(_ORDER))):
        importlib.import_module(f"{__name__}.{info.name}")


_ORDER = {"quantize": 0, "auto_quantize": 1, "prune": 2, "distill": 3, "export": 4}
"""Registration order of the built-in techniques (the order ``names()`` lists them in)."""

_register_builtin()
