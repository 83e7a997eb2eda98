"""Post-training techniques as frozen, validated data: one class per technique, tagged by ``technique``.

A recipe's ``stages`` is an ordered tuple of these. They say *what* to do (which ModelOpt preset or
recipe, which layers to leave alone, how much calibration); the runtime backends (``runtime/hf``,
``runtime/megatron``) say *how*. Nothing here imports torch or ModelOpt: names that only the installed
ModelOpt can confirm (a ``*_CFG`` preset outside our format table, a YAML recipe path) are checked by the
runtime's pre-flight checks, before any model is built.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import attrs

from ..errors import SpecError, UnknownNameError, brief
from ._validate import fail, non_empty_strs, non_negative, one_of, optional_bool, positive, positive_int, to_float
from .arch import Attention, MLAttention, ModelArch, MoE
from .formats import QuantFormat, get_format
from .serde import structure, typed_fields
from .sources import Builtin, HFCheckpoint, MegatronCheckpoint
from .text import TrainingText

# ModelOpt 0.47 KV-cache presets (modelopt_recipes/configs/ptq/presets/kv); "none" keeps the KV cache as is.
KV_CACHE_FORMATS: tuple[str, ...] = (
    "fp8", "fp8_cast", "fp8_affine", "nvfp4", "nvfp4_cast", "nvfp4_affine", "nvfp4_rotate",
)
# KV formats whose fake-quant kernels need CUDA (NVFP4 dynamic block quantization).
KV_CACHE_NEEDS_CUDA: frozenset[str] = frozenset(k for k in KV_CACHE_FORMATS if k.startswith("nvfp4"))

# Calibration algorithms ModelOpt 0.47 accepts as ``algorithm`` (modelopt-api.md §1.6).
ALGORITHMS: tuple[str, ...] = (
    "max", "mse", "local_hessian", "smoothquant", "awq_lite", "awq_clip", "awq_full", "svdquant", "gptq",
    "nvfp4_act_headroom",
)

_PRESET_NAME = re.compile(r"^[A-Z][A-Z0-9_]*_(CFG|CONFIG)$")


def resolve_format(name: str, *, field: str = "format") -> QuantFormat | None:
    """Our format for a short name or known preset; ``None`` for another ModelOpt ``*_CFG`` name.

    Unknown short names fail here with a suggestion (:func:`~.formats.get_format`'s error, at ``field``);
    other upper-case preset names are left to the runtime check against the installed ModelOpt
    (``mtq.config.choices``).
    """
    try:
        return get_format(name)
    except UnknownNameError as err:
        if _PRESET_NAME.match(name):
            return None
        raise err.under(field) from None


def format_needs_cuda(name: str) -> bool:
    """Whether fake-quantizing with format/preset/recipe ``name`` needs CUDA: the format table says so for
    the formats it lists; other ModelOpt names are judged by the NVFP4/MX kinds in their name."""
    try:
        return get_format(name).needs_cuda
    except UnknownNameError:
        lowered = name.lower()
        return any(k in lowered for k in ("nvfp4", "mxfp", "mxint", "fp4"))


def _format_name(_inst: object, attr: attrs.Attribute, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise fail(attr.name, f"must be a non-empty string, got {value!r}")
    if value == "bf16":
        raise fail(attr.name, "'bf16' is no quantization", "drop the quantize stage to keep the model as is")
    resolve_format(value, field=attr.name)


def _recipe_path(_inst: object, attr: attrs.Attribute, value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise fail(attr.name, "must be a ModelOpt recipe path such as 'general/ptq/fp8_default-kv_fp8' or a file")


def _positive_bits(_inst: object, attr: attrs.Attribute, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 16:
        raise fail(attr.name, f"must be in (0, 16], got {value!r}")


# --------------------------------------------------------------------------- quantize
@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class Quantize:
    """Post-training quantization with one ModelOpt preset or one ModelOpt YAML recipe."""

    quantizes: ClassVar[bool] = True
    """Order rules of a recipe (spec/recipe.py): one quantizing stage per recipe, after any pruning."""
    must_come_before_quantization: ClassVar[bool] = False
    must_be_last: ClassVar[bool] = False

    technique: Literal["quantize"] = attrs.field(default="quantize", validator=one_of(["quantize"]))
    format: str | None = attrs.field(default=None, validator=_format_name)
    """Short name from the format table (``fp8``, ``int4_awq``) or a ModelOpt preset (``FP8_DEFAULT_CFG``)."""
    recipe: str | None = attrs.field(default=None, validator=_recipe_path)
    """A ModelOpt PTQ recipe: built-in path (``general/ptq/nvfp4_default-kv_fp8_cast``) or a YAML file."""
    kv_cache: str | None = attrs.field(default=None, validator=one_of(KV_CACHE_FORMATS, optional=True))
    """KV-cache preset added on top of ``format`` (``fp8``, ``fp8_cast``, ``nvfp4``...); None: leave it."""
    exclude: tuple[str, ...] = attrs.field(default=(), validator=non_empty_strs)
    """Module-name wildcards left unquantized, added after the preset's own exclusions."""
    algorithm: str | None = attrs.field(default=None, validator=one_of(ALGORITHMS, optional=True))
    """Calibration algorithm; None keeps the preset's (``max`` for FP8, ``awq_lite`` for INT4-AWQ...)."""
    calibration_samples: int | None = attrs.field(default=None, validator=positive_int)
    """Overrides ``recipe.calibration.num_samples`` for this stage."""
    calibration_seq_length: int | None = attrs.field(default=None, validator=positive_int)
    """Overrides ``recipe.calibration.seq_length`` for this stage."""
    compress: bool = False
    """Store real low-precision weights (``mtq.compress``) instead of fake-quantized high-precision ones."""
    save: bool | None = attrs.field(default=None, validator=optional_bool)
    """Write this stage's model as a checkpoint: ``true`` always, ``false`` never, unset: the recipe's ``save``."""

    def __attrs_post_init__(self) -> None:
        if (self.format is None) == (self.recipe is None):
            raise fail(
                "format",
                "give exactly one of format and recipe",
                "format: fp8 (a preset) or recipe: general/ptq/fp8_default-kv_fp8 (a ModelOpt YAML recipe)",
            )
        if self.recipe is not None and self.kv_cache is not None:
            raise fail("kv_cache", "a ModelOpt recipe carries its own KV-cache settings", "drop kv_cache")

    @property
    def quant_format(self) -> QuantFormat | None:
        """The format-table entry, or None for a recipe or a preset the table does not list."""
        return resolve_format(self.format) if self.format is not None else None

    @property
    def preset(self) -> str | None:
        """The ModelOpt ``*_CFG`` name this stage quantizes with (None for a recipe)."""
        if self.format is None:
            return None
        fmt = self.quant_format
        return fmt.preset if fmt is not None else self.format

    @property
    def needs_cuda(self) -> bool:
        """Whether a fake-quant forward of this stage needs CUDA (unknown presets: judged by name)."""
        return format_needs_cuda(self.format or self.recipe or "") or self.kv_cache in KV_CACHE_NEEDS_CUDA

    def arch_after(self, arch: ModelArch) -> ModelArch:
        """The architecture after this stage: quantization keeps the shapes."""
        return arch

    @property
    def label(self) -> str:
        """A short name for tables and output folders: ``quantize-fp8``, ``quantize-nvfp4_default-kv_fp8``."""
        what = self.format if self.format is not None else str(self.recipe).rstrip("/").split("/")[-1]
        what = what.removesuffix(".yaml").removesuffix(".yml")
        fmt = self.quant_format
        if fmt is not None:
            what = fmt.name
        return f"quantize-{what}" + (f"-kv_{self.kv_cache}" if self.kv_cache else "")


# --------------------------------------------------------------------------- auto-quantize
@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class AutoQuantize:
    """Per-layer format search under an effective-bits budget (``mtq.auto_quantize``)."""

    quantizes: ClassVar[bool] = True
    must_come_before_quantization: ClassVar[bool] = False
    must_be_last: ClassVar[bool] = False

    technique: Literal["auto_quantize"] = attrs.field(default="auto_quantize", validator=one_of(["auto_quantize"]))
    effective_bits: float | None = attrs.field(default=None, validator=_positive_bits)
    formats: tuple[str, ...] = ("nvfp4_awq", "fp8")
    """Candidate formats (short names or presets); "no quantization" is always an implicit candidate."""
    method: Literal["gradient", "kl_div"] = attrs.field(default="gradient", validator=one_of(["gradient", "kl_div"]))
    score_size: int = attrs.field(default=128, validator=positive_int)
    """Samples used to score the candidates (not steps)."""
    recipe: str | None = attrs.field(default=None, validator=_recipe_path)
    """A ModelOpt auto-quantize recipe (``general/auto_quantize/nvfp4_fp8_at_5p4bits``) instead of the fields."""
    kv_cache: str | None = attrs.field(default=None, validator=one_of(KV_CACHE_FORMATS, optional=True))
    exclude: tuple[str, ...] = attrs.field(default=(), validator=non_empty_strs)
    """Layers never quantized (ModelOpt's ``disabled_layers``)."""
    calibration_samples: int | None = attrs.field(default=None, validator=positive_int)
    save: bool | None = attrs.field(default=None, validator=optional_bool)
    """Write this stage's model as a checkpoint: ``true`` always, ``false`` never, unset: the recipe's ``save``."""

    def __attrs_post_init__(self) -> None:
        if self.recipe is None and self.effective_bits is None:
            raise fail("effective_bits", "give effective_bits (e.g. 4.8) or a ModelOpt auto-quantize recipe")
        if self.recipe is not None and self.effective_bits is not None:
            raise fail("effective_bits", "a ModelOpt auto-quantize recipe carries its own budget", "drop effective_bits")
        if self.recipe is None:
            if not self.formats:
                raise fail("formats", "needs at least one candidate format")
            for i, name in enumerate(self.formats):
                if not isinstance(name, str):
                    raise fail(f"formats[{i}]", f"expected a format name, got {name!r}")
                fmt = resolve_format(name, field=f"formats[{i}]")
                if fmt is not None and fmt.name == "bf16":
                    raise fail(f"formats[{i}]", "'bf16' is implicit (no quantization is always a candidate)")
            lowest = min(self._candidate_bits(), default=None)
            if lowest is not None and self.effective_bits is not None and self.effective_bits < lowest:
                raise fail(
                    "effective_bits",
                    f"effective_bits={self.effective_bits} is below the smallest candidate ({lowest:g} bits)",
                    f"use at least {lowest:g} or add a smaller format",
                )

    def _candidate_bits(self) -> list[float]:
        return [f.weight_bits for f in map(resolve_format, self.formats) if f is not None]

    def arch_after(self, arch: ModelArch) -> ModelArch:
        return arch

    @property
    def needs_cuda(self) -> bool:
        names = [self.recipe] if self.recipe is not None else list(self.formats)
        return any(map(format_needs_cuda, names)) or self.kv_cache in KV_CACHE_NEEDS_CUDA

    @property
    def label(self) -> str:
        if self.recipe is not None:
            return "auto_quantize-" + self.recipe.rstrip("/").split("/")[-1].removesuffix(".yaml")
        return f"auto_quantize-{self.effective_bits:g}bits"


# --------------------------------------------------------------------------- prune
_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(value: object) -> int | None:
    """``6_000_000_000``, ``"6B"``, ``"350M"`` or ``"1.5e9"`` -> an integer parameter count."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower().replace("_", "")
        mult = _SUFFIX.get(text[-1:], 1)
        if mult != 1:
            text = text[:-1]
        try:
            out = float(text) * mult
        except ValueError:
            pass
        else:
            if 0 < out < float("inf") and out == int(out):  # "inf" parses as a float but is no count
                return int(out)
    raise SpecError(f"expected a parameter count like 6000000000 or '6B', got {value!r}")


PRUNE_DIMENSIONS: tuple[str, ...] = (
    "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_layers", "num_moe_experts",
    "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size", "mamba_num_heads", "mamba_head_dim",
)


@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class Prune:
    """Minitron structured pruning: target sizes (ModelOpt's ``export_config``) or a parameter budget.

    With sizes, the pruned architecture is known before the run (:meth:`pruned`) and later stages are
    planned against it. With ``params``/``active_params`` ModelOpt searches the sizes; the result is
    known only after the search, so :meth:`pruned` returns the unpruned architecture as an upper bound.
    """

    quantizes: ClassVar[bool] = False
    must_come_before_quantization: ClassVar[bool] = True
    """Minitron works on the unquantized model."""
    must_be_last: ClassVar[bool] = False
    needs_cuda: ClassVar[bool] = False
    """Whether a fake-quant forward needs CUDA (no quantizers here; pruning's own GPU needs are a version gate)."""

    technique: Literal["prune"] = attrs.field(default="prune", validator=one_of(["prune"]))
    hidden_size: int | None = attrs.field(default=None, validator=positive_int)
    ffn_hidden_size: int | None = attrs.field(default=None, validator=positive_int)
    num_attention_heads: int | None = attrs.field(default=None, validator=positive_int)
    num_layers: int | None = attrs.field(default=None, validator=positive_int)
    num_moe_experts: int | None = attrs.field(default=None, validator=positive_int)
    moe_ffn_hidden_size: int | None = attrs.field(default=None, validator=positive_int)
    moe_shared_expert_intermediate_size: int | None = attrs.field(default=None, validator=positive_int)
    mamba_num_heads: int | None = attrs.field(default=None, validator=positive_int)
    mamba_head_dim: int | None = attrs.field(default=None, validator=positive_int)
    params: int | str | None = attrs.field(default=None, converter=parse_count, validator=positive_int)
    """Total-parameter target (``6B``); ModelOpt searches the sizes."""
    active_params: int | str | None = attrs.field(default=None, converter=parse_count, validator=positive_int)
    """Active-parameter target for MoE models."""
    calibration_samples: int | None = attrs.field(default=None, validator=positive_int)
    """Samples used to score importance (overrides ``recipe.calibration.num_samples``)."""
    save: bool | None = attrs.field(default=None, validator=optional_bool)
    """Write this stage's model as a checkpoint: ``true`` always, ``false`` never, unset: the recipe's ``save``."""

    def __attrs_post_init__(self) -> None:
        sizes = self.export_config
        targets = [t for t in ("params", "active_params") if getattr(self, t) is not None]
        if not sizes and not targets:
            raise fail(
                "num_layers",
                "say what to prune to: one or more sizes or a params/active_params target",
                "e.g. num_layers: 24, or params: 6B",
            )
        if sizes and targets:
            raise fail(targets[0], "give target sizes or a parameter target, not both")
        if len(targets) > 1:
            raise fail("active_params", "give params or active_params, not both")

    @property
    def export_config(self) -> dict[str, int]:
        """ModelOpt Minitron's ``export_config`` (only the dimensions set)."""
        return {k: getattr(self, k) for k in PRUNE_DIMENSIONS if getattr(self, k) is not None}

    @property
    def is_search(self) -> bool:
        return self.params is not None or self.active_params is not None

    @property
    def label(self) -> str:
        if self.is_search:
            target = parse_count(self.params or self.active_params)  # an int already: the converter ran
            return f"prune-{'active-' if self.active_params else ''}{_human(target)}"
        return "prune-" + "-".join(f"{k}{v}" for k, v in self.export_config.items())

    # ----------------------------------------------------------------- checks against the model
    def validate_for(self, arch: ModelArch) -> None:
        """Raise :class:`SpecError` (path = this stage's field) when a size cannot apply to ``arch``."""

        def not_larger(field: str, now: int) -> None:
            new = getattr(self, field)
            if new is not None and new > now:
                raise fail(field, f"{field}={new} is larger than the model's {now}", f"use at most {now}")

        not_larger("hidden_size", arch.hidden_size)
        not_larger("num_layers", arch.num_layers)
        att = arch.attention
        if self.num_attention_heads is not None:
            if isinstance(att, MLAttention):
                raise fail("num_attention_heads", "head pruning of multi-latent attention is not supported by Minitron")
            not_larger("num_attention_heads", att.num_heads)
            groups = att.query_groups
            if self.num_attention_heads % groups:
                ok = [g for g in range(groups, att.num_heads + 1, groups)]
                raise fail(
                    "num_attention_heads",
                    f"num_attention_heads={self.num_attention_heads} is not a multiple of the "
                    f"{groups} query groups (Minitron keeps the groups)",
                    "use one of " + ", ".join(map(str, ok)),
                )
        if self.ffn_hidden_size is not None:
            if arch.layer_counts.dense_mlp == 0:
                raise fail("ffn_hidden_size", "the model has no dense MLP layers", "use moe_ffn_hidden_size")
            not_larger("ffn_hidden_size", arch.ffn_hidden_size)
        moe_fields = ("num_moe_experts", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size")
        if arch.moe is None:
            for f in moe_fields:
                if getattr(self, f) is not None:
                    raise fail(f, f"{arch.name} has no mixture of experts")
            if self.active_params is not None:
                raise fail("active_params", f"{arch.name} is dense: every parameter is active", "use params")
        else:
            moe = arch.moe
            not_larger("num_moe_experts", moe.num_experts)
            if self.num_moe_experts is not None and self.num_moe_experts < moe.router_topk:
                raise fail(
                    "num_moe_experts",
                    f"num_moe_experts={self.num_moe_experts} is below router_topk={moe.router_topk}",
                    f"keep at least {moe.router_topk}",
                )
            not_larger("moe_ffn_hidden_size", moe.ffn_hidden_size)
            if self.moe_shared_expert_intermediate_size is not None:
                if moe.shared_expert_ffn_size is None:
                    raise fail("moe_shared_expert_intermediate_size", f"{arch.name} has no shared expert")
                not_larger("moe_shared_expert_intermediate_size", moe.shared_expert_ffn_size)
            if self.num_layers is not None and arch.mamba is None and moe.layer_freq not in (1, "1"):
                raise fail(
                    "num_layers",
                    f"depth pruning of a model with moe.layer_freq={moe.layer_freq!r} changes which layers are MoE",
                    "prune widths only",
                )
        if arch.mamba is None:
            for f in ("mamba_num_heads", "mamba_head_dim"):
                if getattr(self, f) is not None:
                    raise fail(f, f"{arch.name} has no Mamba layers")
        else:
            heads, head_dim, groups, _state = arch.mamba.resolved(arch.hidden_size)
            not_larger("mamba_num_heads", heads)
            not_larger("mamba_head_dim", head_dim)
            if self.mamba_num_heads is not None and self.mamba_num_heads % groups:
                raise fail(
                    "mamba_num_heads",
                    f"mamba_num_heads={self.mamba_num_heads} is not a multiple of the {groups} Mamba groups",
                )
            if self.num_layers is not None:
                raise fail(
                    "num_layers",
                    "the kept layer pattern of a hybrid model is chosen by importance at run time",
                    "prune widths of hybrid models, or give a params target",
                )
        params, active = parse_count(self.params), parse_count(self.active_params)
        if params is not None and params >= arch.params_total:
            raise fail("params", f"params={params:,} is not below the model's {arch.params_total:,}")
        if active is not None and active >= arch.params_active:
            raise fail("active_params", f"active_params={active:,} is not below the model's {arch.params_active:,}")

    def arch_after(self, arch: ModelArch) -> ModelArch:
        """The architecture later stages start from (:meth:`pruned`)."""
        return self.pruned(arch)

    def pruned(self, arch: ModelArch) -> ModelArch:
        """The architecture after this stage (validated first); the head dimension is kept as Minitron does."""
        self.validate_for(arch)
        if self.is_search:
            return arch
        changes: dict[str, Any] = {}
        if self.hidden_size is not None:
            changes["hidden_size"] = self.hidden_size
        if self.num_layers is not None:
            changes["num_layers"] = self.num_layers
        if self.ffn_hidden_size is not None:
            changes["ffn_hidden_size"] = self.ffn_hidden_size
        att = arch.attention
        if isinstance(att, Attention) and (self.hidden_size is not None or self.num_attention_heads is not None):
            changes["attention"] = attrs.evolve(
                att,
                num_heads=self.num_attention_heads or att.num_heads,
                kv_channels=arch.head_dim,
            )
        if arch.moe is not None:
            moe_changes: dict[str, Any] = {}
            if self.num_moe_experts is not None:
                moe_changes["num_experts"] = self.num_moe_experts
            if self.moe_ffn_hidden_size is not None:
                moe_changes["ffn_hidden_size"] = self.moe_ffn_hidden_size
            if self.moe_shared_expert_intermediate_size is not None:
                moe_changes["shared_expert_ffn_size"] = self.moe_shared_expert_intermediate_size
            if moe_changes:
                moe: MoE = attrs.evolve(arch.moe, **moe_changes)
                changes["moe"] = moe
        if arch.mamba is not None and (self.mamba_num_heads is not None or self.mamba_head_dim is not None):
            heads, head_dim, _g, _s = arch.mamba.resolved(arch.hidden_size)
            changes["mamba"] = attrs.evolve(
                arch.mamba, num_heads=self.mamba_num_heads or heads, head_dim=self.mamba_head_dim or head_dim
            )
        try:
            return attrs.evolve(arch, name=f"{arch.name}-pruned", hf_id=None, aliases=(), **changes)
        except SpecError as err:
            raise fail("", f"the pruned model is not valid: {err}") from None


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return str(n)


# --------------------------------------------------------------------------- distill
TEACHER_CHOICES: tuple[str, ...] = ("before_compression", "none")
"""``before_compression``: the model as it was before the recipe's first compression stage; ``none``: no teacher
(quantization-aware training, or plain finetuning, on the language-model loss)."""
COMPRESSING_TECHNIQUES: tuple[str, ...] = ("quantize", "auto_quantize", "prune")
"""Stages after which a ``before_compression`` teacher differs from the student."""
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear")
"""Megatron-LM's ``--lr-decay-style`` names (warm-up first, linear from 0, then the decay)."""
INTERMEDIATE_LOSSES: tuple[str, ...] = ("cosine", "mse")
"""ModelOpt's criteria for a pair of hidden states (``HiddenStateCosineLoss``, ``MSELoss``)."""

TeacherSource = HFCheckpoint | MegatronCheckpoint | Builtin


def _teacher(value: object) -> object:
    """``before_compression``/``none`` as given (None reads as ``none``); a mapping or ``builtin`` becomes a
    source class, as the recipe's ``source`` does."""
    if value is None:
        return "none"
    if isinstance(value, str) and value in TEACHER_CHOICES:
        return value
    if isinstance(value, str) and value not in ("hf", "megatron", "builtin"):
        from ..errors import did_you_mean

        raise fail("teacher", f"{brief(value)} is not a teacher", did_you_mean(value[:200], TEACHER_CHOICES) or
                   "before_compression, none, or a source such as {type: hf, path: /ckpt/teacher}")
    out: object = structure(value, TeacherSource, path="teacher")  # type: ignore[arg-type]
    if not isinstance(out, HFCheckpoint | MegatronCheckpoint | Builtin):
        raise fail("teacher", f"a {type(out).__name__} cannot teach: random weights know nothing",
                   "before_compression, none, or a checkpoint {type: hf, path: ...}")
    return out


def _required(check: Any) -> Any:
    """``check`` for a field that must hold a value (the shared validators let None through)."""

    def validate(inst: object, attr: attrs.Attribute, value: object) -> None:
        if value is None:
            raise fail(attr.name, "must be set, got null")
        check(inst, attr, value)

    return validate


def _layer_pair(_inst: object, attr: attrs.Attribute, value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or len(value) != 2 or not all(isinstance(v, str) and v.strip() for v in value):
        raise fail(attr.name, f"must be [student layer, teacher layer], got {brief(value)}",
                   "e.g. [output_layer, output_layer] (Megatron-Core) or [lm_head, lm_head] (Hugging Face)")


def _intermediate_pairs(_inst: object, attr: attrs.Attribute, value: tuple[tuple[str, ...], ...]) -> None:
    if not isinstance(value, tuple):
        raise fail(attr.name, f"must be a list of layer pairs, got {brief(value)}",
                   "e.g. [[decoder.layers.3, decoder.layers.5, cosine]]")
    for i, pair in enumerate(value):
        where = f"{attr.name}[{i}]"
        if not isinstance(pair, tuple) or len(pair) not in (2, 3) or not all(isinstance(v, str) and v.strip() for v in pair):
            raise fail(where, f"must be [student layer, teacher layer] or [student, teacher, loss], got "
                              f"{brief(pair)}", "e.g. [decoder.layers.3, decoder.layers.5, cosine]")
        if len(pair) == 3 and pair[2] not in INTERMEDIATE_LOSSES:
            from ..errors import did_you_mean

            raise fail(f"{where}[2]", f"{brief(pair[2])} is not one of {', '.join(map(repr, INTERMEDIATE_LOSSES))}",
                       did_you_mean(pair[2][:200], INTERMEDIATE_LOSSES))


def _token_count(value: object) -> int | None:
    try:
        return parse_count(value)
    except SpecError as err:
        raise fail("tokens", err.message, "e.g. 2M or 2000000") from None


@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class Distill:
    """Knowledge distillation (``modelopt.torch.distill``): the model learns to match a teacher's logits.

    After a quantize stage it is quantization-aware distillation (QAD: the quantizers stay in place, the
    weights learn through them, a later export writes the quantized format); after a prune stage it is
    Minitron's distillation; with ``teacher: none`` it is quantization-aware training or plain finetuning on
    the language-model loss. The loss fields carry the names of Megatron-LM's distillation config
    (``--export-kd-cfg``); the training fields those of its ``finetune.sh`` flags, and its defaults.

    Precision: bf16 compute with fp32 master weights. On the Hugging Face backend the parameters stay fp32
    and the forward runs under ``torch.autocast(bfloat16)`` on CUDA (fp32 on the CPU); the optimizer (AdamW)
    updates the fp32 parameters.
    """

    quantizes: ClassVar[bool] = False
    must_come_before_quantization: ClassVar[bool] = False
    """QAD comes after the quantize stage; Minitron's distillation after prune; both are allowed."""
    must_be_last: ClassVar[bool] = False
    needs_cuda: ClassVar[bool] = False

    technique: Literal["distill"] = attrs.field(default="distill", validator=one_of(["distill"]))
    teacher: str | HFCheckpoint | MegatronCheckpoint | Builtin = attrs.field(default="before_compression",
                                                                             converter=_teacher)
    """``before_compression`` (the model before the recipe's first compression stage; the run keeps a copy),
    ``none`` (no teacher: train on the language-model loss), or a checkpoint of the same model family
    (``{type: hf, path: ...}``, ``{type: megatron, path: ...}``, ``builtin``)."""
    logit_layers: tuple[str, ...] = attrs.field(default=("output_layer", "output_layer"), validator=_layer_pair)
    """[student, teacher] layers whose outputs are the logits compared (Megatron-Core names; the Hugging Face
    backend compares the ``lm_head`` logits and takes ``[lm_head, lm_head]`` or this default)."""
    intermediate_layer_pairs: tuple[tuple[str, ...], ...] = attrs.field(default=(), validator=_intermediate_pairs)
    """[student layer, teacher layer] or [student, teacher, cosine|mse] whose outputs are also compared
    (default loss: cosine, as Megatron-LM's)."""
    skip_lm_loss: bool = True
    """Train on the distillation loss only (true), or add the language-model loss of the training text."""
    kd_loss_scale: float = attrs.field(default=1.0, converter=to_float, validator=_required(non_negative))
    """Weight of the distillation loss against the language-model loss when both count (ModelOpt's loss
    balancer: the KD loss is scaled so that it is ``kd_loss_scale`` times the LM loss)."""
    logit_kl_temperature: float = attrs.field(default=1.0, converter=to_float, validator=_required(positive))
    """Softmax temperature of the logits KL divergence."""
    data: TrainingText | None = None
    """Training text (built-in corpus, files, ``hf_dataset``), packed into windows; None: the recipe's
    calibration text."""
    seq_length: int | None = attrs.field(default=None, validator=positive_int)
    """Tokens per training window; None: the recipe's ``calibration.seq_length``."""
    micro_batch_size: int = attrs.field(default=1, validator=_required(positive_int))
    gradient_accumulation_steps: int = attrs.field(default=1, validator=_required(positive_int))
    """Micro batches per optimizer step (Megatron-LM: global batch = micro batch x accumulation x DP)."""
    steps: int | None = attrs.field(default=None, validator=positive_int)
    """Optimizer steps (Megatron-LM's ``--train-iters``); give steps or tokens."""
    tokens: int | str | None = attrs.field(default=None, converter=_token_count, validator=positive_int)
    """Training tokens (``2M``): the steps are this divided by the tokens of one optimizer step, rounded up."""
    learning_rate: float = attrs.field(default=5e-5, converter=to_float, validator=_required(positive))
    lr_schedule: Literal["constant", "cosine", "linear"] = attrs.field(default="cosine",
                                                                      validator=one_of(LR_SCHEDULES))
    warmup_steps: int = attrs.field(default=0, validator=_required(non_negative))
    min_learning_rate: float = attrs.field(default=1e-7, converter=to_float, validator=_required(non_negative))
    """Where ``cosine``/``linear`` decay to (Megatron-LM's ``--min-lr``)."""
    weight_decay: float = attrs.field(default=0.0, converter=to_float, validator=_required(non_negative))
    adam_beta1: float = attrs.field(default=0.9, converter=to_float, validator=_required(non_negative))
    adam_beta2: float = attrs.field(default=0.95, converter=to_float, validator=_required(non_negative))
    clip_grad: float = attrs.field(default=1.0, converter=to_float, validator=_required(non_negative))
    """Gradient-norm clip (0: no clipping)."""
    save: bool | None = attrs.field(default=None, validator=optional_bool)
    """Write this stage's model as a checkpoint: ``true`` always, ``false`` never, unset: the recipe's ``save``."""

    def __attrs_post_init__(self) -> None:
        if (self.steps is None) == (self.tokens is None):
            raise fail("steps", "give exactly one of steps and tokens", "e.g. steps: 200, or tokens: 2M")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int):
            raise fail("warmup_steps", f"must be an integer, got {brief(self.warmup_steps)}")
        if self.steps is not None and self.warmup_steps >= self.steps and self.warmup_steps:
            raise fail("warmup_steps", f"warmup_steps={self.warmup_steps} leaves no step after the warm-up "
                                       f"(steps={self.steps})", f"use fewer than {self.steps}")
        if self.min_learning_rate > self.learning_rate:
            raise fail("min_learning_rate", f"min_learning_rate={self.min_learning_rate:g} is above "
                                            f"learning_rate={self.learning_rate:g}", "decay to a lower rate")
        for name in ("adam_beta1", "adam_beta2"):
            if not getattr(self, name) < 1:
                raise fail(name, f"must be in [0, 1), got {getattr(self, name)!r}", "0.9 and 0.95 are usual")
        if self.teacher == "none":
            if self.skip_lm_loss:
                raise fail("skip_lm_loss", "with teacher: none there is no distillation loss; the language-model "
                                           "loss is all the stage trains on", "set skip_lm_loss: false")
            if self.intermediate_layer_pairs:
                raise fail("intermediate_layer_pairs", "with teacher: none there is no teacher layer to compare",
                           "drop intermediate_layer_pairs, or name a teacher")
        elif self.kd_loss_scale == 0 and self.skip_lm_loss:
            raise fail("kd_loss_scale", "kd_loss_scale=0 with skip_lm_loss leaves no loss to train on",
                       "use kd_loss_scale > 0, or skip_lm_loss: false")

    @property
    def has_teacher(self) -> bool:
        return self.teacher != "none"

    @property
    def teacher_source(self) -> HFCheckpoint | MegatronCheckpoint | Builtin | None:
        """The named teacher checkpoint (None: ``before_compression`` or ``none``)."""
        return None if isinstance(self.teacher, str) else self.teacher

    def window_length(self, default: int) -> int:
        """Tokens per training window (the recipe's calibration length when unset)."""
        return self.seq_length or default

    def total_steps(self, seq_length: int, data_parallel: int = 1) -> int:
        """Optimizer steps: ``steps``, or ``tokens`` over the tokens of one step (rounded up)."""
        if self.steps is not None:
            return self.steps
        per_step = self.micro_batch_size * self.gradient_accumulation_steps * data_parallel * seq_length
        return max(1, -(-int(self.tokens or 0) // per_step))

    def arch_after(self, arch: ModelArch) -> ModelArch:
        """Distillation trains the weights; the shapes stay."""
        return arch

    @property
    def label(self) -> str:
        what = "distill" if self.has_teacher else "finetune"
        return f"{what}-{self.steps}steps" if self.steps is not None else f"{what}-{_human(parse_count(self.tokens))}tokens"


# --------------------------------------------------------------------------- export
OWN_OUTPUT_NAMES = ("manifest.json",)
"""Files this package writes at the top of ``output_dir``; names starting with ``.`` (the run's journal and
resume state) and ``NN-...`` (a stage's own folder, ``01-quantize-fp8``) are its own too."""
_STAGE_FOLDER = re.compile(r"[0-9]{2,}-")


def output_folder_problem(value: object) -> str:
    """Why ``value`` cannot name a folder of ours inside ``output_dir`` ("" when it can): absolute, climbing
    out with ``..``, empty, or colliding with the manifest, a stage folder or the run's hidden files."""
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty relative folder"
    if "\0" in value or "\\" in value:
        return "must not hold NUL bytes or backslashes"
    if value.startswith(("/", "~")):
        return "must be relative to output_dir, not absolute"
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if not parts:
        return "must name a folder below output_dir, not output_dir itself"
    if ".." in parts:
        return "must stay inside output_dir (no '..')"
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts) or len(value) > 1024:
        return "has a name longer than a file system allows (255 bytes a part)"
    top = parts[0]
    if top in OWN_OUTPUT_NAMES or top.startswith(".") or _STAGE_FOLDER.match(top):
        return f"{top!r} is a name the run writes itself (the manifest, a stage folder NN-..., hidden run files)"
    return ""


@attrs.frozen(kw_only=True, field_transformer=typed_fields)
class Export:
    """Write a deployable checkpoint: the unified Hugging Face format, or vLLM's fake-quant variant."""

    quantizes: ClassVar[bool] = False
    must_come_before_quantization: ClassVar[bool] = False
    must_be_last: ClassVar[bool] = True
    needs_cuda: ClassVar[bool] = False

    technique: Literal["export"] = attrs.field(default="export", validator=one_of(["export"]))
    format: Literal["hf", "vllm_fakequant"] = attrs.field(default="hf", validator=one_of(["hf", "vllm_fakequant"]))
    """``hf``: unified HF checkpoint (TensorRT-LLM, vLLM, SGLang); ``vllm_fakequant``: BF16 + quantizer state."""
    subdir: str | None = attrs.field(default=None)
    """Folder under the recipe's ``output_dir`` (default ``export``)."""
    dtype: Literal["bf16", "fp16"] = attrs.field(default="bf16", validator=one_of(["bf16", "fp16"]))
    """Dtype of the unquantized tensors."""

    @subdir.validator
    def _check_subdir(self, attr: attrs.Attribute, value: str | None) -> None:
        if value is None:
            return
        problem = output_folder_problem(value)
        if problem:
            raise fail(attr.name, f"{problem}, got {brief(value)}",
                       "a plain relative folder such as export or hf/fp8")

    def arch_after(self, arch: ModelArch) -> ModelArch:
        return arch

    @property
    def label(self) -> str:
        return "export-" + self.format

    @property
    def folder(self) -> str:
        return self.subdir or "export"


Stage = Quantize | AutoQuantize | Prune | Distill | Export
STAGE_TYPES: tuple[type, ...] = (Quantize, AutoQuantize, Prune, Distill, Export)
