"""Calibration and evaluation text: read it, check it, tokenise it, cut it into windows.

Documents come from a built-in corpus (the reference model's splits, shipped with the package, one
document per form-feed-separated block), from local files (``.txt``: one document per file; ``.jsonl``:
one document per line under ``text_field``), or from a Hugging Face dataset on this machine (a
``save_to_disk`` folder or a cached dataset name; one document per row of ``text_field``). They are tokenised with the model's tokenizer, joined with
the end-of-text token as the reference model was trained, and cut into consecutive windows of
``seq_length`` tokens. The same text gives the same windows on every machine and rank, and the hash of
the token ids goes into the manifest.

Both backends (Hugging Face and Megatron-Core) use this one module, so a recipe gives the same
calibration and evaluation windows, the same data hash and comparable perplexities on either. Every rank
builds the same windows (the tokenizer is deterministic), so the data need not be broadcast.

``read_documents``/``check_text`` need no torch, so ``run_post_training`` can refuse empty or missing
text before it imports anything heavy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, RecipeError, did_you_mean
from ..plan.outputs import user_path
from ..spec.bounded import load_json
from ..spec.recipe import TextData

if TYPE_CHECKING:
    from ..plan.run_plan import CalibrationWindows

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
REFERENCE_DIR = DATA_DIR / "reference"
BUILTIN_FILES: dict[str, Path] = {
    "reference-train": REFERENCE_DIR / "train.txt",
    "reference-heldout": REFERENCE_DIR / "heldout.txt",
}
DOC_SEPARATOR = "\f"


def read_documents(data: TextData, *, path: str = "calibration") -> list[str]:
    """The documents of ``data`` (non-empty ones only); DataError naming the field when unreadable.

    A run reads its text twice, for the check before anything heavy is imported and for the windows: the second
    read reuses the first while the files are unchanged (same size and modification time)."""
    key = _read_key(data, path)
    if key is not None and _READ_CACHE.get("key") == key:
        return list(_READ_CACHE["docs"])
    docs = _read_documents(data, path=path)
    if key is not None:
        _READ_CACHE.update(key=key, docs=tuple(docs))
    return docs


_READ_CACHE: dict[str, Any] = {}
"""The last text read (one entry: a run's calibration text, kept between its check and its windows)."""


def _read_key(data: TextData, path: str) -> tuple[Any, ...] | None:
    """What identifies a read of local text: the spec and each file's size and modification time (None for a
    Hugging Face dataset, or when a file cannot be looked at: then it is read, and its error raised, as usual)."""
    if data.hf_dataset is not None:
        return None
    try:
        stats = tuple((st.st_size, st.st_mtime_ns) for st in (Path(f).expanduser().stat() for f in data.files))
    except (OSError, ValueError, RuntimeError):  # RuntimeError: ``~user`` with no such user (user_path says so)
        return None
    return (data, path, stats)


def _read_documents(data: TextData, *, path: str) -> list[str]:
    docs: list[str] = []
    if data.dataset is not None:
        f = BUILTIN_FILES[data.dataset]
        if not f.is_file():
            raise DataError(f"the built-in corpus {data.dataset!r} is missing ({f})", path=f"{path}.dataset",
                            hint="reinstall modelopt-typed-recipes")
        docs = f.read_text(encoding="utf-8").split(DOC_SEPARATOR)
    for i, name in enumerate(data.files):
        where = f"{path}.files[{i}]"
        p = user_path(name, path=where)
        if not p.is_file():
            raise DataError(f"{name!r} does not exist", path=where)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {name!r}: {exc}", path=where) from None
        if p.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines()):
                if line.strip():
                    docs.append(_jsonl_text(line, data.text_field, name=name, n=n, where=where, path=path))
        else:
            docs.append(text)
    if data.hf_dataset is not None:
        docs += _hf_dataset_documents(data, path=path)
    return [d for d in docs if d.strip()]


def _jsonl_text(line: str, field: str, *, name: str, n: int, where: str, path: str) -> str:
    """The text of one ``.jsonl`` line, read with the recipe's limits (nesting, integer length, duplicate keys)."""
    try:
        row = load_json(line, source=f"line {n + 1} of {name}", limit=None)
    except RecipeError as err:
        raise DataError(f"line {n + 1} of {name!r}: {err.message}", path=where, hint="one JSON object per line, e.g. {\"text\": \"...\"}") from None
    if not isinstance(row, dict) or field not in row:
        raise DataError(f"line {n + 1} of {name!r} is not a JSON object with a {field!r} field", path=where,
                        hint=f"set {path}.text_field to the key that holds the text")
    text = row[field]
    if not isinstance(text, str):
        raise DataError(f"line {n + 1} of {name!r}: {field!r} holds {type(text).__name__}, not text", path=where)
    return text


# A window of n tokens rarely needs more than 16n characters; reading stops there so that a large dataset
# (cnn_dailymail has 287k articles) is not read whole for 128 windows. Same rows every time: deterministic.
_CHARS_PER_TOKEN_BOUND = 16


