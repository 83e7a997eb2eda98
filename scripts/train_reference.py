#!/usr/bin/env python3
"""Build the reference model that ships with modelopt-typed-recipes: corpus, tokenizer, weights.

The reference model (registry name ``reference-llama``) is a small Llama-style decoder trained on real
English text that every Python installation ships offline: the interpreter's documentation topics
(``pydoc_data.topics``) and the standard library's docstrings. Three steps, each reproducible:

    python scripts/train_reference.py corpus      # text splits -> modelopt_typed_recipes/data/reference/*.txt
    python scripts/train_reference.py tokenizer   # byte-level BPE (HF tokenizers) trained on the train split
    python scripts/train_reference.py train --out DIR   # the model (GPU: about a minute on one H100)

The splits are shipped with the package because the docstrings differ between Python versions; the
corpus step is deterministic for a given interpreter (documents are assigned to splits by a hash of
their name). ``train`` reads only the shipped files, so it gives the same data on any machine.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "modelopt_typed_recipes" / "data" / "reference"
DOC_SEPARATOR = "\f"  # between documents in the shipped .txt splits (never inside them)
EOT = "<|endoftext|>"

# The registry entry (catalog/models/reference.py) says the same; the test suite checks they agree.
ARCH = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)


# --------------------------------------------------------------------------- corpus
def _documents() -> list[tuple[str, str]]:
    """(id, text) for every pydoc topic and every stdlib docstring of 200+ characters, in a fixed order."""
    from pydoc_data import topics

    docs = [(f"pydoc:{k}", v) for k, v in sorted(topics.topics.items())]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if skip & set(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    name = getattr(node, "name", "<module>")
                    docs.append((f"doc:{rel.as_posix()}:{name}:{getattr(node, 'lineno', 0)}", doc))
    return [(i, t.replace(DOC_SEPARATOR, "\n").strip()) for i, t in docs]


def split_of(doc_id: str) -> str:
    """90 % train, 3 % valid (model selection), 7 % held-out (evaluation), by a stable hash."""
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 100
    return "heldout" if bucket < 7 else "valid" if bucket < 10 else "train"


def build_corpus() -> None:
    splits: dict[str, list[str]] = {"train": [], "valid": [], "heldout": []}
    seen: set[str] = set()
    for doc_id, text in _documents():
        if text in seen:  # identical docstrings (overloads, aliases) stay in one split only
            continue
        seen.add(text)
        splits[split_of(doc_id)].append(text)
    DATA.mkdir(parents=True, exist_ok=True)
    for name, docs in splits.items():
        (DATA / f"{name}.txt").write_text(DOC_SEPARATOR.join(docs), encoding="utf-8")
        print(f"{name}: {len(docs)} documents, {sum(map(len, docs)):,} characters")
    (DATA / "corpus.json").write_text(
        json.dumps(
            {
                "source": "pydoc_data.topics + standard-library docstrings (>= 200 characters)",
                "python": sys.version.split()[0],
                "separator": "form feed (\\f) between documents",
                "splits": {k: {"documents": len(v), "characters": sum(map(len, v))} for k, v in splits.items()},
            },
            indent=2,
        )
        + "\n"
    )


def read_split(name: str, data: Path = DATA) -> list[str]:
    return [d for d in (data / f"{name}.txt").read_text(encoding="utf-8").split(DOC_SEPARATOR) if d.strip()]


# --------------------------------------------------------------------------- tokenizer
def build_tokenizer() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=ARCH["vocab_size"],
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(read_split("train"), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT, model_max_length=1024
    )
    fast.save_pretrained(DATA)
    # name the class older transformers releases know too (5.x calls it TokenizersBackend)
    cfg_path = DATA / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"tokenizer: {tok.get_vocab_size()} tokens -> {DATA}")


# --------------------------------------------------------------------------- model
def _token_stream(tokenizer, docs: list[str]):  # tokenizer: a transformers tokenizer
    import torch

    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def _windows(stream, seq: int):
    n = (len(stream) - 1) // seq
    return stream[: n * seq + 1], n


def evaluate(model, stream, seq: int, device: str, batch: int = 32) -> float:
    """Mean next-token loss over non-overlapping windows of ``seq`` tokens."""
    import torch

    data, n = _windows(stream, seq)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, n, batch):
            idx = torch.arange(start, min(n, start + batch))
            x = torch.stack([data[i * seq : i * seq + seq] for i in idx]).to(device)
            y = torch.stack([data[i * seq + 1 : i * seq + seq + 1] for i in idx]).to(device)
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu"):
                logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
            total += loss.item()
            count += y.numel()
    model.train()
    return total / count


def train(out: Path, *, steps: int, seq: int, batch: int, lr: float, eval_every: int, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(DATA)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    streams = {s: _token_stream(tokenizer, read_split(s)) for s in ("train", "valid", "heldout")}
    print({k: len(v) for k, v in streams.items()}, "tokens", flush=True)
    config = LlamaConfig(**ARCH, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    model = LlamaForCausalLM(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    untrained = {s: evaluate(model, streams[s], seq, device) for s in ("valid", "heldout")}
    print(f"params {params:,}; untrained loss {untrained}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), fused=device == "cuda",
    )
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))

    train_stream = streams["train"].to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    curve: list[dict] = []
    best = (float("inf"), -1)
    best_state = None
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, len(train_stream) - seq - 1, (batch,), generator=gen).to(device)
        offs = starts[:, None] + torch.arange(seq + 1, device=device)[None, :]
        chunk = train_stream[offs]
        x, y = chunk[:, :-1], chunk[:, 1:]
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % eval_every == 0 or step == steps - 1:
            valid = evaluate(model, streams["valid"], seq, device)
            curve.append({"step": step + 1, "train_loss": round(loss.item(), 4), "valid_loss": round(valid, 4),
                          "seconds": round(time.perf_counter() - t0, 1)})
            print(curve[-1], flush=True)
            if valid < best[0]:
                best = (valid, step + 1)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_seconds = time.perf_counter() - t0
    assert best_state is not None
    model.load_state_dict(best_state)
    heldout = evaluate(model, streams["heldout"], seq, device)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    # the bf16 weights as shipped, evaluated in fp32 (what the CPU backend does)
    shipped = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).to(device)
    heldout_shipped = evaluate(shipped, streams["heldout"], seq, device)
    report = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "params": params,
        "tokens": {k: len(v) for k, v in streams.items()},
        "steps": steps, "seq_length": seq, "batch_size": batch, "lr": lr, "seed": seed,
        "train_seconds": round(train_seconds, 1),
        "best_step": best[1],
        "untrained": {"valid_loss": untrained["valid"], "heldout_loss": untrained["heldout"],
                      "heldout_perplexity": math.exp(untrained["heldout"])},
        "trained": {"valid_loss": best[0], "heldout_loss": heldout, "heldout_perplexity": math.exp(heldout),
                    "heldout_perplexity_bf16_weights_fp32_compute": math.exp(heldout_shipped)},
        "curve": curve,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "curve"}, indent=2))


def plot(report_path: Path, out: Path) -> None:
    """The loss curve of a training report (training.json) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(report_path.read_text())
    steps = [c["step"] for c in report["curve"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [c["train_loss"] for c in report["curve"]], label="train loss (batch)")
    ax.plot(steps, [c["valid_loss"] for c in report["curve"]], label="validation loss")
    ax.axhline(report["untrained"]["valid_loss"], color="grey", linestyle=":", label="untrained (validation)")
    ax.axvline(report["best_step"], color="red", linestyle="--", label=f"kept: step {report['best_step']}")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title(f"reference-llama on {report['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("corpus")
    sub.add_parser("tokenizer")
    t = sub.add_parser("train")
    t.add_argument("--out", type=Path, default=DATA)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--seq", type=int, default=256)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("plot")
    p.add_argument("--report", type=Path, default=DATA / "training.json")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reference_training.png")
    args = parser.parse_args()
    if args.cmd == "plot":
        plot(args.report, args.out)
    elif args.cmd == "corpus":
        build_corpus()
    elif args.cmd == "tokenizer":
        build_tokenizer()
    else:
        train(args.out, steps=args.steps, seq=args.seq, batch=args.batch, lr=args.lr,
              eval_every=args.eval_every, seed=args.seed)


if __name__ == "__main__":
    main()
