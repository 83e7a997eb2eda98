"""Architecture commands: ``list``, ``show``, ``flags``, ``from-hf``, ``validate``, ``profiles``.

Each reads only plain data (catalog, spec, bridges), so it answers in well under a second: torch,
Megatron-Core and ModelOpt are never imported here, and rich only when a table is printed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from ..spec.arch import KINDS, ModelArch
from .output import print_json, table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("list", help="list the registered architectures")
    p.add_argument("--kind", choices=KINDS, help="only this kind")
    p.add_argument("--family", help="only this family (llama, qwen, deepseek, nemotron-h, tiny, ...; an unknown "
                   "one is an error)")
    p.add_argument("--json", action="store_true", help="print a JSON array for programs")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("show", help="show one architecture")
    p.add_argument("name", help="short name, Hugging Face id (any case) or alias")
    p.add_argument("--json", action="store_true", help="print one JSON object for programs")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("flags", help="print an architecture's Megatron-LM flags, one per line, shell-quoted")
    p.add_argument("name", help="short name, Hugging Face id (any case) or alias")
    p.add_argument("--json", action="store_true", help="print the argv list as JSON")
    p.set_defaults(handler=cmd_flags)

    p = sub.add_parser("from-hf", help="build an architecture from a Hugging Face config.json and print it as YAML")
    p.add_argument("config", help="path to config.json (or a checkpoint folder holding one)")
    p.add_argument("--name", help="registry name for the result (default: from the repo id)")
    p.add_argument("--hf-id", help="Hugging Face id to record (default: the config's _name_or_path)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="record trust_remote_code: true (loading the checkpoint may run code it ships; off by default)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(handler=cmd_from_hf)

    p = sub.add_parser("validate", help="check a recipe or a ModelArch YAML/JSON file (which one: from its keys)")
    p.add_argument("file", help="a .yaml/.yml/.json file holding one recipe or one ModelArch")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("profiles", help="list launch profiles (parallel layouts for one model on one cluster)")
    p.add_argument("--json", action="store_true", help="print a JSON array for programs")
    p.set_defaults(handler=cmd_profiles)


# --------------------------------------------------------------------------- helpers
def _billions(n: int) -> str:
    if n >= 10**12:
        return f"{n / 1e12:.2f}T"
    if n >= 10**9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.1f}M"


def _details(arch: ModelArch) -> dict[str, Any]:
    """``summary()`` plus the derived facts people look at."""
    out = dict(arch.summary())
    out.update(
        {
            "params_active_no_embedding": arch.params_active_no_embedding,
            "weight_bytes_bf16": arch.weight_bytes("bf16"),
            "kv_cache_bytes_per_token": arch.kv_cache_bytes_per_token(),
            "layer_counts": {
                "attention": arch.layer_counts.attention,
                "mamba": arch.layer_counts.mamba,
                "dense_mlp": arch.layer_counts.dense_mlp,
                "moe": arch.layer_counts.moe,
            },
            "seq_length": arch.seq_length,
            "max_position_embeddings": arch.max_position_embeddings,
            "trust_remote_code": arch.trust_remote_code,
            "notes": list(arch.notes),
        }
    )
    return out


def _check_family(family: str) -> None:
    """An unknown family is a mistake (exit 2 with the known ones), not an empty list."""
    from ..catalog import list_archs
    from ..errors import UnknownNameError, did_you_mean

    families = sorted({a.family for a in list_archs()})
    if family.lower() not in {f.lower() for f in families}:
        raise UnknownNameError(f"no family {family!r}", path="family",
                               hint=did_you_mean(family, families) or f"families: {', '.join(families)}")


# --------------------------------------------------------------------------- commands
def cmd_list(args: argparse.Namespace) -> int:
    from ..catalog import list_archs

    if args.family is not None:
        _check_family(args.family)
    archs = list_archs(kind=args.kind, family=args.family)
    if args.json:
        print_json([a.summary() for a in archs])
        return 0
    if not archs:
        sys.stdout.write("no architectures match\n")
        return 0
    table(
        f"{len(archs)} architectures",
        ["name", "kind", "family", "params", "active", "layers", "hidden", "hf_id"],
        (
            (a.name, a.kind, a.family, _billions(a.params_total), _billions(a.params_active), str(a.num_layers),
             str(a.hidden_size), a.hf_id or "")
            for a in archs
        ),
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..bridges.megatron_flags import unexpressible
    from ..catalog import get_arch

    arch = get_arch(args.name)
    info = _details(arch)
    limits = unexpressible(arch)
    active_no_emb = arch.params_active_no_embedding
    if args.json:
        info["megatron_unexpressible"] = limits
        print_json(info)
        return 0
    rows = [
        ("name", arch.name), ("hf_id", arch.hf_id or ""), ("tokenizer", arch.tokenizer or ""),
        ("kind", arch.kind), ("family", arch.family), ("aliases", ", ".join(arch.aliases)),
        ("params total", f"{_billions(arch.params_total)} ({arch.params_total:,})"),
        ("params active", f"{_billions(arch.params_active)} ({arch.params_active:,})"),
        ("active w/o embedding", f"{_billions(active_no_emb)} ({active_no_emb:,})"),
        ("weights bf16", f"{arch.weight_bytes('bf16') / 2**30:.1f} GiB"),
        ("KV cache / token", f"{arch.kv_cache_bytes_per_token():,} bytes"),
        ("layers", f"{arch.num_layers} ({info['layer_counts']})"),
        ("hidden / ffn", f"{arch.hidden_size} / {arch.ffn_hidden_size}"),
        ("attention", repr(arch.attention)),
        ("moe", repr(arch.moe) if arch.moe else "-"),
        ("mamba", repr(arch.mamba) if arch.mamba else "-"),
        ("position", repr(arch.position) if arch.position else "none"),
        ("norm / activation", f"{arch.norm.type} eps={arch.norm.epsilon:g} / {arch.activation.type}"),
        ("vocab", repr(arch.vocab)),
        ("seq / max positions", f"{arch.seq_length} / {arch.max_position_embeddings}"),
        *(("note", n) for n in arch.notes),
        *(("megatron cannot express", n) for n in limits),
    ]
    table(arch.name, ["field", "value"], rows)
    return 0


def cmd_flags(args: argparse.Namespace) -> int:
    from ..bridges.megatron_flags import megatron_flag_pairs, to_megatron_args, unexpressible
    from ..catalog import get_arch

    arch = get_arch(args.name)
    if args.json:
        print_json(to_megatron_args(arch))
        return 0
    lines = [shlex.quote(f) + ("" if v is None else " " + shlex.quote(v)) for f, v in megatron_flag_pairs(arch)]
    sys.stdout.write("\n".join(lines) + "\n")
    for note in unexpressible(arch):
        sys.stderr.write(f"# note: {note}\n")
    return 0


def cmd_from_hf(args: argparse.Namespace) -> int:
    from ..bridges.hf_config import from_hf_config, read_config_json, remote_code
    from ..spec.serde import to_json, to_yaml

    config = read_config_json(args.config)
    trust = bool(args.trust_remote_code)
    arch = from_hf_config(config, name=args.name, hf_id=args.hf_id, trust_remote_code=trust)
    sys.stdout.write(to_json(arch) + "\n" if args.json else to_yaml(arch))
    why = remote_code(config)
    if why is not None:
        action = "trust_remote_code: true as asked" if trust else "trust_remote_code left false (--trust-remote-code sets it)"
        sys.stderr.write(f"# note: {why}; {action}\n")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ..spec.recipe import Recipe
    from ..spec.serde import load_file, read_document

    if _is_recipe(read_document(args.file)):
        recipe = Recipe.load(args.file)
        if args.json:
            print_json({"ok": True, "kind": "recipe", "name": recipe.label, "model": recipe.model_name,
                        "stages": [st.label for st in recipe.stages]})
            return 0
        stages = " + ".join(st.label for st in recipe.stages)
        sys.stdout.write(f"ok: recipe {recipe.label} (model {recipe.model_name}, {stages}); "
                         f"`check {args.file}` checks it against the machine\n")
        return 0
    arch = load_file(args.file, ModelArch)
    if args.json:
        print_json({"ok": True, "kind": "architecture", **arch.summary()})
        return 0
    sys.stdout.write(
        f"ok: {arch.name} ({arch.kind}, family {arch.family}, {arch.num_layers} layers, "
        f"{_billions(arch.params_total)} params, {_billions(arch.params_active)} active)\n"
    )
    return 0


def _is_recipe(data: Any) -> bool:
    """A recipe has stages (or a source); an architecture has neither."""
    return isinstance(data, dict) and bool({"stages", "source"} & set(data))


def cmd_profiles(args: argparse.Namespace) -> int:
    from ..catalog.profiles import list_profiles

    profiles = list_profiles()
    if args.json:
        print_json([p.summary() for p in profiles])
        return 0
    table(
        f"{len(profiles)} launch profiles",
        ["name", "arch", "TP", "ETP", "EP", "PP", "first/last PP layers", "description"],
        (
            (str(s["name"]), str(s["arch"]), str(s["tensor_parallel"]), str(s["expert_tensor_parallel"]),
             str(s["expert_parallel"]), str(s["pipeline_parallel"]),
             f"{s['first_pipeline_num_layers'] or '-'}/{s['last_pipeline_num_layers'] or '-'}", str(s["description"]))
            for s in (p.summary() for p in profiles)
        ),
    )
    return 0
