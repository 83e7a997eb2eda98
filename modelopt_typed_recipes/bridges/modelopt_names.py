"""ModelOpt's names, without importing ModelOpt: presets, recipes, quantizer patterns, Megatron-Core module names.

``import modelopt.torch.quantization`` takes seconds (it imports torch and builds every preset), so the
checks that run before any GPU work use this module instead:

* the 39 ``mtq.*_CFG`` preset names of ModelOpt 0.47 and the YAML file each is loaded from (a test
  compares the list with the installed ``mtq.config.choices``);
* a small reader for ModelOpt's YAML recipes (``imports:`` / ``$import:`` composition) that returns the
  ordered ``quant_cfg`` list the real loader would build (a test compares it with ``load_recipe`` and the
  ``mtq`` constants for every built-in preset and recipe);
* ``fnmatch`` matching exactly as ``set_quantizer_by_cfg`` does it;
* the Megatron-Core module names a :class:`ModelArch` produces (``decoder.layers.3.mlp.linear_fc1``),
  generated from the architecture alone (a test builds tiny ``GPTModel`` s on the CPU and compares).

Pure Python: YAML files are read from the installed ``modelopt_recipes`` package directory, found with
``importlib.util.find_spec`` (which does not execute the package).
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from ..errors import SpecError, UnknownNameError, did_you_mean
from ..spec.arch import MLAttention, ModelArch
from ..spec.bounded import load_yaml_all, read_text
from ..spec.techniques import KV_CACHE_FORMATS as SPEC_KV_CACHE_FORMATS

MODELOPT_VERSION = "0.47.0"

# --------------------------------------------------------------------------- presets (mtq.config.choices, 0.47)
#: ``mtq`` constant -> YAML file under ``modelopt_recipes/configs/ptq/presets/`` it is loaded from.
PRESET_FILES: dict[str, str] = {
    "FP8_DEFAULT_CFG": "model/fp8",
    "FP8_PER_CHANNEL_PER_TOKEN_CFG": "model/fp8_per_channel_per_token",
    "FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG": "model/fp8_2d_blockwise_weight_only",
    "INT8_DEFAULT_CFG": "model/int8",
    "INT8_SMOOTHQUANT_CFG": "model/int8_smoothquant",
    "INT8_WEIGHT_ONLY_CFG": "model/int8_weight_only",
    "INT4_AWQ_CFG": "model/int4_awq",
    "INT4_BLOCKWISE_WEIGHT_ONLY_CFG": "model/int4_blockwise_weight_only",
    "W4A8_AWQ_BETA_CFG": "model/w4a8_awq_beta",
    "NVFP4_DEFAULT_CFG": "model/nvfp4",
    "NVFP4_AWQ_LITE_CFG": "model/nvfp4_awq_lite",
    "NVFP4_AWQ_CLIP_CFG": "model/nvfp4_awq_clip",
    "NVFP4_AWQ_FULL_CFG": "model/nvfp4_awq_full",
    "NVFP4_W4A4_WEIGHT_MSE_FP8_SWEEP_CFG": "model/nvfp4_w4a4_weight_mse_fp8_sweep",
    "NVFP4_W4A4_WEIGHT_LOCAL_HESSIAN_CFG": "model/nvfp4_w4a4_weight_local_hessian",
    "NVFP4_FOUR_OVER_SIX_CFG": "model/nvfp4_four_over_six",
    "NVFP4_FP8_MHA_CONFIG": "model/nvfp4_fp8_mha",
    "NVFP4_SVDQUANT_DEFAULT_CFG": "model/nvfp4_svdquant",
    "W4A16_NVFP4_CFG": "model/w4a16_nvfp4",
    "W4A8_NVFP4_FP8_CFG": "model/w4a8_nvfp4_fp8",
    "W4A8_MXFP4_FP8_CFG": "model/w4a8_mxfp4_fp8",
    "NVFP4_MLP_ONLY_CFG": "model/nvfp4_mlp_only",
    "NVFP4_OMLP_ONLY_CFG": "model/nvfp4_omlp_only",
    "NVFP4_EXPERTS_ONLY_CFG": "model/nvfp4_experts_only",
    "NVFP4_MLP_WEIGHT_ONLY_CFG": "model/nvfp4_mlp_weight_only",
    "MXFP4_MLP_WEIGHT_ONLY_CFG": "model/mxfp4_mlp_weight_only",
    "MXFP8_DEFAULT_CFG": "model/mxfp8",
    "MXFP6_DEFAULT_CFG": "model/mxfp6",
    "MXFP4_DEFAULT_CFG": "model/mxfp4",
    "MXINT8_DEFAULT_CFG": "model/mxint8",
    "MAMBA_MOE_FP8_AGGRESSIVE_CFG": "model/mamba_moe_fp8_aggressive",
    "MAMBA_MOE_FP8_CONSERVATIVE_CFG": "model/mamba_moe_fp8_conservative",
    "MAMBA_MOE_NVFP4_AGGRESSIVE_CFG": "model/mamba_moe_nvfp4_aggressive",
    "MAMBA_MOE_NVFP4_CONSERVATIVE_CFG": "model/mamba_moe_nvfp4_conservative",
    # KV-cache-only presets: partial configs meant to be merged into a model preset
    "FP8_KV_CFG": "kv/fp8",
    "FP8_AFFINE_KV_CFG": "kv/fp8_affine",
    "NVFP4_KV_CFG": "kv/nvfp4",
    "NVFP4_AFFINE_KV_CFG": "kv/nvfp4_affine",
    "NVFP4_KV_ROTATE_CFG": "kv/nvfp4_rotate",
}
PRESETS: tuple[str, ...] = tuple(PRESET_FILES)
KV_ONLY_PRESETS: frozenset[str] = frozenset(k for k, v in PRESET_FILES.items() if v.startswith("kv/"))
MODEL_PRESETS: tuple[str, ...] = tuple(k for k in PRESETS if k not in KV_ONLY_PRESETS)

#: ``modelopt.recipe.presets.KV_QUANT_CFG_CHOICES`` keys (the spec's list) plus ``"none"``.
KV_CACHE_FORMATS: tuple[str, ...] = ("none", *SPEC_KV_CACHE_FORMATS)

#: Built-in full recipes (``load_recipe`` names) shipped in the 0.47 wheel.
BUILTIN_PTQ_RECIPES: tuple[str, ...] = (
    "general/ptq/fp8_default-kv_fp8",
    "general/ptq/fp8_default-kv_fp8_cast",
    "general/ptq/int4_blockwise_weight_only",
    "general/ptq/mxfp4_mlp_weight_only",
    "general/ptq/nvfp4_act_headroom-kv_fp8_cast",
    "general/ptq/nvfp4_default-kv_fp8",
    "general/ptq/nvfp4_default-kv_fp8_cast",
    "general/ptq/nvfp4_default-kv_none-gptq",
    "general/ptq/nvfp4_default-kv_nvfp4_cast",
    "general/ptq/nvfp4_experts_only-kv_fp8",
    "general/ptq/nvfp4_experts_only-kv_fp8_cast",
    "general/ptq/nvfp4_experts_only-kv_fp8_layerwise",
    "general/ptq/nvfp4_experts_only-kv_fp8_layerwise_offload",
    "general/ptq/nvfp4_experts_only_input_scale1-kv_fp8_cast",
    "general/ptq/nvfp4_experts_only_mse-kv_fp8_cast",
    "general/ptq/nvfp4_mlp_only-kv_fp8",
    "general/ptq/nvfp4_mlp_only-kv_fp8_cast",
    "general/ptq/nvfp4_mlp_only-novit-kv_fp8",
    "general/ptq/nvfp4_mlp_only_mse-kv_fp8_cast",
    "general/ptq/nvfp4_mlp_weight_only",
    "general/ptq/nvfp4_omlp_only-kv_fp8",
    "general/ptq/nvfp4_omlp_only-kv_fp8_cast",
    "general/ptq/nvfp4_weight_only-kv_fp16",
    "general/ptq/nvfp4_weight_only-kv_fp8_cast",
)
BUILTIN_AUTO_QUANTIZE_RECIPES: tuple[str, ...] = (
    "general/auto_quantize/nvfp4_fp8_at_5p4bits",
    "general/auto_quantize/nvfp4_fp8_kl_div_at_5p4bits",
    "general/auto_quantize/nvfp4_mse_fp8_at_6p0bits",
    "general/auto_quantize/w4a16_nvfp4_fp8_at_6p0bits-active_moe",
    "general/auto_quantize/w4a8_awq_beta_fp8_at_6p0bits",
)

#: Calibration algorithms ``auto_quantize`` refuses inside a candidate format (ModelOpt raises ValueError).
AUTO_QUANTIZE_FORBIDDEN_ALGORITHMS = frozenset({"gptq", "svdquant", "lsq", "nvfp4_act_headroom"})
#: Algorithms that assert a calibration forward loop.
ALGORITHMS_NEEDING_DATA = frozenset({"smoothquant", "awq_lite", "awq_clip", "awq_full", "gptq",
                                     "local_hessian", "svdquant", "nvfp4_act_headroom"})


def check_preset(name: str, *, path: str = "") -> str:
    """``name`` if it is a 0.47 preset, else an :class:`UnknownNameError` with a suggestion."""
    if name in PRESET_FILES:
        return name
    upper = name.upper()
    for cand in (upper, f"{upper}_CFG", f"{upper}_DEFAULT_CFG"):
        if cand in PRESET_FILES:
            raise UnknownNameError(f"unknown ModelOpt preset {name!r}", path=path, hint=f"did you mean {cand!r}?")
    raise UnknownNameError(
        f"unknown ModelOpt preset {name!r}",
        path=path,
        hint=did_you_mean(name, PRESETS) or "see `mtrecipes recipes --json` or modelopt.torch.quantization.config.choices",
    )


# --------------------------------------------------------------------------- YAML recipe reader
@functools.cache
def recipes_root() -> Path | None:
    """Directory of the installed ``modelopt_recipes`` package (the YAML tree), without importing it."""
    spec = importlib.util.find_spec("modelopt_recipes")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _resolve_file(ref: str, *, base: Path | None = None) -> Path:
    """Find a config the way ModelOpt does: on disk first, then in the built-in library; suffix optional."""
    ref = ref.replace("huggingface/models/", "models/") if ref.startswith("huggingface/models/") else ref
    names = [ref] if ref.endswith((".yml", ".yaml")) else [f"{ref}.yml", f"{ref}.yaml"]
    roots: list[Path | None] = [None]
    if base is not None:
        roots.append(base)
    roots.append(recipes_root())
    for root in roots:
        for name in names:
            p = Path(name) if root is None else root / name
            try:
                if p.is_file():
                    return p
            except (OSError, ValueError):  # a name the file system cannot hold (too long, NUL): not found
                continue
    raise UnknownNameError(
        f"cannot find ModelOpt config {ref!r} (on disk or in the installed modelopt_recipes)",
        hint=did_you_mean(ref, BUILTIN_PTQ_RECIPES + BUILTIN_AUTO_QUANTIZE_RECIPES) or "",
    )


def _read_yaml(path: Path) -> tuple[dict[str, str], Any]:
    """(imports, body) of one config file; a two-document file is a header plus a list body."""
    docs = load_yaml_all(read_text(path, what="ModelOpt recipe"), source=str(path))
    if not docs or docs[0] is None:
        return {}, {}
    if len(docs) == 1:
        body = docs[0]
        imports = body.pop("imports", None) if isinstance(body, dict) else None
        return dict(imports or {}), body
    header, body = docs[0], docs[1]
    imports = dict((header or {}).get("imports") or {})
    if isinstance(body, dict):
        merged = {k: v for k, v in (header or {}).items() if k != "imports"}
        merged.update(body)
        body = merged
    return imports, body


_EXMY = re.compile(r"^[Ee](\d+)[Mm](\d+)$")


def _load(ref: str | Path, *, stack: tuple[str, ...] = ()) -> Any:
    path = ref if isinstance(ref, Path) else _resolve_file(ref)
    key = str(path.resolve())
    if key in stack:
        raise SpecError(f"import cycle through {path}", path=str(path))
    imports, body = _read_yaml(path)
    loaded: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in imports:
            raise SpecError(f"$import of {name!r}, which the file's imports: does not name", path=str(path))
        if name not in loaded:
            loaded[name] = _load(imports[name], stack=(*stack, key))
        return loaded[name]

    return _expand(body, get)


def _expand(node: Any, get: Any) -> Any:
    """Replace ``$import`` references: a list item that imports a list is spliced, a mapping is merged."""
    if isinstance(node, list):
        out: list[Any] = []
        for item in node:
            if isinstance(item, dict) and set(item) == {"$import"}:
                value = get(item["$import"])
                if isinstance(value, list):
                    out.extend(_copy(value))
                else:
                    out.append(_copy(value))
            else:
                out.append(_expand(item, get))
        return out
    if isinstance(node, dict):
        out_d: dict[str, Any] = {}
        if "$import" in node:
            refs = node["$import"]
            for ref in refs if isinstance(refs, list) else [refs]:
                value = get(ref)
                if not isinstance(value, dict):
                    raise SpecError(f"$import {ref!r} inside a mapping must name a mapping")
                out_d.update(_copy(value))
        for k, v in node.items():
            if k == "$import":
                continue
            m = _EXMY.match(v) if k in ("num_bits", "scale_bits") and isinstance(v, str) else None
            if m is not None:
                out_d[k] = (int(m.group(1)), int(m.group(2)))
            else:
                out_d[k] = _expand(v, get)
        return out_d
    return node


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@functools.cache
def _preset_cached(name: str) -> dict[str, Any]:
    return _load(f"configs/ptq/presets/{PRESET_FILES[name]}")


def preset_config(name: str) -> dict[str, Any]:
    """A preset's ``{"quant_cfg": [...], "algorithm": ...}`` as ``mtq.<name>`` holds it (a fresh copy)."""
    check_preset(name)
    return _copy(_preset_cached(name))


