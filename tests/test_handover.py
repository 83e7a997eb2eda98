"""Where a move between parallel layouts puts its temporary checkpoint (``runtime/megatron/handover.py``).

The choice is tested as data (hypothesis: never host memory unless every rank is on this node and tmpfs and
memory have room; more room never takes memory away; a bigger checkpoint never gives it); the move itself with
a real quantized Megatron-Core model on the CPU: through /dev/shm and through the disk it gives the same
tensors, and no folder stays behind, also when the load fails. The TP=2 -> PP=2 move on two gloo ranks, a kill
between save and load and the next run's clean-up are in ``test_tp2_to_pp2_handover_through_memory_*``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.runtime.megatron import handover as H

GB = 10**9
ROOT = Path(__file__).resolve().parent.parent

sizes = st.integers(min_value=0, max_value=2000 * GB)
machines = st.builds(
    H.Machine,
    world_size=st.integers(1, 16),
    local_world_size=st.none() | st.integers(1, 16),
    shm_free=st.none() | sizes,
    memory_available=sizes,
    cgroup_room=st.none() | sizes,
    forced=st.none() | st.sampled_from(["", "output", "/scratch/fast"]),
)


@settings(max_examples=300, deadline=None)
@given(ckpt=sizes, m=machines)
def test_memory_only_when_every_rank_is_here_and_there_is_room(ckpt: int, m: H.Machine) -> None:
    c = H.choose(ckpt, m)
    assert c.reason
    if m.forced == "output":
        assert (c.where, c.base) == ("output", None)
    elif m.forced:
        assert (c.where, c.base) == ("forced", m.forced) and "MTR_HANDOVER_DIR" in c.reason
    elif c.where == "memory":
        assert c.base == "/dev/shm"
        assert m.world_size == 1 or m.local_world_size == m.world_size
        assert m.shm_free is not None and m.shm_free > ckpt
        room = m.memory_available if m.cgroup_room is None else min(m.memory_available, m.cgroup_room)
        assert room >= 3 * ckpt  # the checkpoint and the writer's two copies
    else:
        assert c.where == "output" and c.base is None and "on disk" in c.reason


@settings(max_examples=300, deadline=None)
@given(ckpt=sizes, m=machines, more=sizes, bigger=sizes)
def test_more_room_never_takes_memory_away_and_a_bigger_checkpoint_never_gives_it(ckpt, m, more, bigger) -> None:
    m = attrs.evolve(m, forced=None)
    roomier = attrs.evolve(m, memory_available=m.memory_available + more,
                           shm_free=None if m.shm_free is None else m.shm_free + more,
                           cgroup_room=None if m.cgroup_room is None else m.cgroup_room + more)
    if H.choose(ckpt, m).where == "memory":
        assert H.choose(ckpt, roomier).where == "memory"
        assert H.choose(max(ckpt - bigger, 0), m).where == "memory"
    else:
        assert H.choose(ckpt + bigger, m).where == "output"


def test_the_cases_met_so_far() -> None:
    """qwen3-30b-a3b (61 GB) on 2 H200s of one host (256 GiB); the same in a container with Docker's 64 MB
    /dev/shm, under a 128 GiB cgroup limit, and on two nodes; qwen3-8b (16 GB) on this CPU machine's sizes."""
    host = H.Machine(world_size=2, local_world_size=2, shm_free=128 * GB, memory_available=250 * GB)
    assert H.choose(61 * GB, host).where == "memory"
    c = H.choose(61 * GB, attrs.evolve(host, shm_free=64 * 2**20))
    assert c.where == "output" and "/dev/shm has 0.1 GB free" in c.reason
    c = H.choose(61 * GB, attrs.evolve(host, cgroup_room=128 * 2**30))
    assert c.where == "output" and "137.4 GB of host memory available" in c.reason
    c = H.choose(61 * GB, attrs.evolve(host, world_size=16, local_world_size=8))
    assert c.where == "output" and "the 16 ranks run on 2 nodes" in c.reason
    c = H.choose(61 * GB, attrs.evolve(host, local_world_size=None))
    assert c.where == "output" and "unknown number of nodes" in c.reason
    assert H.choose(61 * GB, attrs.evolve(host, world_size=1, local_world_size=None)).where == "memory"
    assert H.choose(16 * GB, H.Machine(world_size=2, local_world_size=2, shm_free=24 * GB,
                                       memory_available=22 * GB)).where == "output"  # 3 copies do not fit
    assert H.choose(4 * GB, H.Machine(world_size=2, local_world_size=2, shm_free=24 * GB,
                                      memory_available=22 * GB)).where == "memory"


