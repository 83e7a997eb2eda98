"""``deterministic: true``: the recipe field, the environment check, and what a run really switches on.

Why it exists: Megatron-Core's MoE un-permutation sums the experts' outputs with ``scatter_add_`` (a CUDA
kernel whose order of additions varies) unless PyTorch's deterministic algorithms are on; two runs of one MoE
calibration then gave different activation scales on two H200s (issue 9). The GPU proof is a benchmark call;
here: the field, the refusal of a non-deterministic environment, the settings inside a real run on both
backends (the Megatron-Core MoE path taking ``index_add_``), and the default run left as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.errors import CompatibilityError, SpecError
from modelopt_typed_recipes.plan import determinism as plan_det
from modelopt_typed_recipes.spec.recipe import Recipe
from modelopt_typed_recipes.spec.serde import apply_overrides, from_dict, to_dict

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "reference-fp8.yaml"
ENV_NAMES = tuple(plan_det.ENV)


def doc(**changes: object) -> dict:
    return {"model": "reference-llama", "source": {"type": "builtin"}, "backend": "hf", "device": "cpu",
            "stages": [{"technique": "quantize", "format": "fp8"}],
            "calibration": {"dataset": "reference-train", "num_samples": 4, "seq_length": 32, "batch_size": 4},
            "output_dir": "out", **changes}


@pytest.fixture
def clean_env(monkeypatch):
    """No determinism variable set by the machine running the tests."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- the field
def test_default_is_off_and_the_field_round_trips_through_yaml_python_and_set(tmp_path):
    r = from_dict(doc(), Recipe)
    assert r.deterministic is False and to_dict(r)["deterministic"] is False
    on = apply_overrides(r, ["deterministic=true"])  # the CLI's --set
    assert on.deterministic is True and on.content_hash() != r.content_hash()  # never reuses the other's output
    path = tmp_path / "r.yaml"
    path.write_text(on.to_yaml())
    assert Recipe.load(path) == attrs.evolve(on, name="r")
    from modelopt_typed_recipes.spec.recipe import Builtin
    from modelopt_typed_recipes.spec.techniques import Quantize

    py = dict(model="reference-llama", source=Builtin(), stages=(Quantize(format="fp8"),), output_dir="out")
    assert Recipe(**py, deterministic=True).deterministic and not Recipe(**py).deterministic  # Python
    with pytest.raises(SpecError, match="deterministic"):
        Recipe(**py, deterministic="yes")


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.integers(), st.text(max_size=8), st.floats(allow_nan=False), st.none(), st.lists(st.booleans())))
def test_anything_but_a_bool_is_a_typed_error_naming_the_field(value):
    with pytest.raises(SpecError) as err:
        from_dict(doc(deterministic=value), Recipe)
    assert err.value.path == "deterministic"


@settings(max_examples=40, deadline=None)
@given(st.booleans())
def test_yaml_round_trip_keeps_the_value(value):
    r = from_dict(doc(deterministic=value), Recipe)
    assert from_dict(to_dict(r), Recipe) == r and r.deterministic is value


