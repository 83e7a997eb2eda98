"""The resolver: precedence (argument > recipe > seed env > torchrun > Slurm > default), provenance,
safe parsing of MLM_EXTRA_ARGS, and typed errors for bad environment values. Pure: environ is a dict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelopt_typed_recipes.errors import LayoutError, SpecError
from modelopt_typed_recipes.plan.resolve import first_host, parse_int, resolve, split_extra_args
from modelopt_typed_recipes.spec.layout import ParallelLayout


def test_defaults_match_the_seed_and_say_so():
    env = resolve(environ={})
    assert [env.value(f) for f in ("tensor_parallel", "pipeline_parallel", "context_parallel", "expert_parallel",
                                   "expert_tensor_parallel", "data_parallel")] == [1] * 6
    assert env["tensor_parallel"].source == "default"
    assert env["expert_tensor_parallel"].source == "default (= tensor_parallel)"
    assert env.value("work_dir") == "/tmp/megatron_workspace"
    assert not env.layout_is_set
    assert env.layout() == ParallelLayout()


def test_precedence_argument_recipe_extra_args_env_default():
    environ = {"TP": "2", "PP": "2", "CP": "2", "MLM_EXTRA_ARGS": "--pipeline-model-parallel-size 4"}
    recipe = {"context_parallel": 4, "expert_parallel": 2}
    env = resolve(args={"tensor_parallel": 8}, recipe=recipe, environ=environ)
    assert env["tensor_parallel"] == env["tensor_parallel"].__class__(8, "argument")
    assert env["pipeline_parallel"].value == 4 and env["pipeline_parallel"].source == "env MLM_EXTRA_ARGS"
    assert env["context_parallel"].value == 4 and env["context_parallel"].source == "recipe"
    assert env["expert_parallel"].source == "recipe"
    assert env["expert_tensor_parallel"].value == 8  # follows the resolved TP, like Megatron
    # the seed variable counts when nothing above sets it
    env2 = resolve(environ={"TP": "2", "ETP": "1"})
    assert env2["tensor_parallel"].source == "env TP" and env2["expert_tensor_parallel"].source == "env ETP"


def test_recipe_as_layout_sets_every_layout_field():
    env = resolve(recipe=ParallelLayout(tensor_parallel=2, sequence_parallel=True), environ={"TP": "4", "DP": "3"})
    assert env.value("tensor_parallel") == 2 and env["data_parallel"].source == "recipe"
    assert env.layout() == ParallelLayout(tensor_parallel=2, sequence_parallel=True)


def test_torchrun_world_size_derives_dp_and_checks_consistency():
    env = resolve(environ={"TP": "2", "WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "6000"})
    assert env.value("data_parallel") == 4 and env["data_parallel"].source.startswith("derived WORLD_SIZE")
    assert env.value("nnodes") == 2 and env.value("rank") == 5 and env.value("master_port") == 6000
    assert env["master_addr"].source == "torchrun MASTER_ADDR"
    with pytest.raises(LayoutError) as exc:
        resolve(environ={"TP": "3", "WORLD_SIZE": "8"})
    assert exc.value.path == "data_parallel"
    with pytest.raises(LayoutError) as exc:
        resolve(environ={"TP": "2", "DP": "2", "WORLD_SIZE": "8"})
    assert "TP*PP*CP*DP = 4" in exc.value.message
    with pytest.raises(LayoutError):
        resolve(environ={"WORLD_SIZE": "4", "RANK": "4"})


def test_slurm_variables_fill_in_below_torchrun():
    environ = {"SLURM_NNODES": "2", "SLURM_NTASKS": "16", "SLURM_GPUS_ON_NODE": "8", "SLURM_PROCID": "9",
               "SLURM_JOB_NODELIST": "gpu-a[007-008,010]"}
    env = resolve(environ=environ)
    assert env.value("world_size") == 16 and env["world_size"].source == "slurm SLURM_NTASKS"
    assert env.value("rank") == 9 and env.value("nnodes") == 2 and env.value("gpus_per_node") == 8
    assert env.value("master_addr") == "gpu-a007"
    assert env.value("data_parallel") == 16
    env = resolve(environ={**environ, "WORLD_SIZE": "8", "RANK": "1"})
    assert env["world_size"].source == "torchrun WORLD_SIZE" and env.value("rank") == 1


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("node01", "node01"), ("node[01-04,07]", "node01"), ("a[3,5],b1", "a3"), ("x-[10-12]-ib", "x-10-ib"),
     ("h1,h2", "h1"), ("", None)],
)
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize("bad", ["abc", "2.5", "4_0", "+4", "0x4", "1e2", "four", "2 2"])
def test_non_integer_env_values_are_layout_errors_naming_the_variable(bad):
    with pytest.raises(LayoutError) as exc:
        resolve(environ={"TP": bad})
    assert exc.value.path == "TP"
    assert "not an integer" in exc.value.message


@pytest.mark.parametrize(("var", "value"), [("PP", "-2"), ("EP", "0"), ("WORLD_SIZE", "0"), ("RANK", "-1")])
def test_negative_or_zero_sizes_are_errors(var, value):
    with pytest.raises(LayoutError) as exc:
        resolve(environ={var: value})
    assert exc.value.path == var


def test_empty_variables_are_unset_like_bash_dash_z():
    env = resolve(environ={"TP": "", "PP": "  ", "MLM_EXTRA_ARGS": ""})
    assert env["tensor_parallel"].is_default and env.value("pipeline_parallel") == 1
    assert resolve(environ={"TP": " 4 "}).value("tensor_parallel") == 4


def test_extra_args_are_not_word_split_or_globbed(tmp_path, monkeypatch):
    # files that the seed's unquoted expansion would substitute for the patterns
    for name in ("M-M1-", "M-Mx-", "[0]*3+[1]*58", "03+158"):
        (tmp_path / name).write_text("")
    monkeypatch.chdir(tmp_path)
    text = ("--hybrid-layer-pattern M-M*- --moe-layer-freq [0]*3+[1]*58 "
            "--prune-export-config '{\"hidden_size\": 3072, \"num_layers\": 24}' --ckpt $HOME/x")
    env = resolve(environ={"MLM_EXTRA_ARGS": text})
    assert env.extra_args == ("--hybrid-layer-pattern", "M-M*-", "--moe-layer-freq", "[0]*3+[1]*58",
                              "--prune-export-config", '{"hidden_size": 3072, "num_layers": 24}', "--ckpt", "$HOME/x")


def test_layout_flags_inside_extra_args_are_pulled_out():
    env = resolve(environ={"PP": "2", "MLM_EXTRA_ARGS": "--decoder-first-pipeline-num-layers=3 "
                           "--decoder-last-pipeline-num-layers 2 --pipeline-model-parallel-size 16 "
                           "--sequence-parallel --init-model-with-meta-device"})
    assert env.value("pipeline_parallel") == 16
    assert env.value("first_stage_layers") == 3 and env.value("last_stage_layers") == 2
    assert env.value("sequence_parallel") is True
    assert env.extra_args == ("--init-model-with-meta-device",)
    with pytest.raises(LayoutError) as exc:
        resolve(environ={"MLM_EXTRA_ARGS": "--tensor-model-parallel-size two"})
    assert exc.value.path.startswith("MLM_EXTRA_ARGS")
    with pytest.raises(LayoutError):
        resolve(environ={"MLM_EXTRA_ARGS": "--tensor-model-parallel-size"})


def test_unbalanced_quotes_are_a_spec_error():
    with pytest.raises(SpecError) as exc:
        split_extra_args("--x 'abc")
    assert exc.value.path == "MLM_EXTRA_ARGS"


def test_paths_come_from_the_seed_variables():
    env = resolve(environ={"HF_MODEL_CKPT": "/ckpt/hf", "MLM_MODEL_SAVE": "/out/q", "EXPORT_DIR": "/out/e",
                           "MLM_MODEL_CFG": "Qwen/Qwen3-8B", "MLM_WORK_DIR": "/w"},
                  args={"mlm_model_ckpt": "/ckpt/mlm"})
    assert env.value("hf_model_ckpt") == "/ckpt/hf" and env["hf_model_ckpt"].source == "env HF_MODEL_CKPT"
    assert env["mlm_model_ckpt"].source == "argument"
    assert env.value("work_dir") == "/w"
    d = env.to_dict()
    assert d["export_dir"] == {"value": "/out/e", "source": "env EXPORT_DIR"}


def test_layout_errors_name_the_variable_that_set_the_value():
    with pytest.raises(LayoutError) as exc:
        resolve(environ={"TP": "1", "MLM_EXTRA_ARGS": "--sequence-parallel"}).layout()
    assert exc.value.path == "sequence_parallel" and "env MLM_EXTRA_ARGS" in exc.value.message


def test_unknown_arguments_are_rejected():
    with pytest.raises(LayoutError) as exc:
        resolve(args={"tensor_paralel": 2}, environ={})
    assert exc.value.path == "tensor_paralel"


def test_default_uses_os_environ(monkeypatch):
    monkeypatch.setenv("TP", "4")
    assert resolve().value("tensor_parallel") == 4


@given(st.integers(1, 10**6))
@settings(max_examples=100)
def test_parse_int_round_trips_decimal_strings(n):
    assert parse_int("X", str(n)) == n
    assert parse_int("X", f"  {n}\n") == n


@given(st.text(min_size=1).filter(lambda t: not t.strip().isdigit() or not t.strip().isascii()))
@settings(max_examples=200, deadline=None)  # a shared CPU stretches one example past hypothesis' 200 ms
def test_parse_int_rejects_everything_else(text):
    if not text.strip():
        assert parse_int("X", text) is None
        return
    with pytest.raises(LayoutError):
        parse_int("X", text)
