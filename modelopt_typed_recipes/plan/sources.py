"""Where a run's weights come from, checked and resolved once: checkpoint folders, the weights that ship
with the package, and the layer spec a Megatron checkpoint of ours was saved with (read from disk here,
so ``spec/`` stays plain data)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CompatibilityError, RecipeError, SpecError
from ..spec.arch import ModelArch
from ..spec.recipe import Builtin, HFCheckpoint, MegatronCheckpoint, RandomInit, Recipe
from .environment import Environment
from .outputs import user_path


def _saved_info(src: MegatronCheckpoint) -> dict:
    """What this package wrote beside a checkpoint's shards (``MegatronCheckpoint.INFO_FILE``); {} when nothing."""
    try:
        data = json.loads((user_path(src.path, path="source.path") / MegatronCheckpoint.INFO_FILE).read_text())
    except (OSError, ValueError):  # SpecError (~user with no home) is a ValueError too
        return {}
    return data if isinstance(data, dict) else {}


def saved_layer_spec(src: MegatronCheckpoint) -> str | None:
    """The layer spec (``local``, ``modelopt``, ``te``) this package saved the checkpoint with, if recorded:
    a model must be rebuilt with the same spec, or the shards' names do not match."""
    spec = _saved_info(src).get("layer_spec")
    return spec if isinstance(spec, str) else None


def trained_source(src: object) -> bool:
    """Whether the source's weights were trained while quantized (QAT, QAD) and not calibrated again since: a
    Megatron checkpoint whose info file, written by this package's save, says so. Its export snaps them as the
    training run's would (``runtime.quant_grid``); a checkpoint that says nothing is exported as calibrated."""
    return isinstance(src, MegatronCheckpoint) and _saved_info(src).get("trained_while_quantized") is True


def quantized_source(src: object) -> bool:
    """Whether the source arrives quantized: a Megatron checkpoint saved with ModelOpt's state (its
    ``modelopt_state`` folder, which ``runtime.megatron.build.load_checkpoint`` restores with the quantizers). A
    state of other modes only counts too, harmlessly: the snap it leads to finds no quantizer to move."""
    if not isinstance(src, MegatronCheckpoint):
        return False
    try:
        return (user_path(src.path, path="source.path") / "modelopt_state").is_dir()
    except (OSError, SpecError):  # source_problems reports the path
        return False


def builtin_weights(arch: ModelArch) -> Path | None:
    """The shipped Hugging Face folder of a registry model (None when it ships none)."""
    from ..catalog.models.reference import builtin_weights_dir

    return builtin_weights_dir(arch.name)


def weights_dir(recipe: Recipe, arch: ModelArch) -> Path | None:
    """The Hugging Face folder a run loads: the source's, or the shipped weights (None: random init or a
    Megatron checkpoint)."""
    src = recipe.source
    if isinstance(src, HFCheckpoint):
        return user_path(src.path, path="source.path")
    if isinstance(src, Builtin):
        return builtin_weights(arch)
    return None


def quantized_export_problem(folder: Path, config: dict, path: str) -> RecipeError | None:
    """A ModelOpt export given as a model to load (``hf_quant_config.json`` beside it, or ``quant_method:
    modelopt`` in its config): its weights are low-precision codes stored beside their scales, which both
    backends' loaders would read as plain weights (the reference model's FP8 export, loaded so, measured a
    held-out perplexity of 2,145 against its 47). None for any other folder."""
    qc = config.get("quantization_config")
    if not (folder / "hf_quant_config.json").is_file() and not (
            isinstance(qc, dict) and qc.get("quant_method") == "modelopt"):
        return None
    algo = qc.get("quant_algo") if isinstance(qc, dict) else None
    what = f" ({str(algo)[:40]})" if algo else ""
    return CompatibilityError(
        f"{str(folder)[:200]!r} is a quantized ModelOpt export{what}: its weights are stored codes with scales, "
        "not weights to load", path=path,
        hint="point at the unquantized checkpoint the export was made from; an export is for deployment "
             "with TensorRT-LLM, vLLM or SGLang")


