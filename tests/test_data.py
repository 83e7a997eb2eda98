"""Calibration windows: one loader for both backends, and a stage's own sample count/length honoured."""

from __future__ import annotations

import pytest

from modelopt_typed_recipes.plan.check import Environment, check_recipe
from modelopt_typed_recipes.runtime import data
from modelopt_typed_recipes.spec.recipe import RandomInit, Recipe, TextData
from modelopt_typed_recipes.spec.techniques import AutoQuantize, Export, Quantize


def _windows(cal, *stages):
    """The calibration windows the run's plan gives each stage (None: the stage reads no calibration data)."""
    rec = Recipe(model="tiny-dense", source=RandomInit(), stages=stages, calibration=cal, output_dir="/tmp/x",
                 backend="hf")
    return [s.calibration for s in check_recipe(rec, env=Environment()).stages]


def test_stage_batches_honour_a_stage_s_own_calibration_size() -> None:
    cal = TextData(dataset="reference-train", num_samples=8, seq_length=64, batch_size=4)
    tok = data.load_tokenizer(None)
    windows = data.token_windows(cal, tok)
    (plan,) = _windows(cal, Quantize(format="fp8"))
    default = data.stage_batches(plan, cal, tok, windows)
    assert [tuple(b.shape) for b in default] == [(4, 64), (4, 64)]
    (plan,) = _windows(cal, Quantize(format="fp8", calibration_samples=6, calibration_seq_length=32))
    mine = data.stage_batches(plan, cal, tok, windows)
    assert [tuple(b.shape) for b in mine] == [(4, 32), (2, 32)]
    # the same text: the stage's windows are the first tokens of the recipe's
    assert mine[0][0].tolist() == windows[0, :32].tolist()
    auto_plan, export_plan = _windows(cal, AutoQuantize(effective_bits=6.0, formats=("int4_awq", "fp8"),
                                                        calibration_samples=4), Export())
    auto = data.stage_batches(auto_plan, cal, tok, windows)
    assert [tuple(b.shape) for b in auto] == [(4, 64)]
    assert export_plan is None  # export reads no calibration data
    assert [tuple(b.shape) for b in data.stage_batches(export_plan, cal, tok, windows)] == [(4, 64), (4, 64)]


def _one_at_a_time(docs, tokenizer, need):
    """The windows' ids as a user would cut them: each document tokenised alone, then end-of-text."""
    ids = []
    for d in docs:
        ids += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= need:
            break
    return ids


def test_batched_tokenisation_gives_the_ids_of_one_document_at_a_time(monkeypatch) -> None:
    """Documents are encoded in batches (a fast tokenizer uses every core); the ids, where they stop included, are
    those of one document at a time, for the reference and the byte tokenizer, short and long needs alike."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    docs = [d for d in data.BUILTIN_FILES["reference-heldout"].read_text().split(data.DOC_SEPARATOR) if d.strip()]
    ref = data.load_tokenizer(None)
    monkeypatch.setattr(data, "_BATCH_CHARS", 5_000)  # many batches even for a short text

    @settings(max_examples=30, deadline=None)
    @given(need=st.integers(1, 40_000), start=st.integers(0, len(docs) - 1), byte=st.booleans())
    def check(need, start, byte):
        tok = data.ByteTokenizer() if byte else ref
        part = docs[start:] + docs[:start]
        assert data._token_ids(part, tok, need) == _one_at_a_time(part, tok, need)

    check()


def test_text_read_for_the_check_is_reused_for_the_windows_until_a_file_changes(tmp_path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "first document"}\n{"text": "second"}\n')
    cal = TextData(files=(str(f),), num_samples=1, seq_length=4)
    assert data.check_text(cal) == len("first document") + len("second")
    docs = data.read_documents(cal)
    docs.append("a caller's own list")  # a copy each time: the kept read cannot be changed from outside
    assert data.read_documents(cal) == ["first document", "second"]
    f.write_text('{"text": "changed, and longer than before"}\n')
    assert data.read_documents(cal) == ["changed, and longer than before"]
    f.unlink()
    import pytest

    with pytest.raises(data.DataError, match="does not exist"):
        data.read_documents(cal)


def test_a_tokenizer_folder_whose_config_transformers_refuses_is_a_data_error(tmp_path) -> None:
    """AutoTokenizer reads config.json as well: a mistyped value there raised huggingface_hub's
    StrictDataclassFieldValidationError past the OSError/ValueError this caught (a bare traceback in a run)."""
    import json
    import shutil

    from modelopt_typed_recipes.errors import DataError

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(data.REFERENCE_DIR / name, tmp_path / name)
    assert data.load_tokenizer(tmp_path).eos_token_id is not None
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": "32"}))
    with pytest.raises(DataError, match="no usable tokenizer.*vocab_size") as err:
        data.load_tokenizer(tmp_path, path="source.hf_reference")
    assert err.value.path == "source.hf_reference"
