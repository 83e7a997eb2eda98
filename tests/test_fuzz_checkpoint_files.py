"""Fuzzing the files ``check`` and ``run`` read beside a user's checkpoint before any GPU work: a Megatron
checkpoint's ``model_arch.yaml`` (as the source, and as a distillation teacher) and info file
(``mtr_checkpoint.json``), a Hugging Face folder's ``config.json`` and ``hf_quant_config.json`` (as the source
and as a teacher), and a Megatron checkpoint's ``source.hf_reference`` folder.

Each file is replaced by corrupted, truncated, huge, wrongly-typed, non-UTF-8 and adversarial bytes, or by a
directory, a symlink to one, a FIFO, ``/dev/zero``, a dangling link or an unreadable file. ``check_recipe`` must
then return (no exception but the package's typed errors, no hang, no blow-up), every error must name a field,
an error the file causes must be at that file's field, and nothing may be written (the output folder stays
absent). A valid file written in an unusual but legal way (unknown keys, a byte-order mark, other JSON/YAML
layouts) must not be refused. ``run_post_training`` (Hugging Face backend, the shipped reference model, on the
CPU) refuses a broken ``config.json`` with a typed error and writes nothing.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from _fuzz import PAYLOADS, TimeLimitExceeded, junk, time_limit
from modelopt_typed_recipes.catalog import get_arch
from modelopt_typed_recipes.errors import RecipeError
from modelopt_typed_recipes.plan.check import Environment, check_recipe
from modelopt_typed_recipes.plan.sources import builtin_weights
from modelopt_typed_recipes.spec.recipe import Builtin, HFCheckpoint, MegatronCheckpoint, Recipe
from modelopt_typed_recipes.spec.serde import to_dict, to_yaml
from modelopt_typed_recipes.spec.techniques import Distill, Export, Quantize

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
SECONDS = 20
"""Wall seconds one check may take before it counts as a hang (a FIFO read waits forever; a check takes ~0.1 s)."""
CPU = Environment(megatron_core="0.16.1", modelopt="0.47.0")
GPU_TE = Environment(megatron_core="0.19.2", modelopt="0.47.0", cuda=True, gpu_count=8, transformer_engine=True)
REF = builtin_weights(get_arch("reference-llama"))
ARCH = get_arch("reference-llama")
CONFIG = json.loads((REF / "config.json").read_text())
INFO = {"layer_spec": "te", "trained_while_quantized": False}
QUANT_CONFIG = {"producer": {"name": "modelopt", "version": "0.47.0"},
                "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None}}
KV_ONLY = {"producer": {"name": "modelopt", "version": "0.47.0"},
           "quantization": {"quant_algo": None, "kv_cache_quant_algo": "FP8"}}
"""``hf_quant_config.json`` of a ModelOpt export that quantized only the KV cache: its weights are stored as they were."""
KV_ONLY_QC = {"ignore": [], "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"},
              "producer": {"name": "modelopt", "version": "0.47.0"}, "quant_method": "modelopt"}
"""Its ``quantization_config`` (``convert_hf_quant_config_format(KV_ONLY)``, checked against ModelOpt below)."""


@attrs.frozen
class Target:
    """One file a check reads: where it lives, its valid bytes (None: absent when valid), the recipe that reads
    it, and the field paths an error it causes may carry."""

    name: str
    folder: str
    file: str
    valid: bytes | None
    recipe: Callable[[Path], Recipe]
    env: Environment
    fields: tuple[str, ...]


def _megatron(root: Path, *stages: Any) -> Recipe:
    return Recipe(model="reference-llama", backend="megatron", output_dir=str(root / "out"),
                  source=MegatronCheckpoint(path=str(root / "mck"), hf_reference=str(root / "ref")),
                  stages=stages or (Quantize(format="fp8"), Export()))


def _hf(root: Path, *stages: Any, source: Any = None) -> Recipe:
    return Recipe(model="reference-llama", backend="hf", device="cpu", output_dir=str(root / "out"),
                  source=source or HFCheckpoint(path=str(root / "hf")), stages=stages or (Quantize(format="fp8"),))


def _teacher(root: Path, kind: str) -> Distill:
    src = MegatronCheckpoint(path=str(root / "tck")) if kind == "megatron" else HFCheckpoint(path=str(root / "hft"))
    return Distill(teacher=src, steps=2)


_CONFIG = json.dumps(CONFIG, indent=2).encode()
_ARCH = to_yaml(ARCH).encode()
TARGETS = {t.name: t for t in [
    Target("info", "mck", MegatronCheckpoint.INFO_FILE, json.dumps(INFO).encode(), _megatron, GPU_TE,
           ("source.path",)),
    Target("arch", "mck", "model_arch.yaml", _ARCH, _megatron, GPU_TE, ("source.path", "model")),
    Target("teacher-arch", "tck", "model_arch.yaml", _ARCH,
           lambda root: _megatron(root, Quantize(format="fp8"), _teacher(root, "megatron")), GPU_TE,
           ("stages[1].teacher",)),
    Target("reference", "ref", "config.json", _CONFIG, _megatron, GPU_TE, ("source.hf_reference", "model")),
    Target("config", "hf", "config.json", _CONFIG, _hf, CPU, ("source.path", "model")),
    Target("quant-config", "hf", "hf_quant_config.json", None, _hf, CPU, ("source.path",)),
    Target("teacher-config", "hft", "config.json", _CONFIG,
           lambda root: _hf(root, Quantize(format="fp8"), _teacher(root, "hf"), source=Builtin()), CPU,
           ("stages[1].teacher",)),
]}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoint folders holding every target's valid file: each recipe checks clean before any is damaged."""
    root = tmp_path_factory.mktemp("ckpt-files")
    for name in ("mck", "tck"):
        (root / name).mkdir()
        (root / name / "metadata.json").write_text("{}")
    for name in ("ref", "hf", "hft"):
        (root / name).mkdir()
    for t in TARGETS.values():
        restore(root, t)
        assert check_recipe(t.recipe(root), env=t.env).errors == (), t.name
    return root


