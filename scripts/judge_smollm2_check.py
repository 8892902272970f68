"""Score the base SmolLM2's own answers with both judges, for reading by hand (docs/judge.md).

    .venv/bin/python scripts/judge_smollm2_check.py --out var/smol_check.json

Greedy answers (48 new tokens, the worker's default) to the first 24 HarmBench prompts and the
first 16 benign chat prompts of the worker's evaluation; writes each answer with the learned
judge's score and both judges' verdicts. No labels are produced: a person reads the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from defense.assets import benign_chat_prompts, harmbench_prompts  # noqa: E402
from defense.evaluate import KeywordJudge, generate  # noqa: E402
from defense.judge import ClassifierJudge  # noqa: E402
from defense.modeling import load_base, prepare_builtin  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "var" / "smol_check.json")
    parser.add_argument("--models", type=Path, default=REPO / "var" / "models")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load_base(prepare_builtin("smollm2-135m-instruct", args.models))
    judge, keyword = ClassifierJudge(), KeywordJudge()
    rows = []
    for kind, prompts in (
        ("harmful", harmbench_prompts()[:24]),
        ("benign", benign_chat_prompts()[:16]),
    ):
        answers = generate(model, tokenizer, prompts, max_new_tokens=48)
        for prompt, answer, score in zip(
            prompts, answers, judge.scores(prompts, answers), strict=True
        ):
            rows.append(
                {
                    "kind": kind,
                    "prompt": prompt,
                    "response": answer,
                    "score": round(score, 4),
                    "judge_refusal": score < judge.head.threshold,
                    "keyword_refusal": keyword.is_refusal(prompt, answer),
                }
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