# --------------------------------------------------------------------------- the environment check
@pytest.mark.parametrize(("name", "value", "ok"), [
    ("CUBLAS_WORKSPACE_CONFIG", ":4096:8", True), ("CUBLAS_WORKSPACE_CONFIG", ":16:8", True),
    ("CUBLAS_WORKSPACE_CONFIG", ":0:0", False), ("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "1", False),
    ("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0", True), ("NCCL_ALGO", "Tree", False), ("NCCL_ALGO", "Ring,^NVLS", True),
    ("NCCL_ALGO", ",", False)])
def test_check_refuses_an_environment_that_would_make_runs_vary(clean_env, monkeypatch, name, value, ok):
    from modelopt_typed_recipes.plan.check import check_recipe

    monkeypatch.setenv(name, value)
    plan = check_recipe(from_dict(doc(deterministic=True), Recipe))
    found = [e for e in plan.errors if e.path == "deterministic"]
    if ok:
        assert found == []
        assert name not in plan_det.env_to_set(os.environ)  # the user's accepted value stays
    else:
        [err] = found
        assert isinstance(err, CompatibilityError) and name in err.message and "unset it" in err.hint
    assert [e for e in check_recipe(from_dict(doc(), Recipe)).errors if e.path == "deterministic"] == []


# --------------------------------------------------------------------------- a run, Hugging Face backend
def _spy_inside(monkeypatch, module: str) -> list[dict]:
    """What the backend's ``run`` sees: PyTorch's switch and the environment, in the process that runs."""
    import importlib

    backend = importlib.import_module(module)
    seen: list[dict] = []
    real = backend.run

    def run(recipe, plan):
        import torch

        seen.append({"torch": torch.are_deterministic_algorithms_enabled(),
                     "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
                     "env": {k: os.environ.get(k) for k in ENV_NAMES}})
        return real(recipe, plan)

    monkeypatch.setattr(backend, "run", run)
    return seen


def test_hf_run_is_deterministic_inside_and_says_so_and_the_default_run_is_unchanged(tmp_path, clean_env,
                                                                                       monkeypatch):
    import torch

    from modelopt_typed_recipes.runtime import api

    seen = _spy_inside(monkeypatch, "modelopt_typed_recipes.runtime.hf.backend")
    result = api.run_post_training(doc(deterministic=True, output_dir=str(tmp_path / "on")), progress=False)
    assert seen[-1] == {"torch": True, "warn_only": True, "env": plan_det.ENV}
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text())
    assert manifest["recipe"]["deterministic"] is True and result.deterministic
    facts = manifest["determinism"]
    assert facts["requested"] and facts["torch_deterministic_algorithms"] and facts["warn_only"]
    assert facts["env"] == plan_det.ENV and facts["env_set_by_run"] == sorted(plan_det.ENV)
    assert facts["nondeterministic_ops"] == []  # the CPU kernels this run used are all deterministic
    assert manifest["result"]["determinism"] == facts
    # afterwards the process is as before (a notebook keeps its own settings)
    assert not torch.are_deterministic_algorithms_enabled() and not any(k in os.environ for k in ENV_NAMES)

    result = api.run_post_training(doc(output_dir=str(tmp_path / "off")), progress=False)
    assert seen[-1] == {"torch": False, "warn_only": False, "env": dict.fromkeys(ENV_NAMES)}
    assert not result.deterministic and result.determinism["requested"] is False
    assert result.determinism["env_set_by_run"] == [] and result.determinism["torch_deterministic_algorithms"] is False


def test_a_kept_user_setting_is_not_removed_and_a_warned_op_is_reported(clean_env, monkeypatch):
    """A variable the user set stays after the run; an op PyTorch ran without a deterministic kernel (it warns
    under warn_only, as CUDA's ``scatter_add_`` does) is named in the record and the notes, not printed."""
    import warnings

    from modelopt_typed_recipes.runtime import determinism

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with determinism.applied(True) as state:
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and os.environ["NCCL_ALGO"] == "Ring"
        for _ in range(3):  # as PyTorch words it, on every call of the op
            warnings.warn("scatter_add_cuda_kernel does not have a deterministic implementation, but you set "
                          "'torch.use_deterministic_algorithms(True, warn_only=True)'.", UserWarning, stacklevel=1)
        facts = state.facts()
    assert facts["nondeterministic_ops"] == ["scatter_add_cuda_kernel"] and facts["env_set_by_run"] == [
        "NCCL_ALGO", "NVTE_ALLOW_NONDETERMINISTIC_ALGO"]
    assert "scatter_add_cuda_kernel" in " ".join(determinism.notes(state))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and "NCCL_ALGO" not in os.environ
    with determinism.applied(False) as state:  # the default run touches nothing
        assert "NCCL_ALGO" not in os.environ and state.facts()["requested"] is False