def restore(root: Path, t: Target) -> None:
    f = root / t.folder / t.file
    if f.is_symlink() or f.is_fifo():
        f.unlink()
    elif f.is_file():
        f.chmod(0o644)
        f.unlink()
    elif f.is_dir():
        shutil.rmtree(f)
    if t.valid is not None:
        f.write_bytes(t.valid)


def checked(root: Path, t: Target) -> tuple[RecipeError, ...]:
    """``check_recipe`` of the target's recipe with its file as it is now: only typed errors, each naming a
    field, those the file causes at its own field; nothing written."""
    try:
        with time_limit(SECONDS):
            report = check_recipe(t.recipe(root), env=t.env)
    except TimeLimitExceeded:
        pytest.fail(f"{t.name}: the check ran past {SECONDS} s")
    except RecipeError as err:  # a typed error raised rather than reported is fine too
        errors: tuple[RecipeError, ...] = (err,)
    else:
        json.dumps(report.to_dict())
        errors = report.errors
    for e in errors:
        assert e.path, (t.name, e)
        assert e.path.startswith(t.fields), (t.name, e)
        assert "\n" not in str(e) and len(str(e)) < 3000, (t.name, e)
    assert not (root / "out").exists(), f"{t.name}: the check wrote the output folder"
    return errors


def with_file(root: Path, t: Target, data: bytes) -> tuple[RecipeError, ...]:
    f = root / t.folder / t.file
    restore(root, t)
    f.write_bytes(data)
    try:
        return checked(root, t)
    finally:
        restore(root, t)


# --------------------------------------------------------------------------- damaged bytes
def _document(t: Target) -> Any:
    if t.name == "quant-config":
        return copy.deepcopy(QUANT_CONFIG)
    return yaml.safe_load(t.valid) if t.file.endswith(".yaml") else json.loads(t.valid)