def kv_cache_entries(kv: str) -> list[dict[str, Any]]:
    """The ``quant_cfg`` entries of a KV-cache preset (``fp8``, ``nvfp4_cast`` ...); ``none`` gives []."""
    if kv == "none":
        return []
    if kv not in KV_CACHE_FORMATS:
        raise UnknownNameError(f"unknown KV-cache format {kv!r}", hint=did_you_mean(kv, KV_CACHE_FORMATS) or
                               f"one of {', '.join(KV_CACHE_FORMATS)}")
    return _copy(_load(f"configs/ptq/presets/kv/{kv}")["quant_cfg"])


def load_recipe_dict(ref: str) -> dict[str, Any]:
    """A ModelOpt YAML recipe (built-in name or file), ``$import`` s resolved: ``metadata`` plus
    ``quantize`` (PTQ) or ``auto_quantize``. Raises a SpecError when the file is not a recipe."""
    data = _load(ref)
    if not isinstance(data, dict) or "metadata" not in data:
        raise SpecError(f"{ref!r} is not a ModelOpt recipe (no metadata: section)",
                        hint="a recipe has metadata: {recipe_type: ptq} and quantize: {...}")
    rtype = (data.get("metadata") or {}).get("recipe_type")
    if rtype == "ptq" and not isinstance(data.get("quantize"), dict):
        raise SpecError(f"PTQ recipe {ref!r} has no quantize: section")
    if rtype == "auto_quantize" and not isinstance(data.get("auto_quantize"), dict):
        raise SpecError(f"auto-quantize recipe {ref!r} has no auto_quantize: section")
    if rtype not in ("ptq", "auto_quantize"):
        raise SpecError(f"recipe {ref!r} has recipe_type {rtype!r}; only ptq and auto_quantize post-train here")
    return data


