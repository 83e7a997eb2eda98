"""Resolve the parallel layout and run environment, with the provenance of every value.

Precedence, highest first:

1. explicit arguments (API keywords or CLI flags);
2. the recipe (a :class:`ParallelLayout` or a mapping of its fields);
3. the seed's variables: parallel flags inside ``MLM_EXTRA_ARGS`` (the seed appends it last, so argparse
   lets it win), then ``TP ETP EP PP CP DP``, and ``MLM_MODEL_CFG HF_MODEL_CKPT MLM_MODEL_CKPT
   MLM_MODEL_SAVE EXPORT_DIR MLM_WORK_DIR``;
4. torchrun's ``WORLD_SIZE RANK LOCAL_RANK LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT``;
5. Slurm's ``SLURM_NNODES SLURM_NTASKS SLURM_GPUS_ON_NODE SLURM_JOB_NODELIST SLURM_PROCID``;
6. defaults (the seed's: TP=1, ETP=TP, EP=PP=CP=DP=1, work dir ``/tmp/megatron_workspace``; sequence
   parallelism off, as in Megatron).

Unlike ``conf/arguments.sh`` this never installs anything, never prints a warning per default (the
``env`` command shows one table with each value's source), never word-splits or globs
``MLM_EXTRA_ARGS`` (``shlex``; hybrid patterns such as ``M-M*-`` survive), and turns a non-integer or
negative size into a :class:`LayoutError` naming the variable. ``environ`` is a parameter so tests are pure.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import LayoutError, SpecError, brief
from ..spec.layout import LAYOUT_FIELDS, MAX_WORLD_SIZE, MEGATRON_FLAGS, ParallelLayout

PATH_FIELDS = ("model_cfg", "hf_model_ckpt", "mlm_model_ckpt", "mlm_model_save", "export_dir", "work_dir")
LAUNCH_FIELDS = (
    "world_size", "rank", "local_rank", "local_world_size", "nnodes", "gpus_per_node", "master_addr", "master_port",
    "job_nodelist",
)  # fmt: skip

SEED_LAYOUT_VARS = {
    "TP": "tensor_parallel",
    "PP": "pipeline_parallel",
    "CP": "context_parallel",
    "EP": "expert_parallel",
    "ETP": "expert_tensor_parallel",
    "DP": "data_parallel",
}
SEED_PATH_VARS = {
    "MLM_MODEL_CFG": "model_cfg",
    "HF_MODEL_CKPT": "hf_model_ckpt",
    "MLM_MODEL_CKPT": "mlm_model_ckpt",
    "MLM_MODEL_SAVE": "mlm_model_save",
    "EXPORT_DIR": "export_dir",
    "MLM_WORK_DIR": "work_dir",
}
MEGATRON_LAYOUT_FLAGS = {flag: field for field, flag in MEGATRON_FLAGS.items() if field != "sequence_parallel"}
"""Megatron-LM's flags that take a value, to the layout field they set (``--sequence-parallel`` is a switch)."""
DEFAULT_WORK_DIR = "/tmp/megatron_workspace"
DEFAULT_MASTER_PORT = 29500

_DIGITS = re.compile(r"[0-9]+")


@attrs.frozen
class Resolved:
    """A value and where it came from: ``argument``, ``recipe``, ``env TP``, ``torchrun WORLD_SIZE``, ``default``..."""

    value: Any
    source: str

    @property
    def is_default(self) -> bool:
        return self.source.startswith("default")


@attrs.frozen(kw_only=True)
class RunEnvironment:
    """Every resolved setting, in display order, each with its provenance."""

    values: dict[str, Resolved]

    def __getitem__(self, name: str) -> Resolved:
        return self.values[name]

    def value(self, name: str) -> Any:
        return self.values[name].value

    def is_set(self, name: str) -> bool:
        """Whether something other than a default decided ``name``."""
        return not self.values[name].is_default

    @property
    def layout_is_set(self) -> bool:
        return any(self.is_set(f) for f in LAYOUT_FIELDS if f != "expert_tensor_parallel")

    @property
    def model_split(self) -> ParallelLayout:
        """The resolved TP, PP and CP as a :class:`ParallelLayout` (see :func:`model_split`)."""
        return model_split(*(self.value(f) for f in MODEL_SPLIT_FIELDS))

    @property
    def extra_args(self) -> tuple[str, ...]:
        return tuple(self.values["extra_args"].value)

    def layout(self, **fill: int) -> ParallelLayout:
        """The :class:`ParallelLayout`; errors name the field and the variable that set it."""
        kwargs = {f: self.values[f].value for f in LAYOUT_FIELDS}
        kwargs.update(fill)
        try:
            return ParallelLayout(**kwargs)
        except LayoutError as err:
            field = err.path.split(".")[0]
            src = self.values[field].source if field in self.values else ""
            if src and not self.values[field].is_default:
                raise LayoutError(f"{err.message} ({field}={kwargs[field]} from {src})", path=field,
                                  hint=err.hint) from None
            raise

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {k: {"value": list(v.value) if isinstance(v.value, tuple) else v.value, "source": v.source}
                for k, v in self.values.items()}