@st.composite
def damaged(draw: Any, t: Target) -> bytes:
    """The valid document with a key's value swapped for junk (a wrong type), deleted, or a junk key added; then
    written as JSON or YAML and perhaps truncated, spliced with an adversarial payload or random bytes."""
    doc = _document(t)
    if isinstance(doc, dict) and doc:
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from(sorted(doc)))
            action = draw(st.sampled_from(["set", "set", "delete", "add"]))
            if action == "set":
                doc[key] = draw(junk)
            elif action == "delete":
                del doc[key]
            else:
                doc[draw(st.text(max_size=8))] = draw(junk)
    elif draw(st.booleans()):
        doc = draw(junk)
    try:
        text = (yaml.safe_dump(doc, allow_unicode=True) if t.file.endswith(".yaml") and draw(st.booleans())
                else json.dumps(doc))
    except (TypeError, ValueError):  # an integer beyond what str() prints
        text = "{}"
    data = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
        how = draw(st.sampled_from(["truncate", "payload", "bytes"]))
        cut = draw(st.integers(0, len(data)))
        if how == "truncate":
            data = data[:cut]
            continue
        piece = draw(st.sampled_from(PAYLOADS)) if how == "payload" else draw(st.binary(max_size=8))
        piece = piece if isinstance(piece, bytes) else piece.encode("utf-8", "surrogatepass")
        data = data[:cut] + piece + data[min(len(data), cut + draw(st.integers(0, 12))):]
    return data


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_damaged_files_end_in_typed_errors_at_their_field(root, name):
    t = TARGETS[name]

    @FUZZ
    @given(data=damaged(t))
    # each was a bare traceback, a hang or a blow-up, or refused nothing while the run failed on it:
    @example(data=b"[" * 100_000)  # info: RecursionError escaped check_recipe
    @example(data=b'{"layer_spec": "TE"}')  # info: the run built the default spec over 'te' shards
    @example(data=b'{"layer_spec": "te", "trained_while_quantized": "yes"}')  # info: exported as calibrated
    @example(data=b"\xff\xfe" + (t.valid or b"{}"))  # teacher-arch: the run's read raised UnicodeDecodeError
    @example(data=json.dumps({**CONFIG, "vocab_size": "32"}).encode())  # config: StrictDataclassFieldValidationError
    @example(data=json.dumps({**CONFIG, "num_attention_heads": 0}).encode())  # config: the run's ZeroDivisionError
    @example(data=json.dumps({**CONFIG, "auto_map": {}, "model_type": ["x"]}).encode())  # config: unhashable type
    def run(data: bytes) -> None:
        with_file(root, t, data)

    run()


