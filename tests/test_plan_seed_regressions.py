"""One regression test per layout defect of the seed (Megatron-LM examples/post_training/modelopt,
conf/arguments.sh and the stage scripts; inventory §2.1, §5.5 and §8 items 1, 2 and 12)."""

from __future__ import annotations

import re
import shlex

import pytest

from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import LayoutError
from modelopt_typed_recipes.plan import rules
from modelopt_typed_recipes.plan.launch import plan
from modelopt_typed_recipes.plan.resolve import resolve
from modelopt_typed_recipes.spec.layout import ParallelLayout


def seed_nproc(tp: int, etp: int, ep: int, pp: int, cp: int, dp: int) -> int:
    """The seed's LAUNCH_SCRIPT formula, kept here to show where it goes wrong."""
    del tp
    return etp * ep * pp * cp * dp


# §2.1 / §8.1: the nproc formula leaves out TP
def test_tp4_etp1_ep1_starts_4_processes_not_1():
    environ = {"TP": "4", "ETP": "1", "EP": "1"}
    assert seed_nproc(4, 1, 1, 1, 1, 1) == 1  # what the seed launched; Megatron then fails
    lp = plan("llama-3.1-8b-instruct", 4, environ=environ)
    assert lp.nproc_per_node == 4 and lp.world_size == 4
    assert lp.argv[3] == "--nproc-per-node=4"
    assert dict(lp.seed_env)["LAUNCH_SCRIPT"] == "torchrun --nproc_per_node=4"


@pytest.mark.parametrize(
    ("arch", "gpus", "environ", "world", "dp", "edp"),
    [
        ("llama-3.1-8b-instruct", 2, {"TP": "2"}, 2, 1, 1),  # dense TP=2
        ("qwen3-30b-a3b", 8, {"TP": "1", "EP": "8", "ETP": "1"}, 8, 8, 1),  # attention DP 8
        ("qwen3-30b-a3b", 8, {"TP": "2", "EP": "4"}, 8, 4, 1),  # ETP follows TP=2
        ("kimi-k2-instruct", 64, {"TP": "8", "ETP": "1", "EP": "64"}, 64, 8, 1),  # DP=8 implicit in the seed
    ],
)
def test_worked_cases_of_the_inventory(arch, gpus, environ, world, dp, edp):
    lp = plan(arch, gpus, environ=environ, check_memory=False)
    assert lp.world_size == world and lp.layout.data_parallel == dp and lp.layout.expert_data_parallel == edp


def test_world_must_be_divisible_by_the_expert_side():
    # the seed never checked world % (ETP*EP*PP)
    with pytest.raises(LayoutError) as exc:
        plan("qwen3-30b-a3b", 4, environ={"TP": "2", "EP": "4", "DP": "1"}, check_memory=False)
    assert exc.value.path == "expert_parallel"


def test_cp_is_not_multiplied_into_the_expert_side():
    lp = plan("qwen3-30b-a3b", 4, context_parallel=2, expert_parallel=4, environ={}, check_memory=False)
    assert lp.world_size == 4 and lp.layout.data_parallel == 2 and lp.layout.expert_data_parallel == 1
    assert seed_nproc(1, 1, 4, 1, 2, 1) == 8  # the seed would start 8


# §2.1: export forces TP=1 after nproc is computed (TP=8 gave 8xPP export ranks)
def test_export_is_tp1_pipeline_only_with_a_recomputed_process_count():
    lp = plan("llama-3.1-8b-instruct", 8, stage="export", environ={})
    assert lp.layout.tensor_parallel == 1 and lp.layout.data_parallel == 1
    assert lp.nproc_per_node == lp.layout.pipeline_parallel == 8
    seed = dict(lp.seed_env)
    assert (seed["TP"], seed["ETP"], seed["EP"], seed["DP"]) == ("1", "1", "1", "1")
    with pytest.raises(LayoutError) as exc:  # carrying the quantize TP=8 into export is refused, with a proposal
        plan("llama-3.1-8b-instruct", 8, stage="export", environ={"TP": "8"})
    assert exc.value.path == "tensor_parallel" and "TP1 PP8" in exc.value.hint
    assert "corrupted" in exc.value.message


# §2.1: DP/CP/EP/ETP silently absorbed when a script does not pass them
def test_every_size_reaches_megatron_or_is_refused():
    lp = plan("qwen3-30b-a3b", 8, tensor_parallel=2, context_parallel=2, expert_parallel=2, environ={},
              check_memory=False)
    args = lp.megatron_args
    for flag, value in (("--tensor-model-parallel-size", "2"), ("--context-parallel-size", "2"),
                        ("--expert-model-parallel-size", "2"), ("--expert-tensor-parallel-size", "2")):
        assert args[args.index(flag) + 1] == value
    # prune and export do not pass EP/CP in the seed: here they are refused instead of becoming DP
    for stage in ("prune", "export"):
        with pytest.raises(LayoutError) as exc:
            plan("qwen3-30b-a3b", 8, stage=stage, expert_parallel=8, environ={}, check_memory=False)
        assert exc.value.path == "expert_parallel"