MODEL_SPLIT_FIELDS = ("tensor_parallel", "pipeline_parallel", "context_parallel")


def model_split(tensor_parallel: int, pipeline_parallel: int, context_parallel: int) -> ParallelLayout:
    """One model replica's dense split (TP, PP, CP; no experts, DP=1): :class:`ParallelLayout` does the
    arithmetic (``model_parallel_size``; with ``data_parallel`` evolved in, ``world_size``). It always
    builds: the expert side TP*PP divides TP*PP*CP."""
    return ParallelLayout(tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel,
                          context_parallel=context_parallel)


# --------------------------------------------------------------------------- parsing
MAX_SETTING = MAX_WORLD_SIZE
"""No layout size, rank or count read here is above the largest world a layout may have."""
_MAX_PORT = 65535


def parse_int(name: str, value: Any, *, minimum: int = 1, maximum: int = MAX_SETTING) -> int | None:
    """An integer from an argument or an environment string; ``None``/empty means unset."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise LayoutError(f"{name}={brief(value)} is not an integer", path=name)
    if isinstance(value, int):
        out = value
    else:
        text = str(value).strip()
        if not text:
            return None
        if text.startswith("-") and _DIGITS.fullmatch(text[1:]):
            raise LayoutError(f"{name}={brief(text)} is negative", path=name, hint=f"use an integer >= {minimum}")
        if not _DIGITS.fullmatch(text):
            raise LayoutError(f"{name}={brief(text)} is not an integer", path=name,
                              hint=f"use an integer >= {minimum}")
        if len(text.lstrip("0")) > len(str(maximum)):  # before int(): 5,000 digits would be a ValueError
            raise LayoutError(f"{name}={brief(text)} is larger than {maximum:,}", path=name,
                              hint=f"use an integer in {minimum}..{maximum}")
        out = int(text)
    if out < minimum:
        what = "negative" if out < 0 else f"less than {minimum}"
        raise LayoutError(f"{name}={out} is {what}", path=name, hint=f"use an integer >= {minimum}")
    if out > maximum:
        raise LayoutError(f"{name}={brief(out)} is larger than {maximum:,}", path=name,
                          hint=f"use an integer in {minimum}..{maximum}")
    return out


def split_extra_args(text: str | None, *, name: str = "MLM_EXTRA_ARGS") -> list[str]:
    """Shell-like splitting with quotes honoured and nothing globbed or expanded."""
    if not text or not text.strip():
        return []
    try:
        return shlex.split(text, posix=True)
    except ValueError as exc:  # unbalanced quotes
        raise SpecError(f"cannot split {name}: {exc}", path=name,
                        hint="balance the quotes, e.g. --prune-export-config '{\"hidden_size\": 3072}'") from None


def extract_layout_flags(args: list[str], *, name: str = "MLM_EXTRA_ARGS") -> tuple[dict[str, Any], list[str]]:
    """Pull Megatron's parallel-layout flags out of ``args``: (field -> value, the other args)."""
    found: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        if flag == MEGATRON_FLAGS["sequence_parallel"] and not eq:
            found["sequence_parallel"] = True
        elif flag in MEGATRON_LAYOUT_FLAGS:
            if eq:
                text = inline
            elif i + 1 < len(args):
                i += 1
                text = args[i]
            else:
                raise LayoutError(f"{flag} in {name} has no value", path=name)
            found[MEGATRON_LAYOUT_FLAGS[flag]] = parse_int(f"{name} {flag}", text)
        else:
            rest.append(arg)
        i += 1
    return found, rest


def first_host(nodelist: str) -> str | None:
    """The first host of a Slurm node list (``node[01-04,07],gpu5`` -> ``node01``), as scontrol expands it."""
    text = nodelist.strip()
    if not text:
        return None
    depth, end = 0, len(text)
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    item = text[:end]
    m = re.fullmatch(r"([^\[\]]*)\[([^\]]+)\](.*)", item)
    if not m:
        return item or None
    prefix, ranges, suffix = m.groups()
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}{suffix}"


