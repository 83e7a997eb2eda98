"""The architecture CLI: exit codes, JSON shapes, paste-able flags, one-paragraph errors, and no heavy
imports on the list/show/flags/validate path."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from modelopt_typed_recipes.bridges.megatron_flags import to_megatron_args
from modelopt_typed_recipes.catalog import get_arch, list_archs
from modelopt_typed_recipes.cli import main
from modelopt_typed_recipes.spec.serde import to_json, to_yaml

SUMMARY_KEYS = {"name": str, "hf_id": (str, type(None)), "kind": str, "family": str, "params_total": int,
                "params_active": int}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _check_summary(obj: dict) -> None:
    for key, typ in SUMMARY_KEYS.items():
        assert isinstance(obj[key], typ), key
    assert not isinstance(obj["params_total"], bool)


def test_list_json(capsys) -> None:
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert isinstance(data, list) and len(data) == len(list_archs())
    for obj in data:
        _check_summary(obj)


def test_list_filters(capsys) -> None:
    code, out, _ = run(capsys, "list", "--kind", "hybrid", "--json")
    assert code == 0 and {o["kind"] for o in json.loads(out)} == {"hybrid"}
    code, out, _ = run(capsys, "list", "--family", "qwen", "--json")
    assert {o["family"] for o in json.loads(out)} == {"qwen"}
    code, out, _ = run(capsys, "list", "--family", "qwen")
    assert code == 0 and "qwen3-8b" in out and "llama" not in out


def test_list_bad_kind_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["list", "--kind", "sparse"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_show(capsys) -> None:
    code, out, _ = run(capsys, "show", "Qwen/Qwen3-8B", "--json")
    assert code == 0
    obj = json.loads(out)
    _check_summary(obj)
    assert obj["name"] == "qwen3-8b" and obj["params_total"] == get_arch("qwen3-8b").params_total
    code, out, _ = run(capsys, "show", "kimi-k2")
    assert code == 0 and "kimi-k2-instruct" in out and "beta_fast" in out


def test_show_unknown_exits_2_with_hint(capsys) -> None:
    code, out, err = run(capsys, "show", "qwen3-8")
    assert code == 2
    assert "did you mean" in err and "qwen3-8b" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    code, out, err = run(capsys, "show", "qwen3-8", "--json")
    assert code == 2 and json.loads(out)["ok"] is False


@pytest.mark.parametrize("name", ["qwen3-8b", "deepseek-r1", "nemotron-3-nano", "gpt-oss-20b"])
def test_flags_paste_back(capsys, name: str) -> None:
    code, out, _ = run(capsys, "flags", name)
    assert code == 0
    lines = out.strip().splitlines()
    assert all(line.startswith("--") for line in lines)
    assert shlex.split(" ".join(lines)) == to_megatron_args(get_arch(name))
    code, out, _ = run(capsys, "flags", name, "--json")
    assert json.loads(out) == to_megatron_args(get_arch(name))


def test_flags_notes_go_to_stderr(capsys) -> None:
    code, out, err = run(capsys, "flags", "gpt-oss-20b")
    assert code == 0 and "# note:" in err and "#" not in out


def test_validate(tmp_path: Path, capsys) -> None:
    good = tmp_path / "m.yaml"
    good.write_text(to_yaml(get_arch("tiny-moe")))
    code, out, _ = run(capsys, "validate", str(good))
    assert code == 0 and out.startswith("ok: tiny-moe")
    as_json = tmp_path / "m.json"
    as_json.write_text(to_json(get_arch("tiny-mla")))
    code, out, _ = run(capsys, "validate", str(as_json), "--json")
    assert code == 0 and json.loads(out)["ok"] is True

    bad = tmp_path / "bad.yaml"
    bad.write_text(to_yaml(get_arch("tiny-moe")).replace("router_topk: 2", "router_topk: 9"))
    code, out, err = run(capsys, "validate", str(bad))
    assert code == 2 and "moe.router_topk" in err and "exceeds" in err and "Traceback" not in err
    code, _, err = run(capsys, "validate", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read" in err
    junk = tmp_path / "junk.yaml"
    junk.write_text("a: [unclosed\n")
    code, _, err = run(capsys, "validate", str(junk))
    assert code == 2 and err.count("\n") == 1


def test_from_hf(tmp_path: Path, capsys) -> None:
    pytest.importorskip("modelopt_typed_recipes.bridges.hf_config")
    cfg = {
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936,
        "tie_word_embeddings": False, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
        "rope_theta": 1000000, "rope_scaling": None, "attention_bias": False, "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    code, out, err = run(capsys, "from-hf", str(path), "--hf-id", "Qwen/Qwen3-8B")
    assert code == 0, err
    from modelopt_typed_recipes.spec.arch import ModelArch
    from modelopt_typed_recipes.spec.serde import from_yaml

    arch = from_yaml(out, ModelArch)
    assert arch.params_total == get_arch("qwen3-8b").params_total
    code, _, err = run(capsys, "from-hf", str(tmp_path / "nope.json"))
    assert code == 2 and "Traceback" not in err


def test_profiles(capsys) -> None:
    code, out, _ = run(capsys, "profiles", "--json")
    assert code == 0 and {p["name"] for p in json.loads(out)} == {"kimi-k2-instruct", "kimi-k2-instruct-export"}


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)


HEAVY = ("torch", "megatron", "modelopt", "transformers", "rich")


@pytest.mark.parametrize(
    "statement",
    [
        "import modelopt_typed_recipes",
        "import modelopt_typed_recipes.catalog as c; list(c.ARCHITECTURES)",
        ("import modelopt_typed_recipes.bridges.megatron_flags as m, modelopt_typed_recipes.catalog as c; "
         "[m.to_megatron_args(a) for a in c.list_archs()]"),
        "import modelopt_typed_recipes.catalog.profiles as p; p.list_profiles()",
    ],
)
def test_imports_stay_light(statement: str) -> None:
    heavy = ",".join(repr(h) for h in HEAVY)
    out = _fresh(f"import sys\n{statement}\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ({heavy},)))")
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["list"], ["show", "qwen3-8b"], ["flags", "qwen3-8b"], ["list", "--json"],
                                  ["show", "deepseek-r1", "--json"], ["validate", "__FILE__"], ["profiles"]])
def test_cli_paths_import_no_heavy_modules(argv: list[str], tmp_path: Path) -> None:
    spec = tmp_path / "m.yaml"
    spec.write_text(to_yaml(get_arch("tiny-dense")))
    argv = [str(spec) if a == "__FILE__" else a for a in argv]
    heavy = ",".join(repr(h) for h in HEAVY[:4])
    code = (
        "import sys, io, contextlib\n"
        "from modelopt_typed_recipes.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()): rc = main({argv!r})\n"
        f"print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ({heavy},)))"
    )
    assert _fresh(code).stdout.strip() == "0 []"


def test_module_entry_point_exit_code() -> None:
    ok = subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", "show", "mixtral", "--json"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["hf_id"] == "mistralai/Mixtral-8x7B-v0.1"
    bad = subprocess.run([sys.executable, "-m", "modelopt_typed_recipes", "flags", "no-such-model"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("error:")