# §2.1: torchrun --nproc_per_node is single-node only
def test_multi_node_has_a_rendezvous():
    lp = plan("kimi-k2-instruct", 16, nodes=2, stage="export", environ={}, check_memory=False)
    assert lp.nnodes == 2 and lp.nproc_per_node == 8
    assert any(a.startswith("--rdzv-endpoint=") for a in lp.argv)
    assert lp.layout.first_stage_layers == 3 and lp.layout.last_stage_layers == 2  # the seed's export profile


# §2.1 / §8.12: no integer validation; bash -z checks only
@pytest.mark.parametrize(("var", "value"), [("TP", "2.0"), ("PP", "two"), ("EP", "-4"), ("DP", "0"), ("CP", "4_0")])
def test_non_integer_or_negative_env_values_fail_before_launch(var, value):
    with pytest.raises(LayoutError) as exc:
        plan("llama-3.1-8b-instruct", 8, environ={var: value})
    assert exc.value.path == var


# §2.1: no divisibility check against the model
@pytest.mark.parametrize(
    ("environ", "path"),
    [({"TP": "3"}, "tensor_parallel"), ({"PP": "5"}, "pipeline_parallel"), ({"CP": "3"}, "context_parallel")],
)
def test_divisibility_against_the_model(environ, path):
    with pytest.raises(LayoutError) as exc:
        plan("llama-3.1-8b-instruct", 16, environ=environ, check_memory=False)
    assert exc.value.path == path


def test_experts_by_ep():
    with pytest.raises(LayoutError, match="does not divide 128 experts"):
        plan("qwen3-30b-a3b", 6, environ={"EP": "6"}, check_memory=False)


# §2.1: the model conf can set parallelism inside MODEL_ARGS (Nemotron-H-56B: TP 8, PP 1)
def test_nemotron_h_56b_embedded_tp_flags_are_ignored():
    arch = get_arch("nemotron-h-56b-base-8k")
    assert not hasattr(arch, "tensor_parallel")
    env = resolve(environ={"MLM_MODEL_CFG": "nvidia/Nemotron-H-56B-Base-8K"})
    assert env.value("tensor_parallel") == 1 and env["tensor_parallel"].source == "default"
    lp = plan(arch, 8, environ={"MLM_MODEL_CFG": "nvidia/Nemotron-H-56B-Base-8K"})
    assert lp.layout_source == "planned"  # chosen by memory, not by a dead flag
    assert dict(lp.seed_env)["TP"] == str(lp.layout.tensor_parallel)


# §1.1 / §8.2: MLM_EXTRA_ARGS and MODEL_ARGS are word-split and globbed
def test_extra_args_with_hybrid_patterns_survive(tmp_path, monkeypatch):
    (tmp_path / "M-M1-").write_text("")
    monkeypatch.chdir(tmp_path)
    environ = {"MLM_EXTRA_ARGS": "--hybrid-layer-pattern M-M*- --moe-layer-freq [0]*3+[1]*58 --x 'a b'"}
    lp = plan("llama-3.1-8b-instruct", 8, environ=environ)
    extra = shlex.split(dict(lp.seed_env)["MLM_EXTRA_ARGS"])
    assert extra == ["--hybrid-layer-pattern", "M-M*-", "--moe-layer-freq", "[0]*3+[1]*58", "--x", "a b"]


# §2 step 8 / §8.12: a warning per default, no provenance
def test_each_value_has_a_source_instead_of_a_warning():
    env = resolve(environ={"TP": "2", "WORLD_SIZE": "8"})
    sources = {k: v.source for k, v in env.values.items()}
    assert sources["tensor_parallel"] == "env TP"
    assert sources["data_parallel"].startswith("derived WORLD_SIZE")
    assert sources["pipeline_parallel"] == "default"


# §2 step 10: pip install on every run
def test_nothing_is_installed_at_launch():
    lp = plan("llama-3.1-8b-instruct", 8, environ={})
    assert dict(lp.seed_env)["MLM_SKIP_INSTALL"] == "1"
    assert not re.search(r"\bpip\b", " ".join(lp.argv) + lp.sbatch_script)


# §5.5: stage limits the user had to know
def test_stage_limits_of_the_seed():
    llama = get_arch("llama-3.1-8b-instruct")
    with pytest.raises(LayoutError, match="auto-quantize needs PP=1"):
        rules.check(llama, ParallelLayout(pipeline_parallel=2), "auto-quantize")
    with pytest.raises(LayoutError, match="Minitron"):
        rules.check(llama, ParallelLayout(tensor_parallel=2), "prune")
    rules.check(llama, ParallelLayout(pipeline_parallel=4), "prune")  # PP is fine for pruning
    with pytest.raises(LayoutError, match="calib|2\\*CP"):
        rules.check(llama, ParallelLayout(context_parallel=2), "quantize", seq_length=4094)


# §5.6 item 6: uneven PP splits chosen by hand
def test_uneven_split_is_proposed():
    with pytest.raises(LayoutError) as exc:
        plan("kimi-k2-instruct", 16, pipeline_parallel=16, stage="export", environ={}, check_memory=False)
    assert "uneven split" in exc.value.hint
    lp = plan("kimi-k2-instruct", 16, pipeline_parallel=16, first_stage_layers=3, last_stage_layers=2,
              stage="export", environ={}, check_memory=False)
    assert lp.layout.stage_layers(61) == (3, *([4] * 14), 2)