# --------------------------------------------------------------------------- matching
_FUSED_EXPERT = re.compile(r"(weight_quantizers?|input_quantizers?)\.\d+(?=$|\.)")


def matches(pattern: str, quantizer_name: str) -> bool:
    """``fnmatch`` the way ModelOpt's ``_match_quantizer`` does (per-expert list indices stripped too)."""
    if fnmatch.fnmatchcase(quantizer_name, pattern):
        return True
    normalized = _FUSED_EXPERT.sub(lambda m: m.group(1).removesuffix("s"), quantizer_name)
    return normalized != quantizer_name and fnmatch.fnmatchcase(normalized, pattern)


def layer_pattern(index: int) -> str:
    """A pattern for one decoder layer: ``*layers.3.*`` (``*layers.3*`` would also catch 30-39)."""
    return f"*decoder.layers.{index}.*"


def layers_pattern(indices: list[int] | range) -> list[str]:
    return [layer_pattern(i) for i in indices]


# --------------------------------------------------------------------------- Megatron-Core module names
@attrs.frozen(kw_only=True)
class QuantModule:
    """One module ModelOpt puts quantizers on: its Megatron-Core name, role and quantizer names."""

    name: str
    kind: str
    """``attention_qkv``, ``attention_proj``, ``mlp_fc1`` ... (see :func:`mcore_modules`)."""
    parent_class: str
    """Its key in ModelOpt's ``QuantModuleRegistry`` (for ``parent_class`` entries)."""
    quantizers: tuple[str, ...] = ("input_quantizer", "weight_quantizer", "output_quantizer")
    weight_numel: int = 0
    """Elements of its weight (what ModelOpt's auto-quantize cost counts; 0 for attention's KV quantizers)."""

    def quantizer_names(self) -> Iterator[str]:
        for q in self.quantizers:
            yield f"{self.name}.{q}" if self.name else q


