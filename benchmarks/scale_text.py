"""Calibration text for ``scale_gpu.py`` on a machine without network: the built-in corpus, then the docstrings
of the Python packages installed there, as one ``.jsonl`` (one document per line under ``text``).

The built-in corpus holds 199 windows of 2,048 reference-tokenizer tokens; the issue's 512 windows need about
2.6 times that. What a user without a dataset download has at hand is the English of the installed libraries'
documentation: every module, class and function docstring of at least 200 characters (as the built-in corpus
was made from the standard library), read with ``ast`` (nothing imported), files in sorted order, duplicates
dropped, until the text holds ``--windows`` windows of ``--seq`` tokens. The same packages at the same versions
give the same file; the run's calibration hash (in its manifest) says which windows were used.

    python3 benchmarks/scale_text.py OUT.jsonl --windows 512 --seq 2048 [--packages transformers torch]
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIN_CHARS = 200


def docstrings(package: str) -> Iterator[str]:
    """Docstrings (>= MIN_CHARS) of every ``.py`` file of ``package``, files in sorted order."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return
    for f in sorted(Path(spec.origin).parent.rglob("*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_CHARS:
                    yield doc


def build(out: Path, *, windows: int, seq: int, packages: list[str]) -> dict:
    from modelopt_typed_recipes.runtime import data

    t = time.perf_counter()
    tok = data.load_tokenizer(None)  # the reference tokenizer the runs cut their windows with
    need = windows * seq
    docs = [d for d in data.BUILTIN_FILES["reference-train"].read_text(encoding="utf-8").split(data.DOC_SEPARATOR)
            if d.strip()]
    seen = set(docs)
    tokens = sum(len(ids) + 1 for ids in tok(docs, add_special_tokens=False)["input_ids"])
    used = {"reference-train": len(docs)}
    for pkg in packages:
        if tokens >= need:
            break
        batch: list[str] = []
        for doc in docstrings(pkg):
            if doc in seen:
                continue
            seen.add(doc)
            batch.append(doc)
            if len(batch) == 256:
                tokens += sum(len(ids) + 1 for ids in tok(batch, add_special_tokens=False)["input_ids"])
                docs += batch
                used[pkg] = used.get(pkg, 0) + len(batch)
                batch = []
                if tokens >= need:
                    break
        if batch:
            tokens += sum(len(ids) + 1 for ids in tok(batch, add_special_tokens=False)["input_ids"])
            docs += batch
            used[pkg] = used.get(pkg, 0) + len(batch)
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    info = {"file": str(out), "documents": len(docs), "characters": sum(len(d) for d in docs), "tokens": tokens,
            "windows": tokens // seq, "windows_asked": windows, "seq_length": seq, "documents_from": used,
            "versions": versions, "seconds": round(time.perf_counter() - t, 2)}
    if tokens < need:
        raise SystemExit(f"only {tokens} tokens ({tokens // seq} windows of {seq}); add --packages: {info}")
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--windows", type=int, default=512)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--packages", nargs="+", default=["transformers", "torch", "numpy"])
    a = p.parse_args()
    print(json.dumps(build(a.out, windows=a.windows, seq=a.seq, packages=a.packages)), flush=True)


if __name__ == "__main__":
    main()