def _shape(arch: ModelArch) -> dict[str, int]:
    """The sizes that decide every weight's shape (the parameter count covers heads, experts and the rest)."""
    return {"layers": arch.num_layers, "hidden size": arch.hidden_size, "FFN size": arch.ffn_hidden_size,
            "vocabulary": arch.vocab.size, "parameters": arch.params_total}


def source_arch_problem(arch: ModelArch, folder: Path, config: dict,
                        field: str = "source.path") -> RecipeError | None:
    """``model`` and the source's ``config.json`` (``field`` names where the folder was given) describing different
    models. Everything the plan says (memory, layouts, which layers a stage quantizes) and the manifest's
    architecture follow ``model``, while the backends load the folder: the Hugging Face backend ran such a recipe on
    the folder's model and reported ``model``'s; Megatron-Core's import failed only after building the model, and
    its export wrote the reference's ``config.json`` beside weights of another shape. None when they agree, or
    when the config is one the bridge cannot read (the loader then says why)."""
    from ..bridges.hf_config import from_hf_config

    try:
        found = from_hf_config(config)
    except RecipeError:
        return None
    return _arch_mismatch(arch, found, field, inline=f"`python -m modelopt_typed_recipes arch from-hf "
                                                    f"{str(folder)[:200]}` prints one")


def _arch_mismatch(arch: ModelArch, found: ModelArch, field: str, *, inline: str) -> RecipeError | None:
    """``model`` (``arch``) against the architecture ``found`` in ``field``: a CompatibilityError at ``model``
    naming the sizes that differ and the registry model of that shape (else ``inline`` says where an inline
    architecture comes from), or None when they agree."""
    want, got = _shape(arch), _shape(found)
    if want == got:
        return None
    from ..catalog import list_archs

    differ = ", ".join(f"{k} {want[k]:,} against {got[k]:,}" for k in want if want[k] != got[k])
    same = [a.name for a in list_archs() if _shape(a) == got]
    hint = (f"model: {same[0]} (the registry's architecture of this checkpoint)" if same else
            f"an inline architecture: {inline}")
    return CompatibilityError(f"model {arch.name!r} is not the model in {field} (the model's against the "
                              f"checkpoint's: {differ})", path="model",
                              hint=hint)


def hf_config_problems(folder: Path, path: str = "source.path") -> list[RecipeError]:
    """A checkpoint's ``config.json`` that transformers would fail on or misread: unreadable (read with the
    bridge's bounds), a model type only the checkpoint's own code defines (this package never runs that code),
    or a quantized ModelOpt export."""
    from ..bridges.hf_config import HF_MODEL_TYPES, read_config_json

    try:
        config = read_config_json(folder)
    except SpecError as err:
        return [SpecError(err.message, path=path, hint=err.hint)]
    exported = quantized_export_problem(folder, config, path)
    if exported is not None:
        return [exported]
    model_type = config.get("model_type")
    if "auto_map" in config and isinstance(model_type, str) and model_type not in HF_MODEL_TYPES:
        return [CompatibilityError(
            f"model type {model_type[:80]!r} of {str(folder)[:200]!r} is defined by the checkpoint's own code "
            "(auto_map); this package does not run a checkpoint's code", path=path,
            hint="supported model types: " + ", ".join(sorted(HF_MODEL_TYPES)))]
    return []


def recorded_arch(src: MegatronCheckpoint) -> ModelArch | None:
    """The architecture this package recorded beside a Megatron checkpoint's shards (``model_arch.yaml``: a prune
    stage's checkpoint records the pruned one), or None (another tool's checkpoint, or a record unreadable here)."""
    from ..spec.serde import from_yaml

    try:
        record = user_path(src.path, path="source.path") / "model_arch.yaml"
        return from_yaml(record.read_text(), ModelArch, source=str(record))
    except (OSError, ValueError):  # RecipeError is a ValueError; a checkpoint without the record reads None
        return None