COLUMN = "megatron_ColumnParallelLinear"
ROW = "megatron_RowParallelLinear"
TE_ATTENTION = "TEDotProductAttention"


def _mlp(prefix: str, kind: str, width: int = 0, ffn: int = 0, gated: bool = False) -> list[QuantModule]:
    return [QuantModule(name=f"{prefix}.linear_fc1", kind=f"{kind}_fc1", parent_class=COLUMN,
                        weight_numel=width * ffn * (2 if gated else 1)),
            QuantModule(name=f"{prefix}.linear_fc2", kind=f"{kind}_fc2", parent_class=ROW, weight_numel=ffn * width)]


def mcore_modules(arch: ModelArch, *, te_attention: bool = False) -> list[QuantModule]:
    """Every quantizable module of the Megatron-Core model the runtime builds for ``arch``.

    The runtime builds ModelOpt's layout: local (or TE) Column/RowParallelLinear, ``SequentialMLP`` for
    experts (``local_experts.<e>``), so the names below are those of the whole model at EP=1. KV-cache
    quantizers (``core_attention.{q,k,v}_bmm_quantizer``) exist only with TE attention.
    """
    out: list[QuantModule] = []
    att, h, gated = arch.attention, arch.hidden_size, arch.activation.gated
    for i, (has_attn, mlp) in enumerate(arch.layer_kinds()):
        p = f"decoder.layers.{i}"
        if has_attn:
            sa = f"{p}.self_attention"
            if isinstance(att, MLAttention):
                qk = att.qk_head_dim + att.qk_pos_emb_head_dim
                if att.q_lora_rank:
                    out.append(QuantModule(name=f"{sa}.linear_q_down_proj", kind="attention_q_down", parent_class=COLUMN,
                                           weight_numel=h * att.q_lora_rank))
                    out.append(QuantModule(name=f"{sa}.linear_q_up_proj", kind="attention_q_up", parent_class=COLUMN,
                                           weight_numel=att.q_lora_rank * att.num_heads * qk))
                else:
                    out.append(QuantModule(name=f"{sa}.linear_q_proj", kind="attention_q", parent_class=COLUMN,
                                           weight_numel=h * att.num_heads * qk))
                out.append(QuantModule(name=f"{sa}.linear_kv_down_proj", kind="attention_kv_down", parent_class=COLUMN,
                                       weight_numel=h * (att.kv_lora_rank + att.qk_pos_emb_head_dim)))
                out.append(QuantModule(name=f"{sa}.linear_kv_up_proj", kind="attention_kv_up", parent_class=COLUMN,
                                       weight_numel=att.kv_lora_rank * att.num_heads * (att.qk_head_dim + att.v_head_dim)))
                proj = att.num_heads * att.v_head_dim * h
            else:
                q, kv = att.num_heads * arch.head_dim, att.query_groups * arch.head_dim
                out.append(QuantModule(name=f"{sa}.linear_qkv", kind="attention_qkv", parent_class=COLUMN,
                                       weight_numel=h * (q + 2 * kv)))
                proj = q * h
            if te_attention:
                out.append(QuantModule(name=f"{sa}.core_attention", kind="kv_cache", parent_class=TE_ATTENTION,
                                       quantizers=("q_bmm_quantizer", "k_bmm_quantizer", "v_bmm_quantizer")))
            out.append(QuantModule(name=f"{sa}.linear_proj", kind="attention_proj", parent_class=ROW, weight_numel=proj))
        if mlp == "mamba":
            heads, head_dim, groups, state = arch.require_mamba().resolved(h)
            inner = heads * head_dim
            out.append(QuantModule(name=f"{p}.mixer.in_proj", kind="mamba_in_proj", parent_class=COLUMN,
                                   weight_numel=h * (2 * inner + 2 * groups * state + heads)))
            out.append(QuantModule(name=f"{p}.mixer.out_proj", kind="mamba_out_proj", parent_class=ROW,
                                   weight_numel=inner * h))
        elif mlp == "dense":
            out += _mlp(f"{p}.mlp", "mlp", h, arch.ffn_hidden_size, gated)
        elif mlp == "moe":
            moe = arch.require_moe()
            for e in range(moe.num_experts):
                out += _mlp(f"{p}.mlp.experts.local_experts.{e}", "expert", moe.latent_size or h, moe.ffn_hidden_size,
                            gated)
            if moe.shared_expert_ffn_size:
                out += _mlp(f"{p}.mlp.shared_experts", "shared_expert", h, moe.shared_expert_ffn_size, gated)
    out.append(QuantModule(name="output_layer", kind="output_layer", parent_class=COLUMN,
                           weight_numel=arch.vocab.padded() * h))
    return out


