"""The model-type table of the Hugging Face bridge against the installed transformers, and what reading real
config.json files showed (issue 10 item 6): defaults, transformers 5's spellings, GELU's tanh approximation,
remote code, bounded reading, active-parameter conventions and max_position_embeddings notes."""

from __future__ import annotations

import copy
import inspect
import json
import math
from pathlib import Path

import pytest

from modelopt_typed_recipes.bridges.hf_config import (
    MAX_BYTES,
    MODEL_TYPES,
    diff_hf_config,
    from_hf_config,
    load_hf_config,
    parse_config_json,
    read_config_json,
    remote_code,
)
from modelopt_typed_recipes.bridges.hf_config.model_types import ACTIVATIONS, BY_NAME
from modelopt_typed_recipes.catalog import get_arch, list_archs
from modelopt_typed_recipes.errors import SpecError

FACTS_PATH = Path(__file__).resolve().parent / "data" / "hf-config-facts.json"
FACTS: dict[str, dict] = json.loads(FACTS_PATH.read_text())["models"]
REAL = {k: v for k, v in FACTS.items() if v.get("model_type")}


def fact(hf_id: str) -> dict:
    return copy.deepcopy(FACTS[hf_id])


_META = ("config_source", "fields_absent_from_config", "derived_not_in_config", "megatron_crosscheck",
         "verification_note", "verified")


def real_config(hf_id: str) -> dict:
    """The config.json as the checkpoint has it: the facts file's bookkeeping keys and the nulls it adds for
    keys the file lacks are removed, and "Infinity" is a number again."""
    cfg = fact(hf_id)
    absent = set(cfg.get("fields_absent_from_config") or ())
    if "_flattened_from" in cfg:  # Llama-4: the text model's keys were copied to the top level
        text = {**cfg["text_config"], "model_type": cfg.get("text_model_type", "llama4_text")}
        cfg = {"model_type": cfg["model_type"], "architectures": cfg["architectures"], "text_config": text}
    for key in _META:
        cfg.pop(key, None)
    for node in (cfg, cfg.get("text_config")):
        if isinstance(node, dict):
            for key in [k for k in node if k in absent and node[k] is None]:
                del node[key]
            if "time_step_limit" in node:
                node["time_step_limit"] = [float(x) for x in node["time_step_limit"]]
    return cfg


def _llama_cfg() -> dict:
    return {
        "model_type": "llama",
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }


# --------------------------------------------------------------------------- the table against transformers
def _with_class() -> list[str]:
    return [t.name for t in MODEL_TYPES if t.config_class is not None]


@pytest.mark.parametrize("name", _with_class())
def test_defaults_are_transformers_config_class_defaults(name: str) -> None:
    """Each default in the table is what transformers' config class holds when built with no arguments."""
    transformers = pytest.importorskip("transformers")
    entry = BY_NAME[name]
    config = getattr(transformers, str(entry.config_class))()
    for key, ours in entry.defaults.items():
        if key in entry.not_configured:
            assert not hasattr(config, key), f"{name}.{key} is configurable now: compare it instead"
            continue
        assert hasattr(config, key), f"transformers' {entry.config_class} has no {key}"
        theirs = getattr(config, key)
        if key == "rope_parameters" and transformers.__version__ < "5":
            continue  # transformers 4 keeps rope_theta / rope_scaling apart
        assert theirs == ours, (name, key, theirs, ours)


def test_defaults_named_in_issue_10() -> None:
    """The four the issue listed, read straight from transformers."""
    transformers = pytest.importorskip("transformers")
    if transformers.__version__ < "5":
        pytest.skip("transformers 5 keeps partial_rotary_factor in rope_parameters")
    assert transformers.GPTNeoXConfig().rope_parameters["partial_rotary_factor"] == 0.25
    assert BY_NAME["gpt_neox"].rope_defaults["partial_rotary_factor"] == 0.25
    assert transformers.DeepseekV3Config().routed_scaling_factor == BY_NAME["deepseek_v3"].defaults[
        "routed_scaling_factor"] == 2.5
    assert transformers.DeepseekV2Config().q_lora_rank == BY_NAME["deepseek_v2"].defaults["q_lora_rank"] == 1536
    # DeepSeek-V3's scoring function is not configurable in transformers: its MoE always uses a sigmoid,
    # DeepSeek-V2's a softmax
    from transformers.models.deepseek_v2 import modeling_deepseek_v2 as v2
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as v3

    assert ".sigmoid()" in inspect.getsource(v3) and BY_NAME["deepseek_v3"].defaults["scoring_func"] == "sigmoid"
    assert "router_logits.softmax(" in inspect.getsource(v2)
    assert BY_NAME["deepseek_v2"].defaults["scoring_func"] == "softmax"


