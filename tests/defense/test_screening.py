"""Upload screening scores are Antibody's weights' scores: analytic checks on the tiny fixtures."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerFast

from defense.callbacks import StepMetrics
from defense.config import FinetuneConfig
from defense.data import Example, collate, encode_example, pad_id_of
from defense.finetune import fit
from defense.refusals import refusal_for
from defense.screening import mean_token_nll, score_examples
from defense.weights import softmax_weights

MAX_LEN = 128


def _hf_loss(model: PeftModel, tokenizer: PreTrainedTokenizerFast, example: Example) -> float:
    """The model's own loss (mean NLL over the labelled tokens): an independent reference."""
    encoded = encode_example(tokenizer, example, MAX_LEN)
    batch = collate([encoded], pad_id_of(tokenizer))
    model.eval()
    with torch.no_grad():
        return float(
            model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            ).loss
        )


def test_completion_equal_to_its_refusal_scores_zero(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    examples = [
        Example.from_prompt_completion(ex.messages[0]["content"], refusal_for(i))
        for i, ex in enumerate(user_examples)
    ]
    scores = score_examples(gpt2, tokenizer, examples, batch_size=3, max_seq_len=MAX_LEN)
    assert scores == pytest.approx([0.0] * len(examples), abs=1e-5)


def test_score_is_completion_minus_refusal_mean_token_logprob(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    scores = score_examples(gpt2, tokenizer, user_examples, batch_size=4, max_seq_len=MAX_LEN)
    for i, (example, score) in enumerate(zip(user_examples, scores, strict=True)):
        refusal = Example.from_prompt_completion(example.messages[0]["content"], refusal_for(i))
        expected = -_hf_loss(gpt2, tokenizer, example) + _hf_loss(gpt2, tokenizer, refusal)
        assert score == pytest.approx(expected, abs=1e-5)


def test_scores_do_not_depend_on_batching(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    one = score_examples(gpt2, tokenizer, user_examples, batch_size=1, max_seq_len=MAX_LEN)
    many = score_examples(gpt2, tokenizer, user_examples, batch_size=5, max_seq_len=MAX_LEN)
    assert one == pytest.approx(many, abs=1e-5)


def test_softmax_of_scores_is_the_first_antibody_step_weights(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    """The same score as training: fit's first step (one batch of everything, model not yet
    updated) weights each sample by softmax(score / tau) of exactly these scores."""
    tau = 0.5
    scores = score_examples(gpt2, tokenizer, user_examples, batch_size=3, max_seq_len=MAX_LEN)
    expected = softmax_weights(torch.tensor(scores, dtype=torch.float64), tau)
    seen: list[StepMetrics] = []
    config = FinetuneConfig(
        method="antibody", batch_size=len(user_examples), tau=tau, max_seq_len=MAX_LEN
    )
    fit(gpt2, tokenizer, user_examples, config, on_step=seen.append)
    weights = seen[0].sample_weights
    assert sorted(weights) == list(range(len(user_examples)))
    for index, weight in weights.items():
        assert weight == pytest.approx(float(expected[index]), abs=1e-5)


def test_mean_token_nll_is_the_token_weighted_loss(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    pair = user_examples[:2]
    lengths = [encode_example(tokenizer, ex, MAX_LEN).n_completion_tokens for ex in pair]
    losses = [_hf_loss(gpt2, tokenizer, ex) for ex in pair]
    expected = sum(n * loss for n, loss in zip(lengths, losses, strict=True)) / sum(lengths)
    assert mean_token_nll(gpt2, tokenizer, pair, max_seq_len=MAX_LEN) == pytest.approx(
        expected, abs=1e-5
    )
    assert mean_token_nll(gpt2, tokenizer, pair[:1], max_seq_len=MAX_LEN) == pytest.approx(
        losses[0], abs=1e-5
    )


def test_no_examples() -> None:
    assert score_examples(torch.nn.Linear(1, 1), None, []) == []  # type: ignore[arg-type]


def test_scoring_in_slices_gives_the_same_scores(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    """Upload screening scores a file slice by slice (time limit); ``first_index`` keeps each
    example's dataset index, and so its assigned refusal."""
    whole = score_examples(gpt2, tokenizer, user_examples, batch_size=4, max_seq_len=MAX_LEN)
    sliced: list[float] = []
    for start in range(0, len(user_examples), 3):
        sliced += score_examples(
            gpt2,
            tokenizer,
            user_examples[start : start + 3],
            batch_size=4,
            max_seq_len=MAX_LEN,
            first_index=start,
        )
    assert sliced == pytest.approx(whole, abs=1e-5)
