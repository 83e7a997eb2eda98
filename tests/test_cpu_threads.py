"""``cpu_threads``: the recipe field, the one decision of how many CPU threads a rank uses, its effect in a run,
and the premise: ModelOpt's weight packing (which its Megatron exporter runs on the host) is spread over PyTorch's
threads and gives the same bytes at any thread count.

Why it exists: under ``torchrun --nproc-per-node=2`` torchrun sets ``OMP_NUM_THREADS=1`` for each worker, and a
qwen3-8b NVFP4 export at PP2 packed every weight with one thread per rank (194 s on two H200s; issue 9).
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

from modelopt_typed_recipes.errors import SpecError
from modelopt_typed_recipes.plan import cpu_threads as plan_threads
from modelopt_typed_recipes.spec.recipe import MAX_CPU_THREADS, Recipe
from modelopt_typed_recipes.spec.serde import apply_overrides, from_dict, to_dict, to_yaml

ROOT = Path(__file__).resolve().parents[1]


def doc(**changes: object) -> dict:
    return {"model": "reference-llama", "source": {"type": "builtin"}, "backend": "hf", "device": "cpu",
            "stages": [{"technique": "quantize", "format": "fp8"}],
            "calibration": {"dataset": "reference-train", "num_samples": 4, "seq_length": 32, "batch_size": 4},
            "output_dir": "out", **changes}


# --------------------------------------------------------------------------- the field
def test_default_is_auto_and_a_number_round_trips_through_yaml_python_and_set_without_changing_the_hash(tmp_path):
    r = from_dict(doc(), Recipe)
    assert r.cpu_threads == "auto" and to_dict(r)["cpu_threads"] == "auto"
    eight = apply_overrides(r, ["cpu_threads=8"])  # the CLI's --set
    assert eight.cpu_threads == 8
    f = tmp_path / "r.yaml"
    f.write_text(to_yaml(eight))
    assert Recipe.load(f).cpu_threads == 8 and "cpu_threads: 8" in f.read_text()
    assert Recipe(**{**doc(), "source": r.source, "stages": r.stages, "calibration": r.calibration},
                  cpu_threads=3).cpu_threads == 3  # Python
    # speed only: another thread count finds this recipe's outputs (and the hashes of earlier recipes hold)
    assert eight.content_hash() == r.content_hash() == apply_overrides(r, ["cpu_threads=auto"]).content_hash()


BAD = [0, -1, MAX_CPU_THREADS + 1, "many", "Auto", "8", "", True, False, 2.5, None, [2], {"threads": 2}]


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_a_bad_value_is_a_spec_error_naming_the_field_and_the_fix_from_yaml_and_python(value):
    with pytest.raises(SpecError) as err:
        from_dict(doc(cpu_threads=value), Recipe)
    assert err.value.path == "cpu_threads" and "cpu_threads: auto" in err.value.hint
    r = from_dict(doc(), Recipe)
    with pytest.raises(SpecError) as err:
        attrs.evolve(r, cpu_threads=value)
    assert err.value.path == "cpu_threads" and "cpu_threads: auto" in err.value.hint


def _bad_values():
    ints = st.integers().filter(lambda n: not 1 <= n <= MAX_CPU_THREADS)
    words = st.text(max_size=20).filter(lambda s: s != "auto")
    return st.one_of(ints, words, st.floats(allow_nan=True), st.booleans(), st.none(),
                     st.lists(st.integers(1, 8), max_size=3), st.dictionaries(st.text(max_size=5), st.integers()))


@settings(max_examples=60, deadline=None)
@given(value=_bad_values())
def test_random_bad_values_are_spec_errors(value):
    with pytest.raises(SpecError) as err:
        from_dict(doc(cpu_threads=value), Recipe)
    assert err.value.path == "cpu_threads"


# --------------------------------------------------------------------------- the decision
@pytest.mark.parametrize(("cores", "ranks", "threads"), [(32, 2, 16), (32, 1, 32), (16, 8, 2), (3, 2, 1), (1, 4, 1),
                                                         (2, 2, 1), (33, 2, 16)])
def test_auto_shares_the_usable_cores_between_the_ranks_of_the_node(cores, ranks, threads):
    c = plan_threads.choose("auto", cores=cores, ranks=ranks)
    assert (c.threads, c.usable_cores, c.local_ranks) == (threads, cores, ranks)
    assert c.reason.startswith(f"auto: {cores} usable cores / {ranks} rank")


@settings(max_examples=200, deadline=None)
@given(cores=st.integers(1, 4096), ranks=st.integers(1, 512))
def test_auto_never_asks_for_more_than_the_node_has_and_never_for_none(cores, ranks):
    t = plan_threads.choose("auto", cores=cores, ranks=ranks).threads
    assert t >= 1 and (t * ranks <= cores or t == 1)


@pytest.mark.parametrize(("current", "threads"), [(None, 16), (1, 16), (8, 8), (16, 16), (64, 16)])
def test_auto_keeps_pytorchs_own_count_within_the_share_and_raises_only_a_one(current, threads):
    """torchrun's one thread is raised to the share; a single process's default (physical cores, where the share
    counts hyperthreads) or a user's OMP_NUM_THREADS within the share is kept; more than the share is cut."""
    c = plan_threads.choose("auto", cores=32, ranks=2, current=current)
    assert c.threads == threads and c.reason.startswith("auto: 32 usable cores / 2 ranks")
    assert ("kept" in c.reason) == (current == 8)