def test_missing_keys_take_the_model_types_defaults() -> None:
    neox = fact("EleutherAI/gpt-neox-20b")
    del neox["rotary_pct"]
    assert from_hf_config(neox).position.percent == 0.25  # type: ignore[union-attr]

    r1 = fact("deepseek-ai/DeepSeek-R1")
    for key in ("scoring_func", "routed_scaling_factor", "n_group", "topk_group", "topk_method"):
        r1.pop(key, None)
    moe = from_hf_config(r1).moe
    assert moe is not None and moe.router_score_function == "sigmoid" and moe.router_topk_scaling_factor == 2.5
    assert (moe.router_num_groups, moe.router_group_topk) == (8, 4) and moe.router_enable_expert_bias

    lite = fact("deepseek-ai/DeepSeek-V2-Lite")
    assert lite["q_lora_rank"] is None and from_hf_config(lite).attention.q_lora_rank is None  # type: ignore[union-attr]
    del lite["q_lora_rank"]
    assert from_hf_config(lite).attention.q_lora_rank == 1536  # type: ignore[union-attr]


def test_kimi_reads_like_deepseek_v3() -> None:
    assert BY_NAME["kimi_k2"].defaults == BY_NAME["deepseek_v3"].defaults


# --------------------------------------------------------------------------- transformers 5 writes
@pytest.mark.parametrize("hf_id", sorted(k for k, v in REAL.items() if BY_NAME[v["model_type"]].config_class))
def test_real_configs_resaved_by_transformers_read_back(hf_id: str, tmp_path: Path) -> None:
    """Load each real config.json in transformers, save it again (its own spellings, e.g. Qwen3-MoE's
    num_local_experts in transformers 5), and read that file: the same architecture comes back."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(real_config(hf_id)))
    assert diff_hf_config(from_hf_config(fact(hf_id)), real_config(hf_id)) == []
    transformers.AutoConfig.from_pretrained(src).save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    assert diff_hf_config(from_hf_config(fact(hf_id)), saved) == [], hf_id
    assert load_hf_config(out).params_total == from_hf_config(fact(hf_id)).params_total


def test_qwen3_moe_num_local_experts() -> None:
    cfg = fact("Qwen/Qwen3-30B-A3B")
    cfg["num_local_experts"] = cfg.pop("num_experts")
    assert from_hf_config(cfg).moe.num_experts == 128  # type: ignore[union-attr]
    del cfg["num_local_experts"]
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == "num_experts" and "num_local_experts" in err.value.hint


# --------------------------------------------------------------------------- activations
def test_activation_table_matches_transformers_functions() -> None:
    """Each hidden_act the bridge reads computes what its ModelArch activation means (tanh vs exact GELU)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.activations import ACT2FN

    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    exact, tanh = torch.nn.functional.gelu(x), torch.nn.functional.gelu(x, approximate="tanh")
    assert (exact - tanh).abs().max() > 1e-4  # the two are distinguishable at this resolution
    reference = {
        "gelu": exact,
        "gelu_tanh": tanh,
        "squared_relu": torch.relu(x) ** 2,
        "swiglu": torch.nn.functional.silu(x),
        "geglu": exact,
        "geglu_tanh": tanh,
    }
    for name, (gated, plain) in ACTIVATIONS.items():
        got = ACT2FN[name](x)
        for kind in (gated, plain):
            if kind is not None:
                assert torch.allclose(got, reference[kind], atol=1e-6), (name, kind)