def test_read_machine_reads_torchrun_the_cgroup_and_the_override(tmp_path: Path, monkeypatch) -> None:
    m = H.read_machine({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
                        H.ENV: "output"})
    assert (m.world_size, m.local_world_size, m.forced) == (4, 2, "output")
    assert m.memory_available > 0
    m = H.read_machine({})
    assert (m.world_size, m.local_world_size, m.forced) == (1, None, None)
    if Path("/dev/shm").is_mount():
        assert m.shm_free is not None and m.shm_free > 0
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("100\n")
    assert H._cgroup_room(tmp_path) is None
    (tmp_path / "memory.max").write_text("1000\n")
    assert H._cgroup_room(tmp_path) == 900
    assert H._cgroup_room(tmp_path / "absent") is None


def test_scratch_folders_are_named_by_output_and_removed_by_its_next_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(H, "SHM", tmp_path / "shm")
    a, b = tmp_path / "out-a", tmp_path / "out-b"
    assert H.scratch_name(a) == H.scratch_name(a) != H.scratch_name(b)
    memory = H.folder_for(H.Choice(where="memory", reason="r", base=str(H.SHM)), staging=tmp_path / "s",
                          output_dir=a, index=1)
    assert memory.folder == tmp_path / "shm" / H.scratch_name(a) / "relayout-1"
    disk = H.folder_for(H.Choice(where="output", reason="r"), staging=tmp_path / "s", output_dir=a, index=1)
    assert (disk.folder, disk.scratch) == (tmp_path / "s" / ".relayout-1", None)
    for out in (a, b):
        (tmp_path / "shm" / H.scratch_name(out) / "relayout-1").mkdir(parents=True)
    forced = tmp_path / "scratch" / H.scratch_name(a)
    forced.mkdir(parents=True)
    assert H.remove_stale(a, {H.ENV: str(tmp_path / "scratch")}) == [
        str(tmp_path / "shm" / H.scratch_name(a)), str(forced)]
    assert sorted(p.name for p in (tmp_path / "shm").iterdir()) == [H.scratch_name(b)]  # another output's stays


# --------------------------------------------------------------------------- the move, in one process
torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")


@pytest.fixture(scope="module")
def quantized():
    from _dist import init_gloo_world
    from megatron_cpu_shim import megatron_on_cpu
    from modelopt_typed_recipes.runtime import distributed
    from modelopt_typed_recipes.runtime.megatron import build, stages
    from modelopt_typed_recipes.spec.layout import ParallelLayout
    from modelopt_typed_recipes.spec.techniques import Quantize
    from test_megatron_runtime import _config, arch_4k

    init_gloo_world()
    distributed.set_layout(ParallelLayout(), device="cpu")
    with megatron_on_cpu():
        def make():
            torch.manual_seed(0)
            m = build.build_model(arch_4k(), ParallelLayout(), dtype="fp32", device="cpu", spec="local")
            stages.quantize(m, Quantize(format="fp8"), [torch.randint(0, 4096, (2, 32), generator=torch.Generator()
                                                                      .manual_seed(1))],
                            progress=False, config=_config(Quantize(format="fp8")))
            return m
        yield make


def _move(model, tmp_path: Path):
    from modelopt_typed_recipes.runtime.megatron import backend
    from modelopt_typed_recipes.spec.layout import ParallelLayout
    from test_megatron_runtime import arch_4k

    staging = tmp_path / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    plan = types.SimpleNamespace(staging=lambda: staging, output_dir=tmp_path / "out")
    run = types.SimpleNamespace(model=model, plan=plan, layout=ParallelLayout())
    sp = types.SimpleNamespace(index=1, layout=ParallelLayout())
    details = backend._hand_over(run, sp, arch_4k(), dtype="fp32", device="cpu", spec="local", seed=1)
    return run.model, details


def _tensors(model) -> dict[str, torch.Tensor]:
    """Weights and quantizer buffers (``_extra_state`` holds pickled bytes, which differ from pickle to pickle)."""
    return {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and "_extra_state" not in k}


def _shm_entries() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("mtr-handover-*")} if Path("/dev/shm").is_dir() else set()


