"""The technique registry: one entry per stage class, its checks and executors; a new technique plugs in
without touching the planner or the backends' loops."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import ClassVar, Literal

import attrs
import pytest

from modelopt_typed_recipes.errors import CompatibilityError, SpecError
from modelopt_typed_recipes.plan import techniques as T
from modelopt_typed_recipes.plan.check import Environment, check_recipe
from modelopt_typed_recipes.spec.arch import ModelArch
from modelopt_typed_recipes.spec.recipe import RandomInit, Recipe
from modelopt_typed_recipes.spec.techniques import STAGE_TYPES, Export, Prune, Quantize

ROOT = Path(__file__).resolve().parents[1]
GPU = Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=1, transformer_engine=True)


def test_every_stage_class_has_one_technique_with_its_one_name() -> None:
    for cls in STAGE_TYPES:
        tech = T._BY_CLASS[cls]
        assert tech.spec is cls
        assert tech.name == attrs.fields_dict(cls)["technique"].default  # recipes, plan rules and CLI agree
    assert T.names() == ("quantize", "auto_quantize", "prune", "distill", "export")


def test_every_executor_resolves() -> None:
    for name in T.names():
        tech = T.technique_named(name)
        for backend in tech.executors:
            assert callable(tech.executor(backend)), (name, backend)


def test_a_technique_without_an_executor_is_refused_by_name() -> None:
    with pytest.raises(CompatibilityError, match="Minitron pruning runs on the Megatron-Core backend only"):
        T.technique_for(Prune(num_layers=1)).executor("hf")
    rec = Recipe(model="tiny-dense", source=RandomInit(), stages=(Prune(num_layers=1),), output_dir="/tmp/x",
                 backend="hf")
    errors = check_recipe(rec, env=GPU).errors
    assert [(type(e).__name__, e.path, e.hint) for e in errors] == [("CompatibilityError", "stages[0]",
                                                                    "backend: megatron")]


@attrs.frozen(kw_only=True)
class Sparsify:
    """A stand-in for a new technique: only its spec class and its registration below."""

    quantizes: ClassVar[bool] = False
    must_come_before_quantization: ClassVar[bool] = True
    must_be_last: ClassVar[bool] = False
    needs_cuda: ClassVar[bool] = False

    technique: Literal["sparsify"] = "sparsify"
    steps: int = 10
    calibration_samples: int | None = None

    def arch_after(self, arch: ModelArch) -> ModelArch:
        return arch

    @property
    def label(self) -> str:
        return f"sparsify-{self.steps}"


def _check_sparsify(stage: Sparsify, ctx: T.StageContext) -> T.Findings:
    if stage.steps > 100:
        return T.Findings(errors=(SpecError("too many steps for this test", path=f"{ctx.path}.steps"),))
    return T.Findings(warnings=(f"{ctx.path}: sparsifying {ctx.arch.name}",))


def test_a_new_technique_plugs_into_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    tech = T.Technique(name="sparsify", spec=Sparsify, title="sparsity", check=_check_sparsify,
                       executors={"megatron": "builtins:print"})
    monkeypatch.setitem(T._BY_CLASS, Sparsify, tech)
    monkeypatch.setitem(T._BY_NAME, "sparsify", tech)
    rec = Recipe(model="tiny-dense", source=RandomInit(), stages=(Sparsify(), Quantize(format="fp8"), Export()),  # type: ignore[arg-type]
                 output_dir="/tmp/x", backend="megatron")
    plan = check_recipe(rec, env=GPU)
    assert plan.ok, plan.errors
    first = plan.stages[0]
    assert (first.technique, first.label, first.layout is not None) == ("sparsify", "sparsify-10", True)
    assert first.calibration is not None and first.calibration.num_samples == rec.calibration.num_samples
    assert "stages[0]: sparsifying tiny-dense" in plan.warnings
    bad = check_recipe(attrs.evolve(rec, stages=(Sparsify(steps=1000),)), env=GPU)
    assert [e.path for e in bad.errors] == ["stages[0].steps"]
    hf = check_recipe(attrs.evolve(rec, backend="hf", stages=(Sparsify(),)), env=GPU)
    assert [e.message for e in hf.errors] == ["sparsity runs on the Megatron-Core backend only"]


def test_no_isinstance_dispatch_on_stage_classes_outside_the_registry() -> None:
    names = {c.__name__ for c in STAGE_TYPES}
    found = []
    for path in sorted((ROOT / "modelopt_typed_recipes").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("modelopt_typed_recipes/spec/techniques.py", "modelopt_typed_recipes/plan/techniques/")):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                used = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if used & names:
                    found.append(f"{rel}:{node.lineno}")
    assert not found, found
