"""Text a run reads: calibration and evaluation windows (:class:`TextData`), and the training text of a
distillation stage (:class:`TrainingText`: the same sources, cut by the stage's own window length)."""

from __future__ import annotations

import attrs

from ._validate import fail, non_empty_str, non_empty_strs, one_of, positive_int
from .serde import typed_fields

# Text corpora shipped with the package (the reference model's training and held-out splits).
BUILTIN_DATASETS: tuple[str, ...] = ("reference-train", "reference-heldout")


# --------------------------------------------------------------------------- data
@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class TextData:
    """Text for calibration or evaluation: a built-in corpus, local ``.txt``/``.jsonl`` files, or a Hugging
    Face dataset already on this machine.

    Documents are tokenised with the model's tokenizer, joined with end-of-text tokens and cut into
    ``num_samples`` windows of ``seq_length`` tokens (fewer when the text runs out).
    """

    dataset: str | None = attrs.field(default=None, validator=one_of(BUILTIN_DATASETS, optional=True))
    files: tuple[str, ...] = attrs.field(default=(), validator=non_empty_strs)
    """``.txt`` (one document per file) or ``.jsonl`` (one document per line, under ``text_field``)."""
    hf_dataset: str | None = attrs.field(default=None, validator=attrs.validators.optional(non_empty_str))
    """A folder written by ``datasets``' ``save_to_disk``, or a dataset name that ``datasets.load_dataset``
    finds in the local cache (as the seed's ``--calib-dataset`` names do); needs the ``datasets`` package."""
    split: str = attrs.field(default="train", validator=non_empty_str)
    """The split of ``hf_dataset`` to read."""
    text_field: str = attrs.field(default="text", validator=non_empty_str)
    """The key (``.jsonl``) or column (``hf_dataset``) that holds the text."""
    num_samples: int = attrs.field(default=128, validator=positive_int)
    seq_length: int = attrs.field(default=256, validator=positive_int)
    batch_size: int = attrs.field(default=8, validator=positive_int)

    def __attrs_post_init__(self) -> None:
        _one_source(self)


def _one_source(data: TextData | TrainingText) -> None:
    given = [k for k, v in (("dataset", data.dataset), ("files", data.files), ("hf_dataset", data.hf_dataset)) if v]
    if len(given) != 1:
        raise fail(
            given[0] if given else "dataset",
            "give exactly one of dataset (a built-in corpus), files (local text) and hf_dataset "
            f"(a Hugging Face dataset on this machine); got {', '.join(given) or 'none'}",
            f"built-in: {', '.join(BUILTIN_DATASETS)}",
        )


@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class TrainingText:
    """The training text of a distillation stage: the same sources as :class:`TextData`, without a window
    count or length (the stage's ``seq_length``, ``micro_batch_size`` and ``steps``/``tokens`` say how much
    it reads; the windows repeat, in order, when the text is shorter)."""

    dataset: str | None = attrs.field(default=None, validator=one_of(BUILTIN_DATASETS, optional=True))
    files: tuple[str, ...] = attrs.field(default=(), validator=non_empty_strs)
    """``.txt`` (one document per file) or ``.jsonl`` (one document per line, under ``text_field``)."""
    hf_dataset: str | None = attrs.field(default=None, validator=attrs.validators.optional(non_empty_str))
    split: str = attrs.field(default="train", validator=non_empty_str)
    text_field: str = attrs.field(default="text", validator=non_empty_str)

    def __attrs_post_init__(self) -> None:
        _one_source(self)

    def windows(self, num_samples: int, seq_length: int) -> TextData:
        """The same text as a :class:`TextData` of ``num_samples`` windows of ``seq_length`` tokens."""
        return TextData(dataset=self.dataset, files=self.files, hf_dataset=self.hf_dataset, split=self.split,
                        text_field=self.text_field, num_samples=num_samples, seq_length=seq_length, batch_size=1)

    @classmethod
    def like(cls, data: TextData) -> TrainingText:
        """The source of ``data`` (a recipe's calibration text), for a stage that trains on it."""
        return cls(dataset=data.dataset, files=data.files, hf_dataset=data.hf_dataset, split=data.split,
                   text_field=data.text_field)