def test_cli_set_deterministic_true(tmp_path, clean_env):
    """``--set deterministic=true`` on the README's example: the run's JSON and manifest record it."""
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", "run", str(EXAMPLE), "--json",
                           "--set", f"output_dir={out}", "--set", "deterministic=true",
                           "--set", "calibration.num_samples=4", "--set", "evaluation.num_samples=4"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["determinism"]["requested"] and got["determinism"]["torch_deterministic_algorithms"]
    assert json.loads((out / "manifest.json").read_text())["determinism"]["env"] == plan_det.ENV


# --------------------------------------------------------------------------- Megatron-Core
def test_megatron_config_follows_the_recipe():
    pytest.importorskip("megatron.core")
    from modelopt_typed_recipes.catalog import get_arch
    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    arch = get_arch("tiny-moe")
    assert build.transformer_config(arch, ParallelLayout(), deterministic=True).deterministic_mode is True
    assert build.transformer_config(arch, ParallelLayout()).deterministic_mode is False


@pytest.mark.parametrize("deterministic", [True, False])
def test_megatron_moe_run_takes_the_deterministic_unpermutation(tmp_path, clean_env, monkeypatch, deterministic):
    """A real Megatron-Core MoE calibration (tiny-moe, random weights, FP8) through ``run_post_training`` on the
    CPU: with ``deterministic: true`` the model is built with ``deterministic_mode`` and Megatron-Core's
    un-permutation sums the experts' outputs with ``index_add_``; by default it takes ``scatter_add_`` (the
    CUDA kernel whose order varies), and nothing is switched on."""
    pytest.importorskip("megatron.core")
    import torch

    from _dist import init_gloo_world
    from megatron_cpu_shim import megatron_on_cpu
    from modelopt_typed_recipes.plan import environment
    from modelopt_typed_recipes.runtime import api, distributed
    from modelopt_typed_recipes.runtime.megatron import build
    from modelopt_typed_recipes.spec.layout import ParallelLayout

    env = environment.Environment(megatron_core="0.16.1", modelopt="0.47.0", cuda=True, gpu_count=1)
    monkeypatch.setattr(environment.Environment, "detect", classmethod(lambda cls: env))
    real_plan = api.plan_run
    monkeypatch.setattr(api, "plan_run", lambda *a, **k: attrs.evolve(real_plan(*a, **k), device="cpu", dtype="fp32"))
    built: list[bool] = []
    real_build = build.build_model

    def build_model(*a, **k):
        model = real_build(*a, **k)
        built.append(model.config.deterministic_mode)
        return model

    monkeypatch.setattr(build, "build_model", build_model)
    calls = {"index_add_": 0, "scatter_add_": 0}
    for name in calls:
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            if sys._getframe(1).f_code.co_filename.endswith("moe_utils.py"):
                calls[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    seen = _spy_inside(monkeypatch, "modelopt_typed_recipes.runtime.megatron.backend")
    init_gloo_world()
    distributed.set_layout(ParallelLayout(), device="cpu")
    from megatron.core.transformer.moe import moe_utils

    # megatron-core 0.16's router names Transformer Engine's GEMM even where TE is absent (a NameError on this
    # machine); None is what its own code checks for, and picks torch's matrix product
    monkeypatch.setattr(moe_utils, "te_general_gemm", None, raising=False)
    r = {"model": "tiny-moe", "source": {"type": "random", "seed": 0}, "backend": "megatron", "device": "cuda",
         "stages": [{"technique": "quantize", "format": "fp8"}], "deterministic": deterministic,
         "calibration": {"dataset": "reference-train", "num_samples": 4, "seq_length": 32, "batch_size": 2},
         "output_dir": str(tmp_path / "out")}
    with megatron_on_cpu():
        result = api.run_post_training(r, progress=False)
    assert built == [deterministic] and seen[-1]["torch"] is deterministic
    if deterministic:
        assert calls["index_add_"] > 0 and calls["scatter_add_"] == 0
        assert seen[-1]["env"] == plan_det.ENV and result.deterministic
    else:
        assert calls["scatter_add_"] > 0 and calls["index_add_"] == 0
        assert seen[-1]["env"] == dict.fromkeys(ENV_NAMES) and not result.deterministic
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["determinism"]["requested"] is deterministic
