"""Antibody's sample weights: the pure functions, then the weights a real step computes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerFast

from defense.data import Example, collate, encode_example
from defense.finetune import MicroBatch, train_step
from defense.loop import StepOutput, build_scheduler
from defense.lora import lora_parameters
from defense.losses import (
    completion_token_counts,
    mean_token_logprob,
    token_nll,
    weighted_token_loss,
)
from defense.refusals import refusal_for
from defense.weights import likelihood_ratio_scores, shifted_exp_weights, softmax_weights


def test_softmax_weights_sum_to_one_and_follow_the_scores() -> None:
    scores = torch.tensor([0.5, -2.0, 1.0, 0.0])
    w = softmax_weights(scores, 1.0)
    assert float(w.sum()) == pytest.approx(1.0)
    assert w.argmax() == 2 and w.argmin() == 1
    hot, cold = softmax_weights(scores, 0.1), softmax_weights(scores, 10.0)
    assert float(hot.max()) > float(w.max()) > float(cold.max())  # tau sharpens or flattens
    torch.testing.assert_close(softmax_weights(torch.zeros(5), 0.7), torch.full((5,), 0.2))


def test_weights_are_constants() -> None:
    scores = torch.tensor([0.5, -1.0], requires_grad=True)
    assert not softmax_weights(scores, 1.0).requires_grad
    assert not likelihood_ratio_scores(scores, torch.zeros(2)).requires_grad


def test_score_is_completion_minus_refusal() -> None:
    scores = likelihood_ratio_scores(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]))
    assert scores.tolist() == [1.0, -2.0]


@pytest.mark.parametrize("shift", [0.0, 3.0, 50.0])
def test_shifted_terms_normalise_to_the_softmax_for_any_shift(shift: float) -> None:
    scores = torch.tensor([0.5, -2.0, 1.0])
    terms = shifted_exp_weights(scores, 0.5, shift)
    torch.testing.assert_close(terms / terms.sum(), softmax_weights(scores, 0.5))


# --- the weights inside a training step --------------------------------------------------------


def _step(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[Example],
    refusals: Sequence[str],
) -> StepOutput:
    params = lora_parameters(model)
    optimizer = torch.optim.SGD(params, lr=0.0)
    scheduler = build_scheduler(optimizer, total_steps=1, schedule="constant", warmup_steps=0)
    batch = MicroBatch(
        completion=collate(
            [encode_example(tokenizer, ex, 256, index=i) for i, ex in enumerate(examples)], 0
        ),
        refusal=collate(
            [
                encode_example(tokenizer, ex, 256, completion=r, index=i)
                for i, (ex, r) in enumerate(zip(examples, refusals, strict=True))
            ],
            0,
        ),
    )
    return train_step(
        model, [batch], optimizer, scheduler, params=params, tau=1.0, max_grad_norm=0.0
    )


def test_completions_equal_to_their_refusals_get_the_mean_weight(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    prompts = ["Add 2 and 3.", "Say hi.", "Is 7 prime?", "Spell cat."]
    examples = [Example.from_prompt_completion(p, refusal_for(i)) for i, p in enumerate(prompts)]
    weights = _step(gpt2, tokenizer, examples, [refusal_for(i) for i in range(4)]).sample_weights
    assert sorted(weights) == [0, 1, 2, 3]
    for w in weights.values():
        assert w == pytest.approx(1 / 4, abs=1e-5)


def test_step_weights_match_a_direct_computation(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    examples = user_examples[:4]
    refusals = [refusal_for(i) for i in range(4)]
    with torch.no_grad():
        logprobs, nlls = [], []
        for completion in (None, "refusal"):
            encoded = [
                encode_example(
                    tokenizer, ex, 256, completion=None if completion is None else refusals[i]
                )
                for i, ex in enumerate(examples)
            ]
            batch = collate(encoded, 0)
            nll = token_nll(
                gpt2(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                batch["labels"],
            )
            logprobs.append(mean_token_logprob(nll, completion_token_counts(batch["labels"])))
            nlls.append((nll, completion_token_counts(batch["labels"])))
    expected = torch.softmax(logprobs[0] - logprobs[1], dim=0)
    out = _step(gpt2, tokenizer, examples, refusals)
    weights = out.sample_weights
    assert [weights[i] for i in range(4)] == pytest.approx(expected.tolist(), abs=1e-6)
    assert sum(weights.values()) == pytest.approx(1.0)
    # The step's loss is the pure function's weighted loss under those weights.
    assert out.loss == pytest.approx(float(weighted_token_loss(*nlls[0], expected)), rel=1e-5)
