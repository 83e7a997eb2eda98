"""Calibration text from a Hugging Face dataset on this machine (``TextData.hf_dataset``)."""

from __future__ import annotations

import sys

import pytest

from modelopt_typed_recipes.errors import DataError, SpecError
from modelopt_typed_recipes.runtime import data as D
from modelopt_typed_recipes.spec.recipe import TextData

datasets = pytest.importorskip("datasets")

# real text: the package's reference corpus, one document per row
DOCS = [d for d in D.BUILTIN_FILES["reference-heldout"].read_text(encoding="utf-8").split(D.DOC_SEPARATOR) if d.strip()]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    datasets.Dataset.from_dict({"article": DOCS, "id": list(range(len(DOCS)))}).save_to_disk(str(root / "flat"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"article": DOCS[:5]}),
                          "validation": datasets.Dataset.from_dict({"article": DOCS[5:9]})}).save_to_disk(
        str(root / "splits"))
    return root


def test_rows_of_the_text_column_in_order(saved):
    td = TextData(hf_dataset=str(saved / "flat"), text_field="article", num_samples=100_000, seq_length=256)
    assert D.read_documents(td) == DOCS
    small = TextData(hf_dataset=str(saved / "flat"), text_field="article", num_samples=1, seq_length=8)
    got = D.read_documents(small)  # stops once there is text enough for the windows
    assert got == DOCS[: len(got)] and len(got) < len(DOCS)


def test_split_of_a_dataset_dict_and_same_windows_as_files(saved, tmp_path):
    td = TextData(hf_dataset=str(saved / "splits"), split="validation", text_field="article", num_samples=8,
                  seq_length=64)
    assert D.read_documents(td) == DOCS[5:9]
    tok = D.load_tokenizer(None)
    files = []
    for i, d in enumerate(DOCS[5:9]):
        f = tmp_path / f"{i}.txt"
        f.write_text(d, encoding="utf-8")
        files.append(str(f))
    same = TextData(files=tuple(files), num_samples=8, seq_length=64)
    assert D.data_hash(D.token_windows(td, tok)) == D.data_hash(D.token_windows(same, tok))


@pytest.mark.parametrize(
    ("kw", "path", "hint"),
    [
        (dict(split="valdation"), "calibration.split", "did you mean 'validation'"),
        (dict(split="test"), "calibration.split", "splits: train, validation"),
        (dict(text_field="articles"), "calibration.text_field", "did you mean 'article'"),
    ],
)
def test_wrong_split_or_column_names_the_field(saved, kw, path, hint):
    td = TextData(hf_dataset=str(saved / "splits"), **{"text_field": "article", **kw})
    with pytest.raises(DataError) as err:
        D.check_text(td)
    assert err.value.path == path and hint in err.value.hint


def test_missing_dataset_and_missing_package(tmp_path, monkeypatch):
    td = TextData(hf_dataset=str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        D.check_text(td)
    assert err.value.path == "calibration.hf_dataset"
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="needs the `datasets` package"):
        D.check_text(td)


def test_exactly_one_text_source():
    with pytest.raises(SpecError) as err:
        TextData(dataset="reference-train", hf_dataset="cnn_dailymail")
    assert err.value.path == "dataset" and "got dataset, hf_dataset" in err.value.message
    with pytest.raises(SpecError, match="got none"):
        TextData()
