"""A post-training recipe: a model, where its weights come from, ordered stages, data, outputs, backend.

One ``Recipe`` drives both runtimes (Megatron-Core on GPUs, Hugging Face transformers anywhere). It is
plain frozen data: YAML in, YAML out, a content hash for the manifest. Checks that need the machine
(files exist, CUDA present, names known to the installed ModelOpt) run in the runtime's pre-flight,
before any model is built; checks that need only the recipe run here, at construction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import attrs

from ..errors import RecipeError, brief
from ._validate import current_schema, fail, non_empty_str, one_of, seed_range
from .arch import ModelArch
from .evaluation import Gate, Generate, Task
from .layout import ParallelLayout
from .serde import typed_fields

# the sources and text classes live in their own modules (a distillation stage names a teacher and training
# text too); importing them from here keeps working
from .sources import Builtin, HFCheckpoint, MegatronCheckpoint, RandomInit, Source  # noqa: F401
from .techniques import AutoQuantize, Export, Quantize, Stage
from .text import BUILTIN_DATASETS, TextData  # noqa: F401

SCHEMA_VERSION = 1

ArchResolver = Callable[[str], ModelArch]
"""Looks a registry name up (``catalog.get_arch``); injected so that ``spec/`` never imports the catalog."""

# When a run writes the model as a checkpoint (Megatron distributed checkpoint with ModelOpt state, or
# ModelOpt's state file on the Hugging Face backend); plan/save.py decides per stage.
SAVE_POLICIES: tuple[str, ...] = ("auto", "final", "all", "none")

AUTO_CPU_THREADS: Literal["auto"] = "auto"
MAX_CPU_THREADS = 4096
"""The largest ``cpu_threads`` a recipe may ask for (far above any node's cores; keeps a typo from asking PyTorch
for a billion threads)."""


def _cpu_threads(_inst: object, attr: attrs.Attribute, value: object) -> None:
    if value == AUTO_CPU_THREADS:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CPU_THREADS:
        raise fail(attr.name, f"must be 'auto' or a whole number of threads from 1 to {MAX_CPU_THREADS}, "
                              f"got {brief(value)}",
                   "cpu_threads: auto (this node's usable cores / its ranks), or e.g. cpu_threads: 8")



# --------------------------------------------------------------------------- the recipe
@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class Recipe:
    """Everything one post-training run needs, validated at construction."""

    name: str | None = None
    """A label for tables and manifests (defaults to the file name when loaded from YAML)."""
    model: str | ModelArch = attrs.field()
    """A registry name (``reference-llama``, ``Qwen/Qwen3-8B``) or an inline architecture."""
    source: Source
    stages: tuple[Stage, ...]
    calibration: TextData = TextData(dataset="reference-train")  # noqa: RUF009 - frozen: one shared default is safe
    evaluation: TextData | None = None
    """Held-out text for perplexity before and after; None skips the measurement."""
    tasks: tuple[Task, ...] = ()
    """Evaluation tasks (``next_sentence``, ``mmlu``, ``generate``), measured before and after the stages."""
    gate: Gate | None = None
    """Bars the compressed model must clear, or the run fails and writes nothing."""
    layout: ParallelLayout | None = None
    """Parallel layout of the Megatron-Core backend (None: one GPU); export re-plans its own."""
    output_dir: str = attrs.field(validator=non_empty_str)
    backend: Literal["auto", "megatron", "hf"] = attrs.field(
        default="auto", validator=one_of(["auto", "megatron", "hf"])
    )
    """``auto``: Megatron-Core when CUDA and megatron-core are present, else Hugging Face."""
    device: Literal["auto", "cpu", "cuda"] = attrs.field(default="auto", validator=one_of(["auto", "cpu", "cuda"]))
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = attrs.field(
        default="auto", validator=one_of(["auto", "fp32", "bf16", "fp16"])
    )
    """Compute dtype; ``auto``: fp32 on the CPU, bf16 on CUDA."""
    save: Literal["auto", "final", "all", "none"] = attrs.field(default="auto", validator=one_of(SAVE_POLICIES))
    """Which stages write their model as a checkpoint (stages hand the model over in memory otherwise):
    ``auto`` only what is needed to deploy or resume (the last quantize/prune/distill stage when no export follows
    it), ``final`` the last one even when an export follows, ``all`` every quantize/prune/distill stage, ``none``
    nothing. A stage's own ``save: true/false`` overrides it."""
    seed: int = attrs.field(default=1234, validator=seed_range)
    deterministic: bool = False
    """Bitwise reproducible runs: PyTorch's deterministic kernels, cuBLAS's fixed workspace and Megatron-Core's
    ``deterministic_mode``, as Megatron-LM's ``--deterministic-mode``. Without it two runs of one MoE calibration can
    differ in their activation scales (the experts' outputs are summed in a varying order). Slower;
    ``runtime/determinism.py`` says what changes."""
    cpu_threads: Literal["auto"] | int = attrs.field(default=AUTO_CPU_THREADS, validator=_cpu_threads)
    """CPU threads of each rank (``torch.set_num_threads``): ``auto`` = the cores this process may use / the ranks
    on this node, at least 1, where PyTorch's count is 1 (torchrun sets ``OMP_NUM_THREADS=1`` for every worker by
    itself) or above that share; a count in between is kept. Or a number. ModelOpt's Megatron export quantizes and packs the weights on the CPU, so this sets its speed.
    Speed only, the same bytes: not part of the content hash. ``plan/cpu_threads.py`` says why."""
    schema_version: int = attrs.field(default=SCHEMA_VERSION, validator=current_schema(SCHEMA_VERSION))

    @model.validator
    def _check_model(self, attr: attrs.Attribute, value: str | ModelArch) -> None:
        if isinstance(value, str):
            non_empty_str(self, attr, value)
        elif not isinstance(value, ModelArch):
            raise fail(attr.name, f"expected a registry name or an architecture, got {value!r}")

    def __attrs_post_init__(self) -> None:
        if not self.stages:
            raise fail("stages", "a recipe needs at least one stage", "e.g. stages: [{technique: quantize, format: fp8}]")
        seen_quant: int | None = None
        for i, stage in enumerate(self.stages):
            if stage.must_be_last and i != len(self.stages) - 1:
                raise fail(f"stages[{i}]", f"{stage.technique} must be the last stage")
            if stage.quantizes:
                if seen_quant is not None:
                    raise fail(
                        f"stages[{i}]",
                        f"stages[{seen_quant}] already quantizes the model; one quantization per recipe",
                        "write one recipe per format",
                    )
                seen_quant = i
            if stage.must_come_before_quantization and seen_quant is not None:
                raise fail(f"stages[{i}]", f"{stage.technique} before quantizing: it works on the unquantized model")
        if self.evaluation is not None and self.evaluation.dataset == "reference-train":
            raise fail("evaluation.dataset", "evaluating on the training split says little", "use reference-heldout")
        self._check_tasks()
        if self.layout is not None and self.layout.world_size > 1 and self.backend == "hf":
            raise fail("layout", "the Hugging Face backend runs in one process", "backend: megatron, or drop layout")
        if isinstance(self.source, Builtin) and isinstance(self.model, ModelArch):
            raise fail("source", "built-in weights belong to a registry model", "model: reference-llama")

    def _check_tasks(self) -> None:
        names: dict[str, int] = {}
        for i, task in enumerate(self.tasks):
            if task.name in names:
                raise fail(f"tasks[{i}].name", f"tasks[{names[task.name]}] is already named {task.name!r}",
                           "give each task its own name")
            names[task.name] = i
        if self.gate is None:
            return
        for field, name in self.gate.task_names():
            if name not in names:
                from ..errors import did_you_mean

                raise fail(f"gate.{field}.{name}", f"no task named {name!r} in tasks",
                           did_you_mean(name, names) or f"tasks: {', '.join(names) or 'none'}")
            task = self.tasks[names[name]]
            if isinstance(task, Generate) and not task.scored:
                raise fail(f"gate.{field}.{name}", "a generate task has an accuracy only with references",
                           f"add references to tasks[{names[name]}]")
        if self.gate.max_perplexity_change_pct is not None and self.evaluation is None:
            raise fail("gate.max_perplexity_change_pct", "the recipe measures no perplexity",
                       "add an evaluation block (e.g. {dataset: reference-heldout})")

    # ----------------------------------------------------------------- derived
    @property
    def label(self) -> str:
        return self.name or " + ".join(s.label for s in self.stages)

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name

    @property
    def quantization(self) -> Quantize | AutoQuantize | None:
        return next((s for s in self.stages if s.technique == "quantize" or s.technique == "auto_quantize"), None)

    @property
    def export(self) -> Export | None:
        last = self.stages[-1]
        return last if last.technique == "export" else None

    @property
    def needs_cuda(self) -> bool:
        """Whether some stage's formats need CUDA (NVFP4, MX) for their fake-quant forward."""
        return any(getattr(s, "needs_cuda", False) for s in self.stages)

    def resolved_arch(self, resolve: ArchResolver) -> ModelArch:
        """The architecture: the inline one, or ``resolve(name)`` (the registry's ``catalog.get_arch``, injected:
        ``spec/`` stays below the catalog); an unknown name fails at path ``model``."""
        if isinstance(self.model, ModelArch):
            return self.model
        try:
            return resolve(self.model)
        except RecipeError as err:
            raise type(err)(err.message, path="model", hint=err.hint) from None

    def archs_per_stage(self, resolve: ArchResolver) -> tuple[ModelArch, ...]:
        """The architecture each stage starts from: a prune stage's result feeds every later stage."""
        arch = self.resolved_arch(resolve)
        out = []
        for i, stage in enumerate(self.stages):
            out.append(arch)
            try:
                arch = stage.arch_after(arch)
            except RecipeError as err:
                raise err.under(f"stages[{i}]") from None
        return tuple(out)

    def final_arch(self, resolve: ArchResolver) -> ModelArch:
        return self.stages[-1].arch_after(self.archs_per_stage(resolve)[-1])

    # ----------------------------------------------------------------- serialisation
    def content_hash(self) -> str:
        """Of everything that decides the outputs; ``cpu_threads`` (speed only) is left out, so a run with
        another thread count finds this one's outputs."""
        from .serde import content_hash, to_dict

        data = to_dict(self)
        data.pop("cpu_threads", None)
        return content_hash(data)

    def to_yaml(self) -> str:
        from .serde import to_yaml

        return to_yaml(self)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a YAML/JSON recipe; a recipe without ``name`` is named after its file."""
        from .serde import load_file

        recipe = load_file(path, cls)
        return recipe if recipe.name else attrs.evolve(recipe, name=Path(path).stem)

    @classmethod
    def from_dict(cls, data: object) -> Recipe:
        from .serde import from_dict

        return from_dict(data, cls)