@pytest.mark.parametrize("act", ["gelu_new", "gelu_fast", "gelu_pytorch_tanh"])
def test_tanh_gelus(act: str) -> None:
    neox = fact("EleutherAI/gpt-neox-20b")
    neox["hidden_act"] = act
    assert from_hf_config(neox).activation.type == "gelu_tanh"
    assert from_hf_config({**_llama_cfg(), "hidden_act": act}).activation.type == "geglu_tanh"
    neox["hidden_act"] = "gelu"
    assert from_hf_config(neox).activation.type == "gelu"


def test_gpt_neox_flags_use_openai_gelu() -> None:
    from modelopt_typed_recipes.bridges.megatron_flags import to_megatron_args

    assert "--openai-gelu" in to_megatron_args(get_arch("gpt-neox-20b"))
    assert "--openai-gelu" not in to_megatron_args(get_arch("llama-3.1-8b-instruct"))


# --------------------------------------------------------------------------- remote code
def test_auto_map_does_not_set_trust_remote_code() -> None:
    cfg = fact("deepseek-ai/DeepSeek-R1")
    assert "auto_map" in cfg
    arch = from_hf_config(cfg)
    assert arch.trust_remote_code is False
    assert any("auto_map" in n and "trust_remote_code left off" in n for n in arch.notes)
    assert from_hf_config(cfg, trust_remote_code=True).trust_remote_code is True
    assert remote_code(_llama_cfg()) is None and remote_code(cfg) is not None

    kimi = from_hf_config(fact("moonshotai/Kimi-K2-Instruct"))
    assert kimi.trust_remote_code is False
    assert any("transformers has no kimi_k2 model" in n for n in kimi.notes)
    nemotron_h = from_hf_config(fact("nvidia/Nemotron-H-8B-Base-8K"))
    assert nemotron_h.trust_remote_code is False


def test_unknown_model_type_with_auto_map_needs_remote_code() -> None:
    cfg = {**_llama_cfg(), "model_type": "my_arch", "auto_map": {"AutoConfig": "configuration_my.MyConfig"}}
    with pytest.raises(SpecError) as err:
        from_hf_config(cfg)
    assert err.value.path == "model_type" and "own code (auto_map)" in err.value.message