def mcore_quantizer_names(arch: ModelArch, *, te_attention: bool = False) -> list[str]:
    return [q for m in mcore_modules(arch, te_attention=te_attention) for q in m.quantizer_names()]


def hf_modules(arch: ModelArch) -> list[QuantModule]:
    """Quantizable ``nn.Linear`` s of the transformers model for a dense Llama/Qwen-style ``arch``.

    Only dense models: transformers 5 stores MoE experts as fused parameters, not modules.
    """
    if arch.kind != "dense":
        raise SpecError(f"Hugging Face module names are generated for dense models only, not {arch.kind}")
    out: list[QuantModule] = []
    h, ffn = arch.hidden_size, arch.ffn_hidden_size
    q, kv = arch.attention.num_heads * arch.head_dim, arch.attention.query_groups * arch.head_dim
    for i in range(arch.num_layers):
        p = f"model.layers.{i}"
        for proj, width in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            out.append(QuantModule(name=f"{p}.self_attn.{proj}", kind="attention_qkv", parent_class="nn.Linear",
                                   weight_numel=h * width))
        out.append(QuantModule(name=f"{p}.self_attn.o_proj", kind="attention_proj", parent_class="nn.Linear",
                               weight_numel=q * h))
        kinds = ("mlp_fc1", "mlp_fc1", "mlp_fc2") if arch.activation.gated else ("mlp_fc1", "mlp_fc2")
        projs = ("gate_proj", "up_proj", "down_proj") if arch.activation.gated else ("up_proj", "down_proj")
        for proj, kind in zip(projs, kinds, strict=True):
            out.append(QuantModule(name=f"{p}.mlp.{proj}", kind=kind, parent_class="nn.Linear", weight_numel=h * ffn))
    out.append(QuantModule(name="lm_head", kind="output_layer", parent_class="nn.Linear",
                           weight_numel=arch.vocab.size * h))
    return out