def test_refusals_name_the_file_and_field(root):
    """The pinned cases above, refused where the run would have failed (not just "no traceback")."""
    cases = [
        ("info", b"[" * 100_000, "source.path", "mtr_checkpoint.json cannot be read: nesting deeper"),
        ("info", b'{"layer_spec": "TE"}', "source.path", "layer_spec 'TE' is not one of local, modelopt, te"),
        ("info", b'{"trained_while_quantized": "yes"}', "source.path", "trained_while_quantized 'yes' is not"),
        ("teacher-arch", b"\xff\xfe" + _ARCH, "stages[1].teacher.path", "model_arch.yaml cannot be read"),
        ("teacher-arch", b"num_layers: [", "stages[1].teacher.path", "model_arch.yaml cannot be read"),
        ("config", json.dumps({**CONFIG, "vocab_size": "32"}).encode(), "source.path",
         "config.json: vocab_size: expected an integer, got '32'"),
        ("config", json.dumps({**CONFIG, "num_attention_heads": 0}).encode(), "source.path",
         "config.json: num_attention_heads: must be a positive integer"),
        ("config", json.dumps({**CONFIG, "rms_norm_eps": float("nan")}).encode(), "source.path",
         "config.json: rms_norm_eps: expected a finite number"),
        ("config", b"[" * 100 + b"]" * 100, "source.path", "its config.json: nested deeper than 64 levels"),
        ("quant-config", b"{}", "source.path", "is a quantized ModelOpt export"),
        # transformers' loader raised OSError ("not a valid JSON file") in the run on a config the check accepted
        ("config", b"\xef\xbb\xbf" + _CONFIG, "source.path", "begins with a UTF-8 byte-order mark"),
        ("teacher-config", b"\xef\xbb\xbf" + _CONFIG, "stages[1].teacher.path", "byte-order mark"),
        # the Megatron run loads its tokenizer from hf_reference after loading the checkpoint, and AutoTokenizer
        # reads config.json: OSError ("not a valid JSON file", a typed DataError only then) or a bare
        # StrictDataclassFieldValidationError
        ("reference", b"{not json", "source.hf_reference", "its config.json: not valid JSON"),
        ("reference", b"\xef\xbb\xbf" + _CONFIG, "source.hf_reference", "byte-order mark"),
        ("reference", json.dumps({**CONFIG, "vocab_size": "32"}).encode(), "source.hf_reference",
         "config.json: vocab_size: expected an integer, got '32'"),
    ]
    for name, data, field, fragment in cases:
        errors = with_file(root, TARGETS[name], data)
        assert any(e.path == field and fragment in e.message for e in errors), (name, fragment, errors)
    # a source's record only checks model (the run builds model, not the record): unreadable is no refusal
    assert with_file(root, TARGETS["arch"], b"\xff\xfe") == ()
    # an export that quantized only the KV cache stores its weights as they were: refused as an export before
    assert with_file(root, TARGETS["quant-config"], json.dumps(KV_ONLY).encode()) == ()
    assert with_file(root, TARGETS["config"], json.dumps({**CONFIG, "quantization_config": KV_ONLY_QC}).encode()) == ()
    weights = {**KV_ONLY_QC, "quant_algo": "FP8", "config_groups": {"group_0": {"targets": ["Linear"]}}}
    for name, data in [("quant-config", json.dumps({**KV_ONLY, "quantization": QUANT_CONFIG["quantization"]})),
                       ("quant-config", json.dumps({"quantization": {"kv_cache_quant_algo": "FP8"}})),
                       ("config", json.dumps({**CONFIG, "quantization_config": weights}))]:
        assert [e.path for e in with_file(root, TARGETS[name], data.encode())] == ["source.path"], data


# --------------------------------------------------------------------------- not a regular file
def _place(f: Path, kind: str, t: Target, root: Path) -> None:
    if kind == "symlink-to-dir":
        f.symlink_to(root / t.folder)
    elif kind == "dir":
        f.mkdir()
    elif kind == "fifo":
        os.mkfifo(f)
    elif kind == "dev-zero":
        f.symlink_to("/dev/zero")
    elif kind == "dangling":
        f.symlink_to(root / "no-such-file")
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "huge":  # valid content beyond every bound (config.json's 4 MiB, a record's 1 MiB)
        f.write_bytes(b" " * (4 * 2**20 + 1) + (t.valid or b"{}"))
    elif kind == "unreadable":
        f.write_bytes(t.valid or b"{}")
        f.chmod(0)


