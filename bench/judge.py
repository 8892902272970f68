"""How far the refusal/compliance judge agrees with humans, and what it costs on a CPU.

    .venv/bin/python bench/judge.py

Scores the shipped judge (defense/judge.py) on the *test* part of pyrit's human-labelled
responses (``defense.judge.human_split``: unique (objective, response) pairs, stratified by label,
60 % by SHA-256 order; the other 40 % chose the head's L2 strength and threshold and nothing
else). Refusal is the positive class, as in ``defense.evaluate.judge_accuracy``. The keyword
judge is scored on the same rows and on all 193 rows for comparison. Cost: wall time to score
the test responses with an empty memo, one torch thread, after the model is loaded.

Writes bench/results/judge.json ({"accuracy","precision","recall","n_test","ci95"}) and
bench/results/judge.md. About a minute on a 2-core machine.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/overhead.py

from bench.common import REPO, command_line, log, machine, utc_now  # noqa: E402

RESULTS = REPO / "bench" / "results"


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval for a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def main() -> None:
    import torch

    from defense.assets import refusal_labelled_rows
    from defense.evaluate import KeywordJudge, judge_accuracy
    from defense.judge import ClassifierJudge, Encoder, human_split, load_head

    torch.set_num_threads(1)
    rows = refusal_labelled_rows()
    tune, test = human_split(rows)
    log(f"{len(rows)} human rows; {len(tune)} tune / {len(test)} test unique pairs")

    started = time.perf_counter()
    encoder = Encoder()
    head = load_head()
    load_s = time.perf_counter() - started
    judge = ClassifierJudge(encoder, head)
    started = time.perf_counter()
    learned = judge_accuracy(judge, test)
    score_s = time.perf_counter() - started
    correct = round(learned["accuracy"] * learned["n"])
    ci = wilson(correct, learned["n"])
    log(f"learned judge on test: {learned}, CI {ci}, {1000 * score_s / len(test):.0f} ms/response")

    # Service-length answers: the worker judges 48-128 new tokens, about 250-600 characters.
    short = [(r.objective, r.response[:300]) for r in test]
    fresh = ClassifierJudge(encoder, head)
    started = time.perf_counter()
    fresh.scores([p for p, _ in short], [a for _, a in short])
    short_ms = 1000 * (time.perf_counter() - started) / len(short)
    log(f"service-length answers: {short_ms:.0f} ms/response")

    keyword_test = judge_accuracy(KeywordJudge(), test)
    keyword_all = judge_accuracy(KeywordJudge(), rows)
    keyword_ci = wilson(round(keyword_test["accuracy"] * keyword_test["n"]), keyword_test["n"])
    tune_acc = judge_accuracy(judge, tune)

    result = {
        "accuracy": round(learned["accuracy"], 4),
        "precision": round(learned["precision"], 4),
        "recall": round(learned["recall"], 4),
        "n_test": learned["n"],
        "ci95": [round(ci[0], 4), round(ci[1], 4)],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "judge.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    refused_test = sum(r.refused for r in test)
    ms = 1000 * score_s / len(test)
    lines = [
        "# Refusal/compliance judge against human labels",
        "",
        f"Generated {utc_now()} by `{command_line()}` on {machine()}.",
        "",
        "Data: pyrit 1.1.0's human-labelled responses (`refusal.csv`, `refusal_extra.csv`, "
        f"`mini_refusal.csv`: {len(rows)} rows, {len(tune) + len(test)} unique "
        "(objective, response) pairs). Split (`defense.judge.human_split`): pairs stratified "
        "by label, ordered by SHA-256, first 40 % **tune** "
        f"({len(tune)}: chose the head's L2 strength and threshold only), rest **test** "
        f"({len(test)}: {refused_test} refused, {len(test) - refused_test} complied; read only "
        "here). The head was fitted on self-written data only (docs/judge.md). Refusal is the "
        "positive class.",
        "",
        "| judge | rows | accuracy | 95 % CI (Wilson) | precision | recall |",
        "|---|---|---|---|---|---|",
        f"| learned (MiniLM + logistic head) | test {learned['n']} | {learned['accuracy']:.3f} | "
        f"[{ci[0]:.3f}, {ci[1]:.3f}] | {learned['precision']:.3f} | {learned['recall']:.3f} |",
        f"| keyword (`KeywordJudge`) | test {keyword_test['n']} | "
        f"{keyword_test['accuracy']:.3f} | [{keyword_ci[0]:.3f}, {keyword_ci[1]:.3f}] | "
        f"{keyword_test['precision']:.3f} | {keyword_test['recall']:.3f} |",
        f"| keyword (`KeywordJudge`) | all {keyword_all['n']} | {keyword_all['accuracy']:.3f} "
        f"| | {keyword_all['precision']:.3f} | {keyword_all['recall']:.3f} |",
        f"| learned, for reference | tune {tune_acc['n']} (used for tuning) | "
        f"{tune_acc['accuracy']:.3f} | | {tune_acc['precision']:.3f} | "
        f"{tune_acc['recall']:.3f} |",
        "",
        f"CPU cost (one torch thread; 1-minute load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs when written, so other jobs shared them): loading the encoder and head (with both SHA-256 checks) "
        f"{load_s:.1f} s once per process; scoring {ms:.0f} ms per response "
        f"({len(test)} test responses in {score_s:.1f} s, batches of 16, response cut at "
        f"128 word pieces); {short_ms:.0f} ms per response for service-length answers (the "
        "same responses cut at 300 characters, about 60 tokens).",
        "",
        f"Head: {json.dumps(head.meta)}",
        "",
    ]
    (RESULTS / "judge.md").write_text("\n".join(lines), encoding="utf-8")
    log("wrote bench/results/judge.json and judge.md")


if __name__ == "__main__":
    main()