# --------------------------------------------------------------------------- composing a config
@attrs.frozen(kw_only=True)
class ComposedConfig:
    """A ModelOpt quantize config plus, per ``quant_cfg`` entry, where it came from."""

    config: dict[str, Any]
    sources: tuple[str, ...]
    """One per entry: ``preset``, ``recipe``, ``kv_cache`` or ``exclude``."""


def compose_quant_config(base: dict[str, Any], *, base_source: str = "preset",
                         kv_entries: list[dict[str, Any]] | None = None,
                         exclude: tuple[str, ...] | list[str] = (), algorithm: str | None = None) -> ComposedConfig:
    """The config a Quantize stage hands to ``mtq.quantize``: ``base`` deep-copied, KV entries appended
    (as ``mtq.update_quant_cfg_with_kv_cache_quant`` does, algorithm ``max`` when none), then one
    ``enable: false`` entry per exclusion, last so it wins. ``base`` is never mutated."""
    cfg = _copy(base)
    entries = list(cfg.get("quant_cfg") or [])
    sources = [base_source] * len(entries)
    if kv_entries:
        entries += _copy(kv_entries)
        sources += ["kv_cache"] * len(kv_entries)
        if cfg.get("algorithm") is None:
            cfg["algorithm"] = "max"
    for pat in exclude:
        entries.append({"quantizer_name": pat, "enable": False})
        sources.append("exclude")
    cfg["quant_cfg"] = entries
    if algorithm is not None:
        cfg["algorithm"] = algorithm
    return ComposedConfig(config=cfg, sources=tuple(sources))


@functools.cache
def default_disabled_patterns() -> tuple[str, ...]:
    """Module patterns ModelOpt's own presets never quantize (``default_disabled_quantizers``: output layer,
    routers and gates, Mamba convolutions, vision towers...), for a backend's auto-quantize search.

    Only this unit: the Mamba-MoE unit also disables attention, which is right for those hybrids only.
    """
    data = _load("configs/ptq/units/default_disabled_quantizers")
    names = (e.get("quantizer_name", "") for e in (data if isinstance(data, list) else [data]))
    return tuple(dict.fromkeys(n for n in names if n and n != "*"))


def generic_exclusions() -> frozenset[str]:
    """Patterns of ModelOpt's shared exclusion units (``*lm_head*``, ``*router*``, vision towers...).

    Every preset carries them for every naming scheme, so a model that lacks such a part is normal;
    they are never reported as unmatched.
    """
    out = {"*"}
    for unit in ("default_disabled_quantizers", "mamba_moe_disabled_quantizers", "base_disable_all"):
        try:
            data = _load(f"configs/ptq/units/{unit}")
        except SpecError:
            continue
        for e in data if isinstance(data, list) else [data]:
            out.add(e.get("quantizer_name", ""))
    return frozenset(out)