def test_a_move_through_memory_equals_one_through_the_disk(quantized, tmp_path, monkeypatch) -> None:
    before = _tensors(quantized())
    monkeypatch.delenv(H.ENV, raising=False)
    shm_before = _shm_entries()
    through_memory, details = _move(quantized(), tmp_path / "a")
    expected = H.choose(details["bytes"], H.read_machine())
    assert details["where"] == expected.where
    if expected.where != "memory":
        pytest.skip(f"this machine keeps the hand-over on disk: {expected.reason}")
    assert details["folder"].startswith("/dev/shm/mtr-handover-") and "host memory (/dev/shm)" in details["via"]
    assert details["bytes"] == sum(v.numel() * v.element_size() for v in [*quantized().parameters(),
                                                                         *quantized().buffers()])
    assert all(details[k] >= 0 for k in ("save_s", "build_s", "load_s"))
    assert details["seconds"] >= details["save_s"] + details["build_s"] + details["load_s"] - 1e-6
    monkeypatch.setenv(H.ENV, "output")
    through_disk, on_disk = _move(quantized(), tmp_path / "b")
    assert on_disk["where"] == "output" and on_disk["folder"] == str(tmp_path / "b" / "staging" / ".relayout-1")
    assert "MTR_HANDOVER_DIR=output" in on_disk["via"]
    a, b = _tensors(through_memory), _tensors(through_disk)
    assert a.keys() == b.keys() == before.keys() and any("amax" in k for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [k for k in a if not torch.equal(a[k], before[k])] == []
    assert _shm_entries() == shm_before and list((tmp_path / "b" / "staging").iterdir()) == []


def _quantizer_settings(model) -> dict[str, str]:
    """Each quantizer's settings (what its pickled ``_extra_state`` carries: bits, axis, enabled, ...). The
    output layer's quantizers, all disabled, are saved with no state, so the dtype their last forward saw
    (``_input_dtype``) is not kept by any load, before this change or after: left out there."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return {n: repr(sorted((k, v) for k, v in m.get_modelopt_state().items()
                           if not (n.startswith("output_layer.") and k == "_input_dtype")))
            for n, m in model.named_modules() if isinstance(m, TensorQuantizer)}


def test_the_move_reads_each_extra_state_once_and_skips_the_global_checks(quantized, tmp_path, monkeypatch) -> None:
    """The hand-over's own save and load skip Megatron-Core's all-gathered access checks, and the weights' load
    leaves out the ``_extra_state`` ModelOpt's restore has just read and set (issue 9: half the load of a MoE
    with thousands of quantizers per rank); the moved model holds the same tensors and quantizer settings."""
    from megatron.core import dist_checkpointing

    model = quantized()
    before, settings_before = _tensors(model), _quantizer_settings(model)
    calls: list[tuple[str, int, int, bool]] = []

    def spy(name):
        real = getattr(dist_checkpointing, name)

        def call(sharded, directory, *a, validate_access_integrity=True, **k):
            extra = sum("_extra_state" in key for key in sharded)
            calls.append((name, extra, len(sharded) - extra, validate_access_integrity))
            return real(sharded, directory, *a, validate_access_integrity=validate_access_integrity, **k)
        return call

    for name in ("save", "load"):
        monkeypatch.setattr(dist_checkpointing, name, spy(name))
    moved, _ = _move(model, tmp_path)
    weights = [c for c in calls if c[0] == "save" and c[1] > 0]
    assert len(weights) == 1 and weights[0][3] is False, calls  # the model's save: no global check
    loads = [c for c in calls if c[0] == "load"]
    assert len(loads) == 2, calls
    restore, main = loads  # ModelOpt's restore reads every _extra_state; the weights' load none of them
    assert restore[1] > 0 and restore[2] == 0 and main[1] == 0 and main[2] > 0 and main[3] is False, calls
    after = _tensors(moved)
    assert after.keys() == before.keys() and [k for k in after if not torch.equal(after[k], before[k])] == []
    assert _quantizer_settings(moved) == settings_before and len(settings_before) > 8


def test_a_forced_folder_that_cannot_be_made_falls_back_to_the_disk(quantized, tmp_path, monkeypatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(H.ENV, str(tmp_path / "file" / "below"))
    _, details = _move(quantized(), tmp_path)
    assert details["where"] == "output" and "could not be made" in details["via"], details
    assert list((tmp_path / "staging").iterdir()) == []


@pytest.mark.parametrize("where", ["memory", "forced", "output"])
def test_a_failed_load_leaves_no_folder(quantized, tmp_path, monkeypatch, where) -> None:
    from modelopt_typed_recipes.runtime.megatron import build

    forced = tmp_path / "scratch"
    monkeypatch.setenv(H.ENV, {"memory": "", "forced": str(forced), "output": "output"}[where])
    seen = []

    def fail(model, directory, **_kw):
        seen.append(Path(directory))
        assert (Path(directory) / "metadata.json").is_file()  # saved, about to load
        raise OSError("the load failed")

    monkeypatch.setattr(build, "load_checkpoint", fail)
    shm_before = _shm_entries()
    with pytest.raises(OSError, match="the load failed"):
        _move(quantized(), tmp_path)
    [folder] = seen
    assert not folder.exists() and (folder.parent == tmp_path / "staging" or not folder.parent.exists())
    assert _shm_entries() == shm_before
    assert list((tmp_path / "staging").iterdir()) == []
    if where == "forced":
        assert folder.parent.parent == forced and list(forced.iterdir()) == []


# --------------------------------------------------------------------------- TP=2 -> PP=2 on two gloo ranks
RECIPE = """\
name: handover
model: reference-llama
source: {type: builtin}
stages: [{technique: quantize, format: fp8}, {technique: export}]
calibration: {dataset: reference-train, num_samples: 8, seq_length: 128, batch_size: 8}
evaluation: {dataset: reference-heldout, num_samples: 4, seq_length: 128, batch_size: 4}
layout: {tensor_parallel: 2}
backend: megatron
device: cuda
output_dir: outputs/handover   # each run gives --output-dir
"""
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _two_ranks(recipe: Path, out: Path, *, kill: bool = False, env: dict[str, str] | None = None):
    head = ["tests/_megatron_cpu_cli.py", *(["--kill-at", "inside:handover"] if kill else [])]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        environ.pop(key, None)
    return subprocess.run([*TORCHRUN, *head, "run", str(recipe), "--no-progress", "--json", "--output-dir", str(out)],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600)


def _result(proc) -> dict:
    start = proc.stdout.find("{")
    return json.JSONDecoder().raw_decode(proc.stdout, max(start, 0))[0]


@pytest.mark.slow
def test_tp2_to_pp2_handover_through_memory_equals_the_disk_and_a_killed_one_is_cleaned(tmp_path: Path) -> None:
    """Quantize at TP=2, export at PP=2 (two gloo ranks under torchrun): killed between the hand-over's save and
    load, the run leaves its folder in /dev/shm; the next run of the same output removes it, goes through
    /dev/shm itself and leaves nothing; each rank's exported tensors and the perplexities equal those of a run
    forced through the disk (``MTR_HANDOVER_DIR=output``)."""
    from safetensors.torch import load_file

    machine = H.read_machine({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    if H.choose(GB, machine).where != "memory":
        pytest.skip(f"this machine keeps a 1 GB hand-over on disk: {H.choose(GB, machine).reason}")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = (tmp_path / "out").resolve()
    shm_before = _shm_entries()
    scratch = H.SHM / H.scratch_name(out)

    killed = _two_ranks(recipe, out, kill=True)
    assert killed.returncode != 0 and not out.exists()
    assert (scratch / "relayout-1" / "metadata.json").is_file(), killed.stderr[-3000:]  # saved, not loaded

    proc = _two_ranks(recipe, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    memory = _result(proc)
    h = memory["stages"][1]["details"]["handover"]
    assert (h["from"].split()[:2], h["to"].split()[:2]) == (["TP2", "PP1"], ["TP1", "PP2"])
    assert h["where"] == "memory" and h["folder"] == str(scratch / "relayout-1"), h
    assert all(h[k] > 0 for k in ("save_s", "build_s", "load_s", "bytes"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["saved"]["handovers"][0]["where"] == "memory"
    assert _shm_entries() == shm_before

    disk_out = tmp_path / "disk"
    proc = _two_ranks(recipe, disk_out, env={H.ENV: "output"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    disk = _result(proc)
    assert disk["stages"][1]["details"]["handover"]["where"] == "output"
    assert memory["metrics"]["perplexity_after"] == disk["metrics"]["perplexity_after"]
    for rank in (0, 1):
        a = load_file(str(out / "02-export-hf" / f"rank{rank}.safetensors"))
        b = load_file(str(disk_out / "02-export-hf" / f"rank{rank}.safetensors"))
        assert a.keys() == b.keys() and any("amax" in k for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a), rank
    assert _shm_entries() == shm_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "out", "r.yaml"]

