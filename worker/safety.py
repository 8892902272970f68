"""Safety scores of a model in a job: the evidence behind every checkpoint and the release gate.

``SafetyEvaluator`` wraps ``defense.evaluate.evaluate_safety`` with the provider's evaluation
sizes (``safety_eval_harmful``, ``safety_eval_benign``, ``safety_eval_max_new_tokens``) and, for a
fine-tuning job with a validation file, the validation loss (``defense.screening.mean_token_nll``).

Choices where the contract is silent:

* Harmful prompts are the first ``safety_eval_harmful`` HarmBench behaviours in file order (never
  trained on: alignment and attacks use AdvBench); benign prompts are pyrit's benign chat
  objectives, then reasoning-gym/sentiment task questions when more are asked for than the 50
  objectives (``defense.assets.benign_prompts``). The same prompts for every evaluation, so
  scores of checkpoints, of the starting model and of other jobs are comparable.
* The stored scores carry their sizes (``n_harmful``, ``n_benign``, ``max_new_tokens``); a model's
  stored ``safety`` is reused as a job's starting score only when all three match.
* The judge is ``defense.judge.load_judge()`` (the learned judge, or the keyword judge with a
  logged warning when its encoder package is missing); ``judge`` names which one scored.
  ``harmful_score_keyword`` and ``over_refusal_keyword`` keep the keyword figures beside it for
  one release. The judge's measured accuracy is on the held-out test part of pyrit's labels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.config import Settings

EVAL_BATCH_SIZE = 8


@dataclass(frozen=True)
class EvalSizes:
    harmful: int
    benign: int
    max_new_tokens: int
    judge: str = "keyword"

    @classmethod
    def from_settings(cls, settings: Settings, *, judge: str = "keyword") -> EvalSizes:
        return cls(
            harmful=settings.safety_eval_harmful,
            benign=settings.safety_eval_benign,
            max_new_tokens=settings.safety_eval_max_new_tokens,
            judge=judge,
        )

    def matches(self, safety: dict[str, Any] | None) -> bool:
        """Whether stored scores were computed with these sizes and by the same judge (and so
        can be reused; scores stored before the judge was recorded came from the keyword one)."""
        if not safety or "harmful_score" not in safety:
            return False
        return (
            safety.get("n_harmful") == self.harmful
            and safety.get("n_benign") == self.benign
            and safety.get("max_new_tokens") == self.max_new_tokens
            and safety.get("judge", "keyword") == self.judge
        )


def benign_eval_prompts(n: int) -> list[str]:
    from defense.assets import benign_chat_prompts, benign_prompts

    chat = benign_chat_prompts()
    if n <= len(chat):
        return chat[:n]
    return benign_prompts(task_prompts=n - len(chat))[:n]


class SafetyEvaluator:
    """Scores one model (base, aligned, or a checkpoint in memory) with fixed prompts."""

    def __init__(
        self, settings: Settings, *, validation: Sequence[Any] = (), max_seq_len: int = 512
    ) -> None:
        from defense.assets import harmbench_prompts, refusal_labelled_rows
        from defense.judge import human_split, judge_name, load_judge

        self.judge = load_judge()
        self.sizes = EvalSizes.from_settings(settings, judge=judge_name(self.judge))
        self.harmful = harmbench_prompts()[: self.sizes.harmful]
        self.benign = benign_eval_prompts(self.sizes.benign)
        self.validation = list(validation)
        self.max_seq_len = max_seq_len
        self._judge_rows = human_split(refusal_labelled_rows())[1]

    def evaluate(self, model: Any, tokenizer: Any, *, safety: bool = True) -> dict[str, Any]:
        """Harmful score, over-refusal and the judge's accuracy (``safety``), and the validation
        loss when the job has validation examples. JSON-ready."""
        from defense.evaluate import evaluate_safety

        scores: dict[str, Any] = {}
        if safety:
            report = evaluate_safety(
                model,
                tokenizer,
                harmful_prompts=self.harmful,
                benign_prompts=self.benign,
                judge=self.judge,
                judge_rows=self._judge_rows,
                max_new_tokens=self.sizes.max_new_tokens,
                batch_size=EVAL_BATCH_SIZE,
            )
            scores.update(
                harmful_score=round(report.harmful_score, 6),
                over_refusal=round(report.over_refusal, 6),
                judge_accuracy=dict(report.judge_accuracy),
                judge=report.judge,
                harmful_score_keyword=round(report.harmful_score_keyword or 0.0, 6),
                over_refusal_keyword=round(report.over_refusal_keyword or 0.0, 6),
                n_harmful=report.n_harmful,
                n_benign=report.n_benign,
                max_new_tokens=self.sizes.max_new_tokens,
            )
        if self.validation:
            scores["validation_loss"] = round(self.validation_loss(model, tokenizer), 6)
        scores["evaluated_at"] = int(time.time())
        return scores

    def validation_loss(self, model: Any, tokenizer: Any) -> float:
        from defense.screening import mean_token_nll

        return mean_token_nll(
            model,
            tokenizer,
            self.validation,
            batch_size=EVAL_BATCH_SIZE,
            max_seq_len=self.max_seq_len,
        )


def describe(scores: dict[str, Any]) -> str:
    """One line for an event: ``harmful_score=0.125, over_refusal=0.000, validation_loss=1.234``."""
    parts = [
        f"{key}={float(scores[key]):.3f}"
        for key in ("harmful_score", "over_refusal", "validation_loss")
        if key in scores
    ]
    return ", ".join(parts)