def _model_type(arch: ModelArch) -> str:
    """The transformers model type that builds ``arch`` (pruning never changes it), or its kind when none does."""
    from ..bridges.hf_config import hf_model_type

    try:
        return hf_model_type(arch)
    except RecipeError:
        return arch.kind


def _could_be_pruned_from(arch: ModelArch, found: ModelArch) -> bool:
    """``arch`` no larger than ``found`` in every size Minitron pruning cuts (layers, hidden, FFN, heads): a checkpoint
    pruned by another tool (Megatron-LM's ``prune.py``) records no architecture, and its ``hf_reference`` is the
    unpruned model's folder. Such a pair is checked as a recorded pruned checkpoint is, on what the reference keeps;
    a larger ``model`` cannot have come from the reference and is refused."""
    sizes = ((arch.num_layers, found.num_layers), (arch.hidden_size, found.hidden_size),
             (arch.ffn_hidden_size, found.ffn_hidden_size), (arch.params_total, found.params_total))
    heads = (getattr(arch.attention, "num_heads", None), getattr(found.attention, "num_heads", None))
    return all(a <= b for a, b in sizes) and (None in heads or heads[0] <= heads[1])


def _reference_arch_problems(src: MegatronCheckpoint, arch: ModelArch, *, exports: bool) -> list[RecipeError]:
    """``model`` against what a Megatron checkpoint holds: the architecture it records (``recorded_arch``), else
    its local ``hf_reference`` folder's config (a Hub id, or a folder whose config the bridge cannot read, is left to
    the export, which says why). With a record, or without one when ``model`` could be a prune of the reference
    (``_could_be_pruned_from``), the reference (often the unpruned model's folder) gives the tokenizer and the
    export's config, over which ModelOpt's exporter writes the model's layer,
    hidden, FFN and head sizes: its vocabulary and model type must be the model's, and with an export stage its MoE
    sizes too."""
    recorded = recorded_arch(src)
    if recorded is not None:
        mismatch = _arch_mismatch(arch, recorded, "source.path (its model_arch.yaml)",
                                  inline=f"the one in {str(src.path)[:200]}/model_arch.yaml")
        if mismatch is not None:
            return [mismatch]
    if src.hf_reference is None:
        return []
    try:
        ref = user_path(src.hf_reference, path="source.hf_reference")
    except SpecError:
        return []
    if not (ref / "config.json").is_file():
        return []
    from ..bridges.hf_config import from_hf_config, read_config_json

    try:
        config = read_config_json(ref)
        found = from_hf_config(config)
    except RecipeError:
        return []
    if recorded is None and not _could_be_pruned_from(arch, found):
        mismatch = _arch_mismatch(arch, found, "source.hf_reference", inline=f"`python -m modelopt_typed_recipes "
                                                                             f"arch from-hf {str(ref)[:200]}` prints one")
        return [mismatch] if mismatch is not None else []
    kept: dict[str, tuple[object, object]] = {"vocabulary": (arch.vocab.size, found.vocab.size),
                                               "model type": (_model_type(arch), _model_type(found))}
    if exports:
        moe, ref_moe = arch.moe, found.moe
        kept.update({"experts": (moe.num_experts if moe else 0, ref_moe.num_experts if ref_moe else 0),
                     "expert FFN size": (moe.ffn_hidden_size if moe else 0, ref_moe.ffn_hidden_size if ref_moe else 0),
                     "shared expert FFN size": ((moe and moe.shared_expert_ffn_size) or 0,
                                                (ref_moe and ref_moe.shared_expert_ffn_size) or 0)})
    differ = {k: ab for k, ab in kept.items() if ab[0] != ab[1]}
    if not differ:
        return []
    why = "the run reads its tokenizer" if "vocabulary" in differ else "the export keeps those from its config.json"
    sizes = ", ".join(f"{k} {a:,} against {b:,}" if isinstance(a, int) else f"{k} {a!r} against {b!r}"
                      for k, (a, b) in differ.items())
    return [CompatibilityError(
        f"source.hf_reference is not a folder of this checkpoint's model (the model's against the folder's: {sizes}); "
        f"{why}", path="source.hf_reference",
        hint="point hf_reference at the Hugging Face folder of the model the checkpoint was made from")]