KINDS = ["symlink-to-dir", "dir", "fifo", "dev-zero", "dangling", "empty", "huge", "unreadable"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_files_that_are_not_regular_files(root, name, kind):
    """A FIFO read waited forever (info file) and ``/dev/zero`` ran out of memory (info file, model_arch.yaml):
    only a regular file is read, within its bound."""
    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads a file of mode 000")
    t = TARGETS[name]
    restore(root, t)
    f = root / t.folder / t.file
    f.unlink(missing_ok=True)
    _place(f, kind, t, root)
    try:
        errors = checked(root, t)
    finally:
        restore(root, t)
    if name == "quant-config":  # the marker of an export is a file of that name, whatever it holds
        assert bool(errors) == (kind in ("empty", "huge", "unreadable")), errors
    if kind in ("dir", "symlink-to-dir", "fifo", "dev-zero", "dangling") and name in ("config", "teacher-config"):
        assert any("has no config.json" in e.message for e in errors), errors


@pytest.mark.skipif(os.geteuid() == 0, reason="root searches a folder of mode 000")
@pytest.mark.parametrize("mode", [0o000, 0o600])
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_folder_this_user_cannot_search(root, name, mode):
    """pathlib's ``exists``/``is_file`` pass ``PermissionError`` on: a checkpoint folder of mode 000 (or readable but
    not searchable) escaped ``check`` as a bare PermissionError from the first look inside it. (As root:
    ``unshare -U`` runs this file without the privilege.)"""
    t = TARGETS[name]
    folder = root / t.folder
    folder.chmod(mode)
    try:
        errors = checked(root, t)
    finally:
        folder.chmod(0o755)
    assert [e.path for e in errors if "cannot be read: Permission denied" in e.message] == [
        {"mck": "source.path", "hf": "source.path", "ref": "source.hf_reference"}.get(t.folder,
                                                                                       "stages[1].teacher.path")]


# --------------------------------------------------------------------------- valid but unusual: not refused
def _layouts(draw: Any, doc: Any, *, yaml_ok: bool, bom: bool = True) -> bytes:
    """``doc`` written in one of the legal ways: indented or compact JSON, sorted or not, non-ASCII escaped or
    not, YAML block or flow style with a comment and a document marker, a byte-order mark (``bom``: where the
    reader takes one), CRLF, trailing blanks (no tabs in YAML, JSON included: PyYAML, the run's reader too, refuses
    them there)."""
    style = draw(st.sampled_from(["json", "compact", "yaml", "flow"] if yaml_ok else ["json", "compact"]))
    if style == "json":
        text = json.dumps(doc, indent=draw(st.sampled_from([None, 1, 4] + ([] if yaml_ok else ["\t"]))),
                          sort_keys=draw(st.booleans()),
                          ensure_ascii=draw(st.booleans()))
    elif style == "compact":
        text = json.dumps(doc, separators=(",", ":"))
    else:
        text = "# written by hand\n---\n" + yaml.safe_dump(doc, default_flow_style=style == "flow",
                                                          allow_unicode=True, sort_keys=draw(st.booleans()))
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    text += draw(st.sampled_from(["", "\n", "\n\n", "  \n"] + ([] if yaml_ok else ["\t"])))
    return (b"\xef\xbb\xbf" if bom and draw(st.booleans()) else b"") + text.encode()


_EXTRA = st.dictionaries(st.text(min_size=1, max_size=10).map(lambda k: "x_" + k), junk, max_size=3)


@st.composite
def unusual(draw: Any, t: Target) -> bytes:
    """The target's valid document with unknown keys (junk values) added, optional keys dropped or null where
    null means absent, laid out in a legal way."""
    if t.file == "model_arch.yaml":
        return _layouts(draw, to_dict(ARCH), yaml_ok=True)
    doc = _document(t)
    if t.file == MegatronCheckpoint.INFO_FILE:
        for key in ("layer_spec", "trained_while_quantized"):
            choice = draw(st.sampled_from(["keep", "drop", "null", "other"]))
            if choice == "drop":
                del doc[key]
            elif choice == "null":
                doc[key] = None
            elif choice == "other":
                doc[key] = draw(st.sampled_from(list(MegatronCheckpoint.LAYER_SPECS) if key == "layer_spec"
                                                else [True, False]))
    else:
        for key in draw(st.lists(st.sampled_from(["transformers_version", "use_cache", "architectures",
                                                  "initializer_range", "pad_token_id"]), max_size=3, unique=True)):
            doc.pop(key, None)
        if draw(st.booleans()):
            doc["quantization_config"] = {"quant_method": draw(st.sampled_from(["gptq", "awq", "bitsandbytes"]))}
    doc.update(draw(_EXTRA))
    # transformers' loader refuses a config.json with a BOM
    return _layouts(draw, doc, yaml_ok=False, bom=t.name == "info")


@pytest.mark.parametrize("name", ["info", "arch", "teacher-arch", "reference", "config", "teacher-config"])
def test_valid_but_unusual_files_are_not_refused(root, name):
    t = TARGETS[name]

    @settings(FUZZ, max_examples=25)
    @given(data=unusual(t))
    @example(data=b'{"layer_spec": "local"}' if name == "info" else b"\n" + (t.valid or b"") + b"\n")
    def run(data: bytes) -> None:
        assert with_file(root, t, data) == (), data[:300]

    run()


# --------------------------------------------------------------------------- run_post_training, HF on the CPU
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped reference model, whose config.json each case replaces."""
    out = tmp_path_factory.mktemp("run") / "reference"
    shutil.copytree(REF, out)
    return out


def _run(folder: Path, config: bytes | None, *, quant_config: dict | None = None) -> Path:
    from modelopt_typed_recipes.runtime.api import run_post_training

    if config is not None:
        (folder / "config.json").write_bytes(config)
    if quant_config is not None:
        (folder / "hf_quant_config.json").write_text(json.dumps(quant_config))
    out = folder.parent / "out"
    doc = {"model": "reference-llama", "source": {"type": "hf", "path": str(folder)}, "backend": "hf",
           "device": "cpu", "stages": [{"technique": "quantize", "format": "fp8"}], "output_dir": str(out),
           "calibration": {"dataset": "reference-train", "num_samples": 2, "seq_length": 16, "batch_size": 1}}
    try:
        run_post_training(doc, progress=False)
    finally:
        (folder / "config.json").write_bytes((REF / "config.json").read_bytes())
        (folder / "hf_quant_config.json").unlink(missing_ok=True)
    return out


@pytest.mark.parametrize(("config", "quant_config", "fragment"), [
    # transformers' StrictDataclassFieldValidationError, ZeroDivisionError, and ModelOpt's AssertionError on NaN
    # ranges escaped the run before: its check read what the bridge refused as "the loader says why"
    (json.dumps({**CONFIG, "vocab_size": "32"}).encode(), None, "vocab_size: expected an integer"),
    (json.dumps({**CONFIG, "num_attention_heads": 0}).encode(), None, "num_attention_heads: must be a positive"),
    (json.dumps({**CONFIG, "rms_norm_eps": float("nan")}).encode(), None, "rms_norm_eps: expected a finite"),
    (_CONFIG[: len(_CONFIG) // 2], None, "not valid JSON"),
    (b"\xff" + _CONFIG, None, "not UTF-8"),
    (None, QUANT_CONFIG, "quantized ModelOpt export"),
    (b"\xef\xbb\xbf" + _CONFIG, None, "byte-order mark"),  # transformers' OSError: "not a valid JSON file"
], ids=["vocab-str", "zero-heads", "nan-eps", "truncated", "non-utf8", "export", "bom"])
def test_run_refuses_a_broken_config_and_writes_nothing(folder, config, quant_config, fragment):
    with pytest.raises(RecipeError) as err:
        _run(folder, config, quant_config=quant_config)
    assert err.value.path == "source.path" and fragment in err.value.message, err.value
    assert not (folder.parent / "out").exists()
    assert not [p for p in folder.parent.iterdir() if p.name != "reference"], "a staging folder was left"


def test_run_accepts_an_unusual_but_valid_config(folder):
    """Unknown keys, tabs and CRLF, and the two files of a ModelOpt export that quantized only the KV cache
    (refused as an export before, though its weights are stored as they were): the run loads it."""
    from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format

    assert convert_hf_quant_config_format(KV_ONLY) == {**KV_ONLY_QC, "producer": KV_ONLY["producer"]}
    config = {**CONFIG, "x_notes": {"by": ["hand", None]}, "x_é": 1e300, "quantization_config": KV_ONLY_QC}
    out = _run(folder, json.dumps(config, indent="\t").replace("\n", "\r\n").encode(), quant_config=KV_ONLY)
    assert (out / "manifest.json").is_file()