# --------------------------------------------------------------------------- resolution
def resolve(args: Mapping[str, Any] | None = None, recipe: ParallelLayout | Mapping[str, Any] | None = None,
            environ: Mapping[str, str] | None = None) -> RunEnvironment:
    """Resolve the layout, paths and launch environment (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    args = dict(args or {})
    unknown = sorted(set(args) - set(LAYOUT_FIELDS) - set(PATH_FIELDS) - {"extra_args"} - set(LAUNCH_FIELDS))
    if unknown:
        raise LayoutError(f"unknown setting(s) {', '.join(unknown)}", path=unknown[0])
    values: dict[str, Resolved] = {}

    # ---- layout
    recipe_values: dict[str, Any] = {}
    if isinstance(recipe, ParallelLayout):
        recipe_values = {f: getattr(recipe, f) for f in LAYOUT_FIELDS}
    elif recipe is not None:
        extra = sorted(set(recipe) - set(LAYOUT_FIELDS))
        if extra:
            raise LayoutError(f"unknown layout field(s) {', '.join(extra)} in the recipe", path=f"recipe.{extra[0]}")
        recipe_values = {k: v for k, v in recipe.items() if v is not None}

    extra_list = split_extra_args(env.get("MLM_EXTRA_ARGS"))
    extra_flags, extra_rest = extract_layout_flags(extra_list)
    seed = {field: parse_int(var, env.get(var)) for var, field in SEED_LAYOUT_VARS.items()}

    for field in LAYOUT_FIELDS:
        is_bool = field == "sequence_parallel"
        minimum = 1
        if field in args and args[field] is not None:
            v = args[field]
            values[field] = Resolved(_check_bool(field, v) if is_bool else parse_int(field, v, minimum=minimum),
                                     "argument")
        elif field in recipe_values:
            v = recipe_values[field]
            values[field] = Resolved(_check_bool(field, v) if is_bool else parse_int(f"recipe.{field}", v),
                                     "recipe")
        elif field in extra_flags:
            values[field] = Resolved(extra_flags[field], "env MLM_EXTRA_ARGS")
        elif seed.get(field) is not None:
            var = next(k for k, f in SEED_LAYOUT_VARS.items() if f == field)
            values[field] = Resolved(seed[field], f"env {var}")

    # ---- launch (torchrun, then Slurm)
    launch: dict[str, Resolved] = {}

    def take(field: str, candidates: list[tuple[str, str, int | None]], maximum: int = MAX_SETTING) -> None:
        """First set variable of ``candidates`` (name, source kind, integer minimum or None for strings)."""
        if field in args and args[field] is not None:
            v = args[field]
            text_field = field in ("master_addr", "job_nodelist")
            launch[field] = Resolved(str(v)[:_MAX_TEXT] if text_field else parse_int(field, v, minimum=0,
                                                                                     maximum=maximum), "argument")
            return
        for var, kind, minimum in candidates:
            raw = env.get(var)
            if raw is None or not str(raw).strip():
                continue
            value = (parse_int(var, raw, minimum=minimum, maximum=maximum) if minimum is not None
                     else _text(var, raw))
            launch[field] = Resolved(value, f"{kind} {var}")
            return

    take("world_size", [("WORLD_SIZE", "torchrun", 1), ("SLURM_NTASKS", "slurm", 1)])
    take("rank", [("RANK", "torchrun", 0), ("SLURM_PROCID", "slurm", 0)])
    take("local_rank", [("LOCAL_RANK", "torchrun", 0), ("SLURM_LOCALID", "slurm", 0)])
    take("local_world_size", [("LOCAL_WORLD_SIZE", "torchrun", 1), ("SLURM_GPUS_ON_NODE", "slurm", 1)])
    take("nnodes", [("SLURM_NNODES", "slurm", 1)])
    take("gpus_per_node", [("SLURM_GPUS_ON_NODE", "slurm", 1), ("LOCAL_WORLD_SIZE", "torchrun", 1)])
    take("master_addr", [("MASTER_ADDR", "torchrun", None)])
    take("master_port", [("MASTER_PORT", "torchrun", 1)], maximum=_MAX_PORT)
    take("job_nodelist", [("SLURM_JOB_NODELIST", "slurm", None)])
    if "master_addr" not in launch and "job_nodelist" in launch:
        host = first_host(launch["job_nodelist"].value)
        if host:
            launch["master_addr"] = Resolved(host, "slurm SLURM_JOB_NODELIST (first host)")
    if "nnodes" not in launch and "world_size" in launch and "local_world_size" in launch:
        ws, lws = launch["world_size"].value, launch["local_world_size"].value
        if ws % lws == 0:
            launch["nnodes"] = Resolved(ws // lws, "derived WORLD_SIZE / LOCAL_WORLD_SIZE")
    _check_ranks(launch)

    # ---- defaults and derived layout values
    for field in ("tensor_parallel", "pipeline_parallel", "context_parallel", "expert_parallel"):
        values.setdefault(field, Resolved(1, "default"))
    if "expert_tensor_parallel" not in values:
        values["expert_tensor_parallel"] = Resolved(values["tensor_parallel"].value, "default (= tensor_parallel)")
    split = model_split(*(values[f].value for f in MODEL_SPLIT_FIELDS))
    mp = split.model_parallel_size
    if "data_parallel" not in values:
        if "world_size" in launch:
            ws = launch["world_size"].value
            if ws % mp:
                raise LayoutError(
                    f"the world size {ws} ({launch['world_size'].source}) is not a multiple of TP*PP*CP = {mp}",
                    path="data_parallel", hint="set TP, PP and CP so that their product divides the world size",
                )
            var = launch["world_size"].source.split()[-1]
            values["data_parallel"] = Resolved(ws // mp, f"derived {var} / (TP*PP*CP)")
        else:
            values["data_parallel"] = Resolved(1, "default")
    elif "world_size" in launch:
        world = attrs.evolve(split, data_parallel=values["data_parallel"].value).world_size
        ws = launch["world_size"].value
        if world != ws:
            raise LayoutError(
                f"TP*PP*CP*DP = {world} but the launcher started {ws} processes ({launch['world_size'].source})",
                path="data_parallel", hint=f"unset DP (it is derived) or start {world} processes",
            )
    # Megatron's default; Megatron-Core's local (non-TE) layer spec cannot run it (H100: "sequence parallel not
    # supported by torch LayerNorm"), so it is only on when asked for
    values.setdefault("sequence_parallel", Resolved(False, "default"))
    for field in ("virtual_pipeline", "first_stage_layers", "last_stage_layers"):
        values.setdefault(field, Resolved(None, "default"))

    # ---- paths and extra args
    for var, field in SEED_PATH_VARS.items():
        if field in args and args[field] is not None:
            values[field] = Resolved(str(args[field]), "argument")
        elif env.get(var, "").strip():
            values[field] = Resolved(env[var].strip(), f"env {var}")
        elif field == "work_dir":
            values[field] = Resolved(DEFAULT_WORK_DIR, "default")
        else:
            values[field] = Resolved(None, "default")
    if args.get("extra_args") is not None:
        values["extra_args"] = Resolved(tuple(str(a) for a in args["extra_args"]), "argument")
    elif extra_list:
        values["extra_args"] = Resolved(tuple(extra_rest), "env MLM_EXTRA_ARGS")
    else:
        values["extra_args"] = Resolved((), "default")

    for field in LAUNCH_FIELDS:
        if field in launch:
            values[field] = launch[field]
        elif field == "master_port":
            values[field] = Resolved(DEFAULT_MASTER_PORT, "default")
        elif field in ("rank", "local_rank"):
            values[field] = Resolved(0, "default")
        else:
            values[field] = Resolved(None, "default")
    return RunEnvironment(values=values)


_MAX_TEXT = 4096


def _text(name: str, raw: str) -> str:
    """A host name or node list from the environment: one line, bounded."""
    text = str(raw).strip()
    if len(text) > _MAX_TEXT or "\n" in text or "\0" in text:
        raise LayoutError(f"{name}={brief(text)} is not a host name or node list", path=name)
    return text


def _check_bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise LayoutError(f"{field}={brief(value)} is not true or false", path=field)


def _check_ranks(launch: dict[str, Resolved]) -> None:
    pairs = (("rank", "world_size"), ("local_rank", "local_world_size"))
    for low, high in pairs:
        if low in launch and high in launch and launch[low].value >= launch[high].value:
            raise LayoutError(
                f"{low}={launch[low].value} ({launch[low].source}) is not below "
                f"{high}={launch[high].value} ({launch[high].source})",
                path=launch[low].source.split()[-1],
            )


TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def launch_world(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(world size, rank, local rank) of this process as torchrun set them, or a world of one.

    Only torchrun's variables count here: a bare ``python`` inside a Slurm allocation is one process
    whatever ``SLURM_NTASKS`` says (the launch plan's ``srun`` starts torchrun on each node).
    """
    env = os.environ if environ is None else environ
    renv = resolve(environ={k: env[k] for k in TORCHRUN_VARS if k in env})
    size = renv.value("world_size") or 1
    rank = renv.value("rank") or 0
    local = renv.value("local_rank") if renv.is_set("local_rank") else rank
    return int(size), int(rank), int(local)
