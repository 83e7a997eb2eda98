"""Links between registry entries and the seed's ``conf/<org>/<model>.sh`` files.

Every place an entry deliberately differs from its seed file is a :class:`Deviation`: it goes into the
entry's ``notes`` (for people) and into :data:`SEED_LINKS` (for the golden flag test, which applies the
deviations to the seed's ``MODEL_ARGS`` and then expects our flags to match exactly).
"""

from __future__ import annotations

import attrs

from ...spec.arch import ModelArch

HF_MODEL_CKPT = "HF_MODEL_CKPT"
TOKENIZER_MODEL = "TOKENIZER_MODEL"
"""Pseudo-flags for the seed's checkpoint and tokenizer defaults (not Megatron flags)."""


@attrs.frozen(kw_only=True)
class Deviation:
    """One flag (or checkpoint default) where the entry differs from the seed file, and why.

    ``seed``/``ours``: the value on each side; ``None`` means the flag is absent on that side, ``""``
    means a flag that takes no value.
    """

    flag: str
    seed: str | None
    ours: str | None
    reason: str

    def describe(self) -> str:
        def show(v: str | None) -> str:
            return "absent" if v is None else (f"{self.flag}" if v == "" else f"{self.flag} {v}")

        return f"seed differs: {show(self.seed)} -> {show(self.ours)}: {self.reason}"


@attrs.frozen(kw_only=True)
class SeedLink:
    """Which seed file an entry reproduces, and the documented differences."""

    file: str
    """The seed's config name (``conf/<file>.sh`` without ``.sh``), e.g. ``Qwen/Qwen3-8B``."""
    deviations: tuple[Deviation, ...] = ()


SEED_LINKS: dict[str, SeedLink] = {}
"""Registry entry name -> its seed link (only entries that have a seed file)."""


def seeded(arch: ModelArch, file: str, *deviations: Deviation) -> ModelArch:
    """Record ``arch`` as the typed form of seed ``file``; each deviation is appended to its notes."""
    SEED_LINKS[arch.name] = SeedLink(file=file, deviations=tuple(deviations))
    notes = (*arch.notes, f"seed: conf/{file}.sh", *(d.describe() for d in deviations))
    return attrs.evolve(arch, notes=notes)


def dev(flag: str, seed: str | None, ours: str | None, reason: str) -> Deviation:
    return Deviation(flag=flag, seed=seed, ours=ours, reason=reason)


# Deviations several entries share (one wording, one place).
def norm_eps(value: str) -> Deviation:
    return dev(
        "--norm-epsilon", None, value,
        f"HF config rms_norm_eps={value}; the seed leaves Megatron's default 1e-5, so its norms differ "
        "slightly from the checkpoint's",
    )



def max_positions_note(ours: int, hf: int, why: str) -> str:
    """Where ``max_position_embeddings`` differs from the model's ``config.json`` (one wording for all)."""
    return f"max_position_embeddings {ours} is not config.json's {hf}: {why}"


PRE_SCALING = (
    "Megatron-LM's conf file gives the length before llama3 RoPE scaling (rope_scaling "
    "original_max_position_embeddings); config.json gives the scaled context. Megatron only sizes its RoPE "
    "cache with it; seq_length is what a run uses"
)
