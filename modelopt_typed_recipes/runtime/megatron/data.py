"""Calibration and evaluation text for the Megatron-Core backend: read, tokenise, cut into windows.

Documents (the package's reference corpus, ``.txt`` files or ``.jsonl`` lines) are tokenised with the
model's tokenizer, joined with end-of-text tokens and cut into ``num_samples`` windows of
``seq_length`` tokens. Every rank builds the same windows (the tokenizer is deterministic), so the
data need not be broadcast; the hash of the token ids goes into the manifest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...spec.recipe import TextData

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "data" / "reference"
_BUILTIN_FILES = {"reference-train": "train.txt", "reference-heldout": "heldout.txt"}


def read_documents(data: TextData, *, path: str = "calibration") -> list[str]:
    if data.dataset is not None:
        f = REFERENCE_DIR / _BUILTIN_FILES[data.dataset]
        if not f.is_file():
            raise DataError(f"the built-in corpus {data.dataset!r} is missing ({f})", path=f"{path}.dataset")
        return [f.read_text(encoding="utf-8")]
    docs: list[str] = []
    for i, name in enumerate(data.files):
        p = Path(name).expanduser()
        if not p.is_file():
            raise DataError(f"{name!r} does not exist", path=f"{path}.files[{i}]")
        if p.suffix == ".jsonl":
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
                if not line.strip():
                    continue
                try:
                    docs.append(str(json.loads(line)[data.text_field]))
                except (ValueError, KeyError, TypeError):
                    raise DataError(f"line {n + 1} of {name!r} has no {data.text_field!r} field",
                                    path=f"{path}.files[{i}]") from None
        else:
            docs.append(p.read_text(encoding="utf-8"))
    return docs


def load_tokenizer(directory: str | Path | None) -> Any:
    """The checkpoint's tokenizer, or the reference tokenizer shipped with the package."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if directory is not None and Path(directory, "tokenizer.json").is_file() or (
        directory is not None and Path(directory, "tokenizer_config.json").is_file()
    ):
        return AutoTokenizer.from_pretrained(str(directory))
    return PreTrainedTokenizerFast(tokenizer_file=str(REFERENCE_DIR / "tokenizer.json"), eos_token="<|endoftext|>")


def token_windows(data: TextData, tokenizer: Any, *, path: str = "calibration", num_samples: int | None = None,
                  seq_length: int | None = None) -> Any:
    """A ``[n, seq_length]`` LongTensor of consecutive windows of the tokenised documents."""
    import torch

    n = num_samples or data.num_samples
    s = seq_length or data.seq_length
    docs = [d for d in read_documents(data, path=path) if d.strip()]
    if not docs:
        raise DataError("the text is empty", path=path)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if len(ids) >= n * s:
            break
    have = len(ids) // s
    if have == 0:
        raise DataError(f"the text has {len(ids)} tokens, fewer than one window of {s}", path=path,
                        hint="add text or lower seq_length")
    k = min(n, have)
    return torch.tensor(ids[: k * s], dtype=torch.long).view(k, s)


def batches(windows: Any, batch_size: int) -> list[Any]:
    return [windows[i : i + batch_size] for i in range(0, windows.shape[0], batch_size)]


def data_hash(windows: Any) -> str:
    return hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]