@settings(max_examples=200, deadline=None)
@given(cores=st.integers(1, 4096), ranks=st.integers(1, 512), current=st.integers(1, 4096))
def test_auto_with_a_current_count_stays_within_the_share(cores, ranks, current):
    t = plan_threads.choose("auto", cores=cores, ranks=ranks, current=current).threads
    share = max(1, cores // ranks)
    assert 1 <= t <= share and (t == share or t == current)


def test_a_number_in_the_recipe_is_used_as_given_and_oversubscription_is_said():
    assert plan_threads.choose(8, cores=32, ranks=2).threads == 8
    c = plan_threads.choose(8, cores=4, ranks=2)
    assert c.threads == 8 and "oversubscribed" in c.reason


def test_the_ranks_come_from_torchrun_and_omp_num_threads_is_not_read(monkeypatch):
    assert plan_threads.local_ranks({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert plan_threads.local_ranks({}) == plan_threads.local_ranks({"LOCAL_WORLD_SIZE": "x"}) == 1
    assert plan_threads.local_ranks({"LOCAL_WORLD_SIZE": "0"}) == 1
    monkeypatch.setattr(plan_threads, "usable_cores", lambda: 32)
    # torchrun's own OMP_NUM_THREADS=1 (it cannot be told from a user's) does not decide: the cores and ranks do
    assert plan_threads.for_this_process("auto", {"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}).threads == 16
    assert plan_threads.for_this_process(1, {"LOCAL_WORLD_SIZE": "2"}).threads == 1  # asked for: one


def test_usable_cores_follow_the_affinity_and_a_cgroup_quota(monkeypatch, tmp_path):
    assert plan_threads.cgroup_cores("max 100000") is None
    assert plan_threads.cgroup_cores("400000 100000") == 4
    assert plan_threads.cgroup_cores("150000 100000") == 2  # a part of a core still runs a thread
    assert plan_threads.cgroup_cores("") is plan_threads.cgroup_cores("garbage") is None
    assert plan_threads.cgroup_cores("0 100000") is None
    quota = tmp_path / "cpu.max"
    quota.write_text("100000 100000\n")
    monkeypatch.setattr(plan_threads, "CGROUP_CPU_MAX", quota)
    assert plan_threads.usable_cores() == 1
    monkeypatch.setattr(plan_threads, "CGROUP_CPU_MAX", tmp_path / "absent")
    assert plan_threads.usable_cores() == len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- the premise: ModelOpt's packing
def _weight(rows: int = 2048, cols: int = 8192):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(rows, cols, generator=g).to(torch.bfloat16)


def _pack(weight, fmt: str):
    """ModelOpt's export packing of one weight on the CPU, as its Megatron exporter calls it (``.cpu()`` first)."""
    from modelopt.torch.export.quant_utils import to_quantized_weight
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    if fmt == "fp8":
        return to_quantized_weight(weight.clone(), weight.abs().amax().float() / 448.0, "fp8")
    scale_2 = NVFP4QTensor.get_weights_scaling_factor_2(weight)
    scale, _ = NVFP4QTensor.get_weights_scaling_factor(weight, 16, scale_2)
    return to_quantized_weight(weight.clone(), scale, "nvfp4", scale_2, 16)


@pytest.fixture
def threads_restored():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
def test_modelopt_packing_gives_the_same_bytes_with_one_and_two_threads(fmt, threads_restored):
    import torch

    pytest.importorskip("modelopt.torch.export.quant_utils")
    weight = _weight()
    torch.set_num_threads(1)
    one = _pack(weight, fmt)
    torch.set_num_threads(2)
    two = _pack(weight, fmt)
    assert one.dtype == two.dtype and one.shape == two.shape and one.device.type == "cpu"
    assert torch.equal(one.view(torch.uint8), two.view(torch.uint8))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread CPU times from Linux's /proc")
def test_modelopt_nvfp4_packing_is_spread_over_torch_threads(threads_restored):
    """Two threads each do a good part of the work (CPU seconds per thread, not wall time: the machine is shared),
    so a rank held to one thread packs alone."""
    import torch

    pytest.importorskip("modelopt.torch.export.quant_utils")

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cpu_pack import per_thread_cpu_s as per_thread  # the benchmark's reader of /proc/self/task

    weight = _weight()
    torch.set_num_threads(2)
    _pack(weight, "nvfp4")  # the pool's threads exist from here
    before = per_thread()
    _pack(weight, "nvfp4")
    busy = sorted((v - before.get(k, 0.0) for k, v in per_thread().items()), reverse=True)
    assert busy[1] > 0.25 * busy[0], busy


# --------------------------------------------------------------------------- in a run
def _spy_inside(monkeypatch) -> list[int]:
    from modelopt_typed_recipes.runtime.hf import backend

    seen: list[int] = []
    real = backend.run

    def run(recipe, plan):
        import torch

        seen.append(torch.get_num_threads())
        return real(recipe, plan)

    monkeypatch.setattr(backend, "run", run)
    return seen


def test_the_default_run_uses_and_records_the_threads_auto_chose_and_gives_the_count_back(tmp_path, monkeypatch,
                                                                                            threads_restored):
    import torch

    from modelopt_typed_recipes.runtime import api

    seen = _spy_inside(monkeypatch)
    torch.set_num_threads(1)  # what torchrun's OMP_NUM_THREADS=1 leaves a worker with
    monkeypatch.setattr(plan_threads, "usable_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    result = api.run_post_training(doc(output_dir=str(tmp_path / "auto")), progress=False)
    assert seen[-1] == 4 and torch.get_num_threads() == 1
    facts = result.cpu_threads
    assert facts["requested"] == "auto" and facts["threads"] == 4 and facts["torch_threads_before"] == 1
    assert (facts["usable_cores"], facts["local_ranks"]) == (8, 2)
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["cpu_threads"] == facts == manifest["result"]["cpu_threads"]
    assert manifest["recipe"]["cpu_threads"] == "auto"

    result = api.run_post_training(doc(cpu_threads=3, output_dir=str(tmp_path / "three")), progress=False)
    assert seen[-1] == 3 and result.cpu_threads["threads"] == 3 and torch.get_num_threads() == 1
    assert result.cpu_threads["reason"].startswith("cpu_threads: 3 in the recipe")


@pytest.mark.slow
def test_under_torchrun_each_rank_gets_its_share_instead_of_torchruns_one_thread(tmp_path):
    """Two gloo ranks under ``torch.distributed.run --nproc_per_node=2`` with no OMP_NUM_THREADS of ours: torchrun
    sets 1, the run records that and uses the usable cores / 2 (the Megatron-Core backend, quantize at TP=2)."""
    pytest.importorskip("megatron.core")
    from _ranks import rank_environ, two_rank_recipe

    recipe = two_rank_recipe(tmp_path, "threads")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "tests/_megatron_cpu_cli.py", "run", str(recipe), "--no-progress", "--json",
                           "--output-dir", str(tmp_path / "out")],
                          cwd=ROOT, env=rank_environ(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = proc.stdout.find("{")
    facts = json.JSONDecoder().raw_decode(proc.stdout, max(start, 0))[0]["cpu_threads"]
    cores = plan_threads.usable_cores()
    assert facts["OMP_NUM_THREADS"] == "1" and facts["torch_threads_before"] == 1, facts  # torchrun's doing
    assert facts["local_ranks"] == 2 and facts["threads"] == max(1, cores // 2), facts
