"""Launch plans: argv lists, rendezvous, srun/sbatch (executed with stand-in srun/scontrol), env, the
seed-compatible variables, and the CLI (`plan`, `env`) including exit codes and staying torch-free."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from modelopt_typed_recipes.errors import LayoutError, ResourceError
from modelopt_typed_recipes.plan.launch import plan

ROOT = Path(__file__).resolve().parents[1]


def test_single_node_torchrun_argv_and_env():
    lp = plan("llama-3.1-8b-instruct", 8, tensor_parallel=2, environ={})
    assert lp.argv == ("torchrun", "--standalone", "--nnodes=1", "--nproc-per-node=8", "-m",
                       "modelopt_typed_recipes", "run", "RECIPE.yaml")
    env = dict(lp.env)
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["NCCL_IB_SL"] == "1" and env["NCCL_IB_TIMEOUT"] == "22" and env["OMP_NUM_THREADS"] == "1"
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert lp.layout.data_parallel == 4 and not lp.layout.sequence_parallel  # Megatron's default
    assert (lp.nnodes, lp.nproc_per_node, lp.world_size) == (1, 8, 8)


def test_program_is_a_parameter():
    lp = plan("tiny-dense", 2, tensor_parallel=2, environ={}, program=["benchmarks/multigpu_check.py", "--x", "a b"])
    assert lp.argv[-3:] == ("benchmarks/multigpu_check.py", "--x", "a b")


def test_multi_node_uses_c10d_rendezvous_and_one_torchrun_per_node():
    lp = plan("llama-3.1-8b-instruct", 16, nodes=2, tensor_parallel=8, environ={"MASTER_ADDR": "head-0"},
              job_name="job1")
    assert (lp.nnodes, lp.nproc_per_node) == (2, 8)
    assert lp.argv == lp.multi_node_argv
    assert "--rdzv-backend=c10d" in lp.argv and "--rdzv-endpoint=head-0:29500" in lp.argv
    assert "--rdzv-id=job1" in lp.argv and "--standalone" not in lp.argv
    assert lp.srun_argv[:5] == ("srun", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8",
                                "--kill-on-bad-exit=1")
    assert lp.srun_argv[5:] == lp.multi_node_argv
    nodes = {(r.rank, r.node, r.local_rank) for r in lp.rank_map}
    assert (9, 1, 1) in nodes and (7, 0, 7) in nodes


def test_nodes_must_divide_gpus_and_world_must_fit():
    with pytest.raises(LayoutError) as exc:
        plan("llama-3.1-8b-instruct", 10, nodes=4, environ={})
    assert exc.value.path == "gpus"
    with pytest.raises(LayoutError, match="needs more than the 4 GPU"):
        plan("llama-3.1-8b-instruct", 4, tensor_parallel=8, environ={})
    with pytest.raises(LayoutError, match="TP\\*PP\\*CP\\*DP = 16 GPUs but 8"):
        plan("llama-3.1-8b-instruct", 8, tensor_parallel=8, data_parallel=2, environ={})


def _fake_tools(bin_dir: Path) -> None:
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/bash\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$ARGV_OUT"\n')
    scontrol = bin_dir / "scontrol"
    # many hosts, so a reader that stops after the first line would SIGPIPE it
    scontrol.write_text('#!/bin/bash\nprintf "nodeA\\nnodeB\\n"\nseq 1 100000 | sed "s/^/node/"\n')
    for f in (srun, scontrol):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)


def test_sbatch_script_runs_with_exact_arguments(tmp_path):
    """Run the generated script with stand-in srun/scontrol in a folder full of glob bait."""
    _fake_tools(tmp_path / "bin")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("M-M1-", "M-Mx-", "03+158", "a"):
        (work / name).write_text("")
    lp = plan("llama-3.1-8b-instruct", 16, nodes=2, tensor_parallel=8, environ={},
              program=["-m", "modelopt_typed_recipes", "run", "M-M*- [0]*3+[1]*58.yaml", "*"])
    script = tmp_path / "job.sbatch"
    script.write_text(lp.sbatch_script)
    out = tmp_path / "argv.txt"
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "ARGV_OUT": str(out),
           "SLURM_JOB_NODELIST": "nodeA,nodeB", "HOME": str(tmp_path)}
    subprocess.run(["bash", str(script)], cwd=work, env=env, check=True)
    got = out.read_text().splitlines()
    expect = [a.replace("${MASTER_ADDR}", "nodeA") for a in lp.srun_argv[1:]]
    assert got == expect
    assert got[-2:] == ["M-M*- [0]*3+[1]*58.yaml", "*"]
    assert "#SBATCH --nodes=2" in lp.sbatch_script and "#SBATCH --gpus-per-node=8" in lp.sbatch_script
    assert "export NCCL_NVLS_ENABLE=0" in lp.sbatch_script


def test_seed_env_carries_the_true_process_count_and_safe_extra_args():
    environ = {"MLM_EXTRA_ARGS": "--hybrid-layer-pattern M-M*- --export-force-local-attention",
               "MLM_MODEL_SAVE": "/out/q"}
    lp = plan("llama-3.1-8b-instruct", 4, tensor_parallel=4, expert_tensor_parallel=1, expert_parallel=1,
              environ=environ)
    seed = dict(lp.seed_env)
    assert seed["TP"] == "4" and seed["ETP"] == "1" and seed["EP"] == "1" and seed["DP"] == "1"
    assert seed["LAUNCH_SCRIPT"] == "torchrun --nproc_per_node=4"  # the seed's formula gives 1
    assert seed["MLM_SKIP_INSTALL"] == "1" and seed["MLM_MODEL_SAVE"] == "/out/q"
    assert shlex.split(seed["MLM_EXTRA_ARGS"]) == ["--hybrid-layer-pattern", "M-M*-",
                                                   "--export-force-local-attention"]
    assert seed["MLM_MODEL_CFG"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_plan_without_layout_picks_the_smallest_that_fits_then_fills_dp():
    lp = plan("llama-3.1-8b-instruct", 8, environ={})
    assert lp.layout_source == "planned" and lp.layout.tensor_parallel == 1 and lp.layout.data_parallel == 8
    big = plan("qwen3-235b-a22b", 16, environ={}, gpu="h100-80gb")
    assert big.layout_source == "planned" and big.fits
    assert big.layout.world_size <= 16


def test_memory_error_names_the_smallest_layout_that_fits():
    with pytest.raises(ResourceError) as exc:
        plan("qwen3-235b-a22b", 16, tensor_parallel=1, expert_parallel=1, environ={})
    assert "the smallest layout that fits on 16 x h100-80gb is TP" in exc.value.hint
    with pytest.raises(ResourceError, match="no quantize layout"):
        plan("deepseek-r1", 8, tensor_parallel=8, environ={})


def test_summary_has_the_json_contract():
    s = plan("tiny-moe", 2, expert_parallel=2, environ={}).summary()
    for key in ("world_size", "nproc_per_node", "nnodes", "layout", "argv", "env", "memory", "fits"):
        assert key in s
    for key in ("tensor", "pipeline", "context", "expert", "expert_tensor", "data"):
        assert key in s["layout"]
    assert s["memory"]["per_rank_bytes"] > 0 and s["memory"]["capacity_bytes"] > s["memory"]["per_rank_bytes"]
    json.dumps(s)


# --------------------------------------------------------------------------- CLI
def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("TP", "PP", "CP", "EP", "ETP", "DP", "WORLD_SIZE")}
    return subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=ROOT)


def test_cli_plan_json():
    r = _cli("plan", "llama-3.1-8b-instruct", "--gpus", "8", "--stage", "export", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["layout"]["tensor"] == 1 and s["layout"]["pipeline"] == 8 and s["nproc_per_node"] == 8
    assert s["fits"] is True and s["argv"][0] == "torchrun"


def test_cli_bad_layout_exits_2_with_the_typed_message():
    r = _cli("plan", "llama-3.1-8b-instruct", "--gpus", "8", "--tp", "3")
    assert r.returncode == 2
    assert "TP=3 does not divide 32 attention heads" in r.stderr and "Traceback" not in r.stderr
    r = _cli("plan", "llama-3.1-8b-instruct", "--gpus", "8", "--json", env={"TP": "x"})
    assert r.returncode == 2 and json.loads(r.stdout)["errors"][0]["path"] == "TP"


def test_cli_env_table_and_json():
    r = _cli("env", "--json", env={"TP": "2", "MLM_EXTRA_ARGS": "--hybrid-layer-pattern M-M*-"})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["tensor_parallel"] == {"value": 2, "source": "env TP"}
    assert d["extra_args"]["value"] == ["--hybrid-layer-pattern", "M-M*-"]
    r = _cli("env", env={"TP": "2"})
    assert r.returncode == 0 and "env TP" in r.stdout


def test_planning_path_never_imports_torch():
    code = ("import sys; from modelopt_typed_recipes.cli import main; "
            "rc = main(['plan', 'qwen3-30b-a3b', '--gpus', '8', '--ep', '8', '--json']); "
            "bad = [m for m in ('torch', 'megatron', 'modelopt.torch', 'transformers') if m in sys.modules]; "
            "print(bad, file=sys.stderr); sys.exit(10 if bad else rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