def _hf_dataset_documents(data: TextData, *, path: str) -> list[str]:
    """Rows of ``text_field`` from ``data.hf_dataset``, in order, until there is enough text for the windows."""
    where = f"{path}.hf_dataset"
    if data.hf_dataset is None:
        raise DataError("no hf_dataset to read", path=where)
    try:
        import datasets
    except ImportError:
        raise DataError("reading a Hugging Face dataset needs the `datasets` package", path=where,
                        hint="pip install datasets") from None
    folder = user_path(str(data.hf_dataset), path=where)
    try:
        if folder.is_dir():
            ds = datasets.load_from_disk(str(folder))
        else:
            ds = datasets.load_dataset(data.hf_dataset, split=data.split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise DataError(f"cannot load the dataset {data.hf_dataset!r}: {type(exc).__name__}: {exc}"[:400], path=where,
                        hint="give a folder written by save_to_disk, or a dataset name in the local cache") from None
    if isinstance(ds, datasets.DatasetDict):
        if data.split not in ds:
            raise DataError(f"the dataset has no split {data.split!r}", path=f"{path}.split",
                            hint=did_you_mean(data.split, list(ds)) or f"splits: {', '.join(ds)}")
        ds = ds[data.split]
    if data.text_field not in ds.column_names:
        raise DataError(f"the dataset has no column {data.text_field!r}", path=f"{path}.text_field",
                        hint=did_you_mean(data.text_field, ds.column_names) or f"columns: {', '.join(ds.column_names)}")
    need = data.num_samples * data.seq_length * _CHARS_PER_TOKEN_BOUND
    docs: list[str] = []
    got = 0
    for row in ds.select_columns([data.text_field]):
        text = row[data.text_field]
        if not isinstance(text, str):
            raise DataError(f"column {data.text_field!r} holds {type(text).__name__}, not text",
                            path=f"{path}.text_field")
        docs.append(text)
        got += len(text)
        if got >= need:
            break
    return docs


def check_text(data: TextData, *, path: str = "calibration") -> int:
    """Characters of text available; DataError when there is none (no torch needed)."""
    docs = read_documents(data, path=path)
    chars = sum(len(d) for d in docs)
    if chars == 0:
        where = f"{path}.files" if data.files else f"{path}.hf_dataset" if data.hf_dataset else f"{path}.dataset"
        raise DataError("the text is empty: nothing to calibrate or evaluate with", path=where,
                        hint="point files at .txt or .jsonl files with text in them")
    return chars


def load_tokenizer(directory: str | Path | None, *, path: str = "source.path") -> Any:
    """The tokenizer saved in a Hugging Face checkpoint directory; ``None``: the reference tokenizer
    shipped with the package (a run from random or Megatron weights with no Hugging Face directory)."""
    from transformers import AutoTokenizer

    where = REFERENCE_DIR if directory is None else directory
    try:
        return AutoTokenizer.from_pretrained(str(where))
    except Exception as exc:  # noqa: BLE001 - it reads config.json too: huggingface_hub's StrictDataclassError
        # for a mistyped value, OSError, ValueError, and whatever a tokenizer class raises on its files
        raise DataError(f"no usable tokenizer in {str(where)!r}: {type(exc).__name__}: {str(exc)[:500]}",
                        path=path) from None


class ByteTokenizer:
    """UTF-8 bytes as token ids (0-255) plus one end-of-text id (256): the tokenizer of random-init models.

    A random-init model has no trained tokenizer; bytes keep its data real text, deterministic and within
    any vocabulary of 257 or more entries (the Megatron-Core backend takes it for vocabularies too small for
    the reference tokenizer).
    """

    eos_token_id = 256
    eos_token = "<|endoftext|>"

    def __call__(self, text: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(text, list):
            return {"input_ids": [list(t.encode("utf-8")) for t in text]}
        return {"input_ids": list(text.encode("utf-8"))}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """The text of byte ids (the end-of-text id dropped; broken UTF-8 replaced)."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def save_pretrained(self, directory: str | Path) -> None:
        """Nothing to write: a byte tokenizer has no files (the manifest records it)."""


def random_init_tokenizer(vocab_size: int) -> Any:
    """The tokenizer of a random-weight run: the reference tokenizer when the vocabulary holds its ids
    (its files can then go into an export), else :class:`ByteTokenizer`."""
    from ..plan.archs import reference_vocab_size

    return load_tokenizer(None) if vocab_size >= reference_vocab_size() else ByteTokenizer()


def token_windows(data: TextData, tokenizer: Any, *, path: str = "calibration", num_samples: int | None = None,
                  seq_length: int | None = None) -> Any:
    """A ``[n, seq_length]`` LongTensor of consecutive windows (n <= num_samples, as many as the text gives)."""
    import torch

    n = num_samples or data.num_samples
    s = seq_length or data.seq_length
    docs = read_documents(data, path=path)
    if not docs:
        raise DataError("the text is empty: nothing to calibrate or evaluate with", path=path)
    ids = _token_ids(docs, tokenizer, n * s)
    have = len(ids) // s
    if have == 0:
        raise DataError(f"the text has {len(ids)} tokens, fewer than one window of {s}", path=f"{path}.seq_length",
                        hint="add text or lower seq_length")
    k = min(n, have)
    return torch.tensor(ids[: k * s], dtype=torch.long).view(k, s)


_BATCH_CHARS = 256 * 1024
"""Most characters tokenised per call: a fast tokenizer encodes a list of documents on every core at once."""


def _token_ids(docs: list[str], tokenizer: Any, need: int) -> list[int]:
    """The documents' token ids, each followed by end-of-text, up to the first document that brings ``need``.

    The same ids as tokenising one document at a time, in batches of documents (about the characters still
    needed, at four per token, at most ``_BATCH_CHARS``), so a long text is encoded in parallel and little beyond
    the windows is encoded at all."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    i = 0
    while i < len(docs) and len(ids) < need:
        budget = min(4 * (need - len(ids)), _BATCH_CHARS)
        j, chars = i, 0
        while j < len(docs) and (j == i or chars < budget):
            chars += len(docs[j])
            j += 1
        for doc_ids in tokenizer(docs[i:j], add_special_tokens=False)["input_ids"]:
            ids.extend(doc_ids)
            if eos is not None:
                ids.append(eos)
            if len(ids) >= need:
                break
        i = j
    return ids


def batches(windows: Any, batch_size: int) -> list[Any]:
    return [windows[i : i + batch_size] for i in range(0, windows.shape[0], batch_size)]


def stage_batches(plan: CalibrationWindows | None, calibration: TextData, tokenizer: Any, windows: Any, *,
                  replica: int = 0, replicas: int = 1) -> list[Any]:
    """Calibration batches for one stage: the recipe's ``windows`` unless the stage's plan asks for its own
    count / length (then those are cut from the same text). ``plan``: ``StagePlan.calibration``. With
    ``replicas`` > 1, only data-parallel replica ``replica``'s share (:func:`data_parallel_share`)."""
    n = plan.num_samples if plan is not None else calibration.num_samples
    seq = plan.seq_length if plan is not None else calibration.seq_length
    if (n, seq) != (calibration.num_samples, calibration.seq_length):
        windows = token_windows(calibration, tokenizer, path="calibration", num_samples=n, seq_length=seq)
    windows = data_parallel_share(windows, replica, replicas)
    return batches(windows, plan.batch_size if plan is not None else calibration.batch_size)


def data_parallel_share(windows: Any, replica: int, replicas: int) -> Any:
    """The windows data-parallel replica ``replica`` of ``replicas`` calibrates on, as ModelOpt's Megatron
    calibration loader (``get_megatron_calibration_dataloader``, which Megatron-LM's ``quantize.py`` uses) deals
    them: torch's ``DistributedSampler`` without shuffling, so replica r takes windows r, r + replicas, ... and the
    last round is filled from the first windows. Each replica then runs 1/replicas of the forwards;
    ``mtq.quantize`` max-reduces every amax across the data-parallel group, so the scales are the maxima over all
    windows, as if each replica had seen them all."""
    if replicas <= 1:
        return windows
    from torch.utils.data import DistributedSampler

    order = list(DistributedSampler(range(windows.shape[0]), num_replicas=replicas, rank=replica, shuffle=False))
    return windows[order]


def data_hash(windows: Any) -> str:
    """sha256 of the token ids (first 16 hex digits): equal hashes mean equal calibration data."""
    return hashlib.sha256(windows.cpu().numpy().astype("int64").tobytes()).hexdigest()[:16]


def training_windows(stage: Any, calibration: TextData, tokenizer: Any, *, needed: int, seed: int,
                     path: str) -> tuple[Any, int]:
    """``needed`` windows of a training stage's text (default: the recipe's calibration text) at its window
    length: the text's windows repeated in order when it is shorter, then shuffled once with the recipe's
    seed, so one recipe trains on the same windows on either backend. Returns them and how many distinct
    windows the text gave."""
    import torch

    from ..spec.text import TrainingText

    seq = stage.window_length(calibration.seq_length)
    text = stage.data if stage.data is not None else TrainingText.like(calibration)
    where = f"{path}.data" if stage.data is not None else "calibration"
    try:
        distinct = token_windows(text.windows(needed, seq), tokenizer, path=where)
    except DataError as err:
        if err.path.endswith(".seq_length"):
            raise DataError(err.message, path=f"{path}.seq_length", hint=err.hint) from None
        raise
    n = int(distinct.shape[0])
    windows = distinct.repeat(-(-needed // n), 1)[:needed]
    order = torch.randperm(needed, generator=torch.Generator().manual_seed(seed))
    return windows[order], n