def test_cli_from_hf_trust_remote_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelopt_typed_recipes.cli import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps(fact("deepseek-ai/DeepSeek-V2-Lite")))
    assert main(["from-hf", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["trust_remote_code"] is False
    assert err.startswith("# note: config.json names the checkpoint's own code (auto_map")
    assert "--trust-remote-code sets it" in err
    assert main(["from-hf", str(path), "--json", "--trust-remote-code"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["trust_remote_code"] is True and "as asked" in err
    path.write_text(json.dumps(fact("Qwen/Qwen3-8B")))
    assert main(["from-hf", str(path)]) == 0
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- bounded reading
def test_dev_zero_stops_at_the_size_limit() -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(SpecError) as err:
        read_config_json("/dev/zero")
    assert err.value.path == "/dev/zero" and "larger than" in err.value.message


def test_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b" " * (MAX_BYTES + 1))
    with pytest.raises(SpecError, match="larger than"):
        load_hf_config(path)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'{"model_type": "llama\xff"}', "not UTF-8"),
        (b"\xfe\xff\x00{", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"a":' * 70 + b"1" + b"}" * 70, "nested deeper"),
        (b'{"vocab_size": ' + b"9" * 5000 + b"}", "digits"),
        (b'{"model_type": "\\ud800"}', "surrogate"),
        (b"[1, 2]", "expected a JSON object"),
        (b"{not json", "not valid JSON"),
    ],
)
def test_bad_bytes_are_spec_errors(data: bytes, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(data)
    with pytest.raises(SpecError) as err:
        load_hf_config(path)
    assert fragment in err.value.message and err.value.path == str(path)
    assert len(str(err.value)) < 300


def test_utf8_bom_and_deep_python_values() -> None:
    assert parse_config_json(b"\xef\xbb\xbf" + json.dumps(_llama_cfg()).encode())["hidden_size"] == 64
    deep: list = []
    node = deep
    for _ in range(5000):  # a Python caller's value: repr in messages is cut, no RecursionError
        node.append([])
        node = node[0]
    with pytest.raises(SpecError) as err:
        from_hf_config({**_llama_cfg(), "hidden_size": deep})
    assert err.value.path == "hidden_size" and len(str(err.value)) < 200
    with pytest.raises(SpecError):
        from_hf_config({**_llama_cfg(), "rope_theta": 10**400})


# --------------------------------------------------------------------------- params_active conventions
@pytest.mark.parametrize(
    ("name", "with_embedding", "without"),
    [("deepseek-v2-lite", 2.66e9, 2.45e9), ("gpt-oss-20b", 4.19e9, 3.61e9), ("qwen3-0.6b", None, None)],
)
def test_active_parameters_with_and_without_input_embedding(
    name: str, with_embedding: float | None, without: float | None
) -> None:
    arch = get_arch(name)
    embedding = arch.vocab.size * arch.hidden_size
    if with_embedding is None:  # tied embeddings: the shared matrix is the output layer, so it stays
        assert arch.tie_embeddings and arch.params_active_no_embedding == arch.params_active
        return
    assert arch.params_active - arch.params_active_no_embedding == embedding
    assert math.isclose(arch.params_active, with_embedding, rel_tol=0.005)
    assert math.isclose(arch.params_active_no_embedding, without, rel_tol=0.005)  # the vendor's card


def test_show_prints_both_active_counts(capsys: pytest.CaptureFixture[str]) -> None:
    from modelopt_typed_recipes.cli import main

    assert main(["show", "gpt-oss-20b"]) == 0
    out = capsys.readouterr().out
    assert "4.19B" in out and "3.61B" in out and "active w/o embedding" in out
    assert main(["show", "gpt-oss-20b", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params_active_no_embedding"] == get_arch("gpt-oss-20b").params_active_no_embedding


# --------------------------------------------------------------------------- registry notes
def test_max_position_differences_are_noted() -> None:
    """An entry keeping Megatron-LM's max_position_embeddings where config.json says otherwise says so."""
    facts = {k.lower(): v for k, v in REAL.items()}
    checked = 0
    for arch in list_archs():
        cfg = facts.get((arch.hf_id or "").lower())
        if cfg is None:
            continue
        theirs = (cfg.get("text_config") or cfg)["max_position_embeddings"]
        if theirs != arch.max_position_embeddings:
            checked += 1
            assert any("max_position_embeddings" in n and str(theirs) in n for n in arch.notes), arch.name
    assert checked >= 10


@pytest.mark.parametrize(
    ("content", "kind", "fragment"),
    [
        (b'{"model_type": "my_arch", "auto_map": {"AutoModelForCausalLM": "m.M"}}', "CompatibilityError", "own code"),
        (b'{"model_type": "llama\xff"}', "SpecError", "not UTF-8"),
        (b"[" * 10_000, "SpecError", "deeper than"),
    ],
)
def test_check_reads_the_checkpoints_config_json(tmp_path: Path, content: bytes, kind: str, fragment: str) -> None:
    """check refuses, before any work, a checkpoint whose config.json transformers would fail on."""
    from modelopt_typed_recipes.plan.check import Environment, check_recipe
    from modelopt_typed_recipes.spec.recipe import HFCheckpoint, Recipe
    from modelopt_typed_recipes.spec.techniques import Quantize

    (tmp_path / "config.json").write_bytes(content)
    rec = Recipe(model="tiny-dense", source=HFCheckpoint(path=str(tmp_path)), stages=(Quantize(format="fp8"),),
                 output_dir=str(tmp_path / "out"), backend="hf")
    errors = check_recipe(rec, env=Environment(modelopt="0.47.0")).errors
    assert any(type(e).__name__ == kind and e.path == "source.path" and fragment in e.message for e in errors), errors
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config_of("tiny-dense")))
    assert not [e for e in check_recipe(rec, env=Environment(modelopt="0.47.0")).errors if e.path == "source.path"]


def to_hf_config_of(name: str) -> dict:
    from modelopt_typed_recipes.bridges.hf_config import to_hf_config

    return to_hf_config(get_arch(name))