def source_problems(recipe: Recipe, arch: ModelArch, env: Environment, backend: str) -> list[RecipeError]:
    """Every problem of the recipe's source on this machine and backend."""
    from ..catalog.models.reference import BUILTIN_WEIGHTS

    src = recipe.source
    out: list[RecipeError] = []
    if isinstance(src, HFCheckpoint | MegatronCheckpoint):
        try:
            p: Path | None = user_path(src.path, path="source.path")
        except SpecError as err:
            out.append(err)
            p = None
        if p is None:
            pass
        elif not p.exists():
            out.append(SpecError(f"checkpoint directory {src.path!r} does not exist", path="source.path",
                                 hint="check the path, or use source: {type: builtin} for the reference model"))
        elif not p.is_dir():
            out.append(SpecError(f"{src.path!r} is a file, not a checkpoint directory", path="source.path"))
        elif isinstance(src, HFCheckpoint) and not (p / "config.json").is_file():
            out.append(SpecError(f"{src.path!r} has no config.json: not a Hugging Face checkpoint",
                                 path="source.path"))
        elif isinstance(src, HFCheckpoint):
            problems = hf_config_problems(p)
            out += problems
            if not problems:
                from ..bridges.hf_config import read_config_json

                mismatch = source_arch_problem(arch, p, read_config_json(p))
                out += [mismatch] if mismatch is not None else []
        elif isinstance(src, MegatronCheckpoint) and not (p / "metadata.json").is_file():
            # megatron/build.load_checkpoint says so only after the model is built
            out.append(SpecError(f"{src.path!r} is not a Megatron distributed checkpoint (no metadata.json)",
                                 path="source.path", hint="point at the folder a Megatron-Core save wrote"))
        elif isinstance(src, MegatronCheckpoint) and backend == "megatron":
            exports = any(getattr(st, "technique", None) == "export" for st in recipe.stages)
            out += _reference_arch_problems(src, arch, exports=exports)
            saved = saved_layer_spec(src)
            if saved in ("te", "modelopt") and not env.transformer_engine:
                out.append(CompatibilityError(
                    f"this checkpoint was saved with the {saved!r} layer spec, which needs Transformer Engine",
                    path="source.path", hint="install transformer-engine[pytorch] matching your CUDA"))
    if isinstance(src, MegatronCheckpoint) and backend == "hf":
        out.append(CompatibilityError(
            "the Hugging Face backend reads Hugging Face checkpoints, not Megatron distributed checkpoints",
            path="source.type", hint="backend: megatron (on a GPU)"))
    if isinstance(src, RandomInit) and arch.vocab.size < 257:
        # random weights read the reference tokenizer's ids, or UTF-8 bytes below its vocabulary
        # (runtime.data.random_init_tokenizer): the ids must be rows of the embedding
        out.append(SpecError(f"random weights are fed UTF-8 bytes and an end-of-text id (257 ids), more than this "
                             f"model's vocabulary of {arch.vocab.size}", path="model.vocab.size",
                             hint="use a vocabulary of at least 257"))
    if isinstance(src, Builtin):
        folder = builtin_weights(arch)
        if folder is None:
            out.append(SpecError(f"{arch.name} ships no weights with this package", path="source",
                                 hint=f"built-in weights exist for: {', '.join(BUILTIN_WEIGHTS)}"))
        elif not (folder / "model.safetensors").is_file():
            out.append(SpecError(f"the built-in weights of {arch.name} are missing ({folder})", path="source",
                                 hint="reinstall modelopt-typed-recipes"))
    return out
