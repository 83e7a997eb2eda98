"""Where a run's weights come from, checked and resolved once: checkpoint folders, the weights that ship
with the package, and the layer spec a Megatron checkpoint of ours was saved with (read from disk here,
so ``spec/`` stays plain data)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CompatibilityError, RecipeError, SpecError, brief
from ..spec import bounded
from ..spec.arch import ModelArch
from ..spec.recipe import Builtin, HFCheckpoint, MegatronCheckpoint, RandomInit, Recipe
from .environment import Environment
from .outputs import user_path


def _record_text(folder: Path, name: str, what: str) -> str | None:
    """The text of a file this package writes beside a checkpoint's shards, read as any file a user hands us is
    (:mod:`..spec.bounded`: size, UTF-8); None when there is no such file. Only a regular file is read: a FIFO
    named so would wait for a writer forever, ``/dev/zero`` never ends. Unreadable: :class:`SpecError`."""
    record = folder / name
    try:
        regular = record.is_file()
    except OSError as exc:  # a folder this user may not search (is_file raises only then)
        raise SpecError(f"cannot read {what} {str(record)[:300]!r}: {exc.strerror or exc}", path=str(record)) from None
    return bounded.read_text(record, what=what, limit=_RECORD_BYTES) if regular else None


_RECORD_BYTES = 1 << 20
"""A record (``model_arch.yaml``, the info file) is a few kilobytes; the bound of a recipe file."""


def unsearchable(folder: Path, raw: str, field: str) -> SpecError | None:
    """A folder (or one above it) this user may not search (``chmod 000``, another user's home): every look inside
    it then raises ``PermissionError``, which pathlib's ``exists``/``is_file`` pass on (a root user never sees it).
    None when it can be searched, or is missing or not a folder (the caller says so)."""
    try:
        os.stat(os.path.join(folder, "."))
    except PermissionError as exc:
        return SpecError(f"{raw[:200]!r} cannot be read: {exc.strerror or exc}", path=field,
                         hint="give this user read and search permission on the folder (chmod u+rx), or copy it")
    except (OSError, ValueError):
        return None
    return None


def _info(src: MegatronCheckpoint) -> dict:
    """What this package wrote beside a checkpoint's shards (``MegatronCheckpoint.INFO_FILE``); {} when nothing.
    A file that is not a JSON object, or whose known keys hold other values, is a :class:`SpecError` naming it."""
    folder = user_path(src.path, path="source.path")
    text = _record_text(folder, MegatronCheckpoint.INFO_FILE, "checkpoint info file")
    if text is None:
        return {}
    where = str(folder / MegatronCheckpoint.INFO_FILE)
    data = bounded.load_json(text, source=where)
    if not isinstance(data, dict):
        raise SpecError(f"expected a JSON object, got {type(data).__name__}", path=where)
    spec = data.get("layer_spec")
    if spec is not None and spec not in MegatronCheckpoint.LAYER_SPECS:
        raise SpecError(f"layer_spec {brief(spec)} is not one of {', '.join(MegatronCheckpoint.LAYER_SPECS)}",
                        path=where)
    trained = data.get("trained_while_quantized")
    if trained is not None and not isinstance(trained, bool):
        raise SpecError(f"trained_while_quantized {brief(trained)} is not true or false", path=where)
    return data


def _saved_info(src: MegatronCheckpoint) -> dict:
    """:func:`_info`, or {} when it cannot be read (``checked_info`` reports that at ``source.path``)."""
    try:
        return _info(src)
    except (OSError, SpecError):  # SpecError: ~user with no home too
        return {}


def checked_info(src: MegatronCheckpoint) -> tuple[dict, RecipeError | None]:
    """:func:`_info` read once for the check, with the problem of one this package cannot read ({} then): the run
    would build the model with a guessed layer spec (its shards' names then fail the load, after the build) and
    export trained weights as calibrated ones."""
    try:
        return _info(src), None
    except SpecError as err:
        file = MegatronCheckpoint.INFO_FILE
        return {}, SpecError(f"its {file} cannot be read: {err.message}", path="source.path",
                             hint=f"{file} is written by this package's save; restore it from the run that saved "
                                  "the checkpoint, or delete it (the run then builds with the default layer spec "
                                  "and exports the weights as calibrated)")


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
    if isinstance(recipe.source, Builtin):
        return builtin_weights(arch)
    return source_dir(recipe) if isinstance(recipe.source, HFCheckpoint) else None


def source_dir(recipe: Recipe) -> Path | None:
    """The source checkpoint's folder (Hugging Face or Megatron-Core), ``~`` expanded as every check here expands
    it; None for other sources, or a path that cannot be expanded (:func:`source_problems` reports it)."""
    src = recipe.source
    if not isinstance(src, HFCheckpoint | MegatronCheckpoint):
        return None
    try:
        return user_path(src.path, path="source.path")
    except SpecError:
        return None


def hf_reference(recipe: Recipe, arch: ModelArch) -> str | None:
    """The Hugging Face folder (or Hub id) a Megatron-Core run imports, tokenizes and exports with, ``~`` expanded:
    the source's folder, the shipped one, or a Megatron checkpoint's ``hf_reference`` (the importer, the tokenizer
    and the exporter would take a raw ``~/...`` for a Hub id). None where there is none."""
    src = recipe.source
    if isinstance(src, MegatronCheckpoint):
        try:
            return None if src.hf_reference is None else str(user_path(src.hf_reference, path="source.hf_reference"))
        except SpecError:
            return None
    folder = builtin_weights(arch) if isinstance(src, Builtin) else source_dir(recipe)
    return str(folder) if folder is not None and (folder / "config.json").is_file() else None


def quantized_export_problem(folder: Path, config: dict, path: str) -> RecipeError | None:
    """A ModelOpt export given as a model to load (``hf_quant_config.json`` beside it, or ``quant_method:
    modelopt`` in its config): its weights are low-precision codes stored beside their scales, which both
    backends' loaders would read as plain weights (the reference model's FP8 export, loaded so, measured a
    held-out perplexity of 2,145 against its 47). None for any other folder, and for an export that quantized
    only the KV cache (:func:`_kv_cache_only`)."""
    qc = config.get("quantization_config")
    if not (folder / "hf_quant_config.json").is_file() and not (
            isinstance(qc, dict) and qc.get("quant_method") == "modelopt"):
        return None
    if _kv_cache_only(folder, qc):
        return None
    algo = qc.get("quant_algo") if isinstance(qc, dict) else None
    what = f" ({str(algo)[:40]})" if algo else ""
    return CompatibilityError(
        f"{str(folder)[:200]!r} is a quantized ModelOpt export{what}: its weights are stored codes with scales, "
        "not weights to load", path=path,
        hint="point at the unquantized checkpoint the export was made from; an export is for deployment "
             "with TensorRT-LLM, vLLM or SGLang")


def _kv_cache_only(folder: Path, qc: object) -> bool:
    """A ModelOpt export that quantized the KV cache only, as ModelOpt writes one (``_write_hf_export_config``):
    ``hf_quant_config.json`` with ``quant_algo: null`` and a ``kv_cache_quant_algo``, and a ``quantization_config``
    with a ``kv_cache_scheme`` but no ``quant_algo`` or ``config_groups``. Its weights are stored as they were
    (transformers loads the folder as a plain model); the KV scales beside them are not read. Anything else, or
    a file that cannot be read, counts as weights quantized."""
    try:
        text = _record_text(folder, "hf_quant_config.json", "quantization file")
        data = None if text is None else bounded.load_json(text, source=str(folder / "hf_quant_config.json"))
    except SpecError:
        return False
    q = data.get("quantization") if isinstance(data, dict) else None
    file_says = text is None or (isinstance(q, dict) and "quant_algo" in q and q["quant_algo"] is None
                                 and q.get("kv_cache_quant_algo") is not None)
    config_says = qc is None or (isinstance(qc, dict) and qc.get("quant_algo") is None
                                 and not qc.get("config_groups") and bool(qc.get("kv_cache_scheme")))
    return file_says and config_says and (text is not None or qc is not None)


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
    when the config is one the bridge cannot express (the loader then reads it); one with values no model has
    (``ConfigValueError``: a wrong type, zero heads, a NaN) is a :class:`SpecError` at ``field``."""
    found, problem = _bridged(config, field)
    if found is None:
        return problem
    return _arch_mismatch(arch, found, field, inline=f"`python -m modelopt_typed_recipes arch from-hf "
                                                    f"{str(folder)[:200]}` prints one")


def _bridged(config: dict, field: str) -> tuple[ModelArch | None, RecipeError | None]:
    """The bridge's architecture of a ``config.json``; (None, a :class:`SpecError` at ``field``) for values no model
    has (``ConfigValueError``: transformers fails on them with its own exception, a str vocab_size or zero heads, or
    loads them, a NaN norm epsilon whose calibration then fails), (None, None) for a type or feature only
    transformers (or the checkpoint's own code) reads."""
    from ..bridges.hf_config import from_hf_config
    from ..bridges.hf_config.access import ConfigValueError

    try:
        return from_hf_config(config), None
    except ConfigValueError as err:
        return None, _config_value_problem(err, field)
    except RecipeError:
        return None, None


def _read_config(folder: Path, field: str) -> tuple[dict | None, RecipeError | None]:
    """``folder``'s ``config.json`` read with the bridge's bounds, or the problem at ``field`` that transformers'
    loader would meet there later (unreadable, not JSON, a byte-order mark)."""
    from ..bridges.hf_config import read_config_json

    try:
        config = read_config_json(folder)
    except SpecError as err:
        return None, _config_read_problem(err, field)
    bom = _bom_problem(folder / "config.json", field)
    return (None, bom) if bom is not None else (config, None)


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


def hf_config_problems(folder: Path, path: str = "source.path", *,
                       arch: ModelArch | None = None) -> list[RecipeError]:
    """A checkpoint's ``config.json`` that transformers would fail on or misread: unreadable (read with the
    bridge's bounds), a model type only the checkpoint's own code defines (this package never runs that code),
    or a quantized ModelOpt export; with ``arch`` (the recipe's ``model``), another model than that
    (:func:`source_arch_problem`)."""
    from ..bridges.hf_config import HF_MODEL_TYPES

    config, problem = _read_config(folder, path)
    if config is None:
        return [problem] if problem is not None else []
    exported = quantized_export_problem(folder, config, path)
    if exported is not None:
        return [exported]
    model_type = config.get("model_type")
    if "auto_map" in config and isinstance(model_type, str) and model_type not in HF_MODEL_TYPES:
        return [CompatibilityError(
            f"model type {model_type[:80]!r} of {str(folder)[:200]!r} is defined by the checkpoint's own code "
            "(auto_map); this package does not run a checkpoint's code", path=path,
            hint="supported model types: " + ", ".join(sorted(HF_MODEL_TYPES)))]
    mismatch = None if arch is None else source_arch_problem(arch, folder, config, path)
    return [mismatch] if mismatch is not None else []


def _config_read_problem(err: SpecError, field: str) -> SpecError:
    """``read_config_json``'s error (its path is the file's) at the recipe's ``field``, naming the file."""
    return SpecError(err.message if "config.json" in err.message else f"its config.json: {err.message}", path=field,
                     hint=err.hint)


def _config_value_problem(err: RecipeError, field: str) -> SpecError:
    """The bridge's ``ConfigValueError`` (its path is the config key) at the recipe's ``field``, naming the key."""
    return SpecError(f"its config.json: {err.path + ': ' if err.path else ''}{err.message}", path=field,
                     hint=err.hint or "fix config.json, or point at the checkpoint's original folder")


def _bom_problem(config: Path, path: str) -> SpecError | None:
    """A ``config.json`` that begins with a UTF-8 byte-order mark: the bridge reads it, transformers' loader
    (``json.loads`` of the text) fails on it with an ``OSError`` ("not a valid JSON file") when the run loads the
    model, so it is refused before."""
    try:
        with config.open("rb") as f:
            head = f.read(3)
    except OSError:  # read_config_json read it a moment ago; a race is the loader's to report
        return None
    if head != b"\xef\xbb\xbf":
        return None
    return SpecError("its config.json begins with a UTF-8 byte-order mark, which transformers' loader refuses "
                     "('not a valid JSON file')", path=path, hint="save config.json as UTF-8 without a BOM")


def read_recorded_arch(folder: Path, field: str) -> ModelArch | None:
    """The architecture this package recorded beside a Megatron checkpoint's shards in ``folder``
    (``model_arch.yaml``: a prune stage's checkpoint records the pruned one); None when there is no record
    (another tool's checkpoint). A record that cannot be read is a :class:`SpecError` at ``field``."""
    from ..spec.serde import from_yaml

    record = folder / "model_arch.yaml"
    try:
        text = _record_text(folder, "model_arch.yaml", "architecture record")
        return None if text is None else from_yaml(text, ModelArch, source=str(record))
    except RecipeError as err:
        at = f"{err.path}: " if err.path and err.path != str(record) else ""
        raise SpecError(f"its model_arch.yaml cannot be read: {at}{err.message}", path=field,
                        hint="model_arch.yaml is written by this package's save; restore it from the run that "
                             "saved the checkpoint, or delete it (set hf_reference for the architecture)") from None


def recorded_arch(src: MegatronCheckpoint) -> ModelArch | None:
    """:func:`read_recorded_arch` of a source or teacher checkpoint, None also when its record cannot be read: a
    source's record only checks ``model`` (the run builds ``model``), a teacher's is refused by its own check."""
    try:
        return read_recorded_arch(user_path(src.path, path="source.path"), "source.path")
    except (OSError, RecipeError):
        return None


def model_family(arch: ModelArch) -> str:
    """The transformers model type that builds ``arch`` (pruning never changes it), or its kind when none does:
    what a teacher and its student, or a checkpoint and its ``hf_reference``, must share."""
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
    heads, ref_heads = getattr(arch.attention, "num_heads", None), getattr(found.attention, "num_heads", None)
    return all(a <= b for a, b in sizes) and (heads is None or ref_heads is None or heads <= ref_heads)


def _reference_arch_problems(src: MegatronCheckpoint, arch: ModelArch, *, exports: bool) -> list[RecipeError]:
    """``model`` against what a Megatron checkpoint holds: the architecture it records (``recorded_arch``), else
    its local ``hf_reference`` folder's config (a Hub id, or a config the bridge cannot express, is left to the export,
    which says why; one transformers cannot read is refused: the run loads its tokenizer with it). With a record, or without one when ``model`` could be a prune of the reference
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
    locked = unsearchable(ref, src.hf_reference, "source.hf_reference")
    if locked is not None:  # the run reads its tokenizer there
        return [locked]
    if not (ref / "config.json").is_file():
        return []
    # the run reads the tokenizer there, after loading the checkpoint, and transformers' AutoTokenizer reads
    # config.json with it (a mistyped value: its StrictDataclassFieldValidationError)
    config, problem = _read_config(ref, "source.hf_reference")
    found, problem = _bridged(config, "source.hf_reference") if config is not None else (None, problem)
    if found is None:  # (None, None): a type or feature the bridge does not read, left to the export
        return [problem] if problem is not None else []
    if recorded is None and not _could_be_pruned_from(arch, found):
        mismatch = _arch_mismatch(arch, found, "source.hf_reference", inline=f"`python -m modelopt_typed_recipes "
                                                                             f"arch from-hf {str(ref)[:200]}` prints one")
        return [mismatch] if mismatch is not None else []
    kept: dict[str, tuple[object, object]] = {"vocabulary": (arch.vocab.size, found.vocab.size),
                                               "model type": (model_family(arch), model_family(found))}
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
        locked = None if p is None else unsearchable(p, src.path, "source.path")
        if p is None:
            pass
        elif locked is not None:
            out.append(locked)
        elif not p.exists():
            out.append(SpecError(f"checkpoint directory {src.path!r} does not exist", path="source.path",
                                 hint="check the path, or use source: {type: builtin} for the reference model"))
        elif not p.is_dir():
            out.append(SpecError(f"{src.path!r} is a file, not a checkpoint directory", path="source.path"))
        elif isinstance(src, HFCheckpoint) and not (p / "config.json").is_file():
            out.append(SpecError(f"{src.path!r} has no config.json: not a Hugging Face checkpoint",
                                 path="source.path"))
        elif isinstance(src, HFCheckpoint):
            out += hf_config_problems(p, arch=arch)
        elif isinstance(src, MegatronCheckpoint) and not (p / "metadata.json").is_file():
            # megatron/build.load_checkpoint says so only after the model is built
            out.append(SpecError(f"{src.path!r} is not a Megatron distributed checkpoint (no metadata.json)",
                                 path="source.path", hint="point at the folder a Megatron-Core save wrote"))
        elif isinstance(src, MegatronCheckpoint) and backend == "megatron":
            exports = any(getattr(st, "technique", None) == "export" for st in recipe.stages)
            out += _reference_arch_problems(src, arch, exports=exports)
            info, unread = checked_info(src)
            out += [unread] if unread is not None else []
            saved = info.get("layer_spec")
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
