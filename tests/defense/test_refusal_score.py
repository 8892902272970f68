"""The refusal term b_i: the cache path equals the full forward, and falls back when it must."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerFast

from defense.data import Example, collate, encode_example
from defense.refusal_score import (
    prompt_lengths,
    refusal_logprob,
    refusal_logprob_full,
    reusable_cache,
    shared_prompt_lengths,
)
from defense.refusals import refusal_for


def _views(
    tokenizer: PreTrainedTokenizerFast, examples: Sequence[Example], max_len: int = 256
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    completion = collate(
        [encode_example(tokenizer, ex, max_len, index=i) for i, ex in enumerate(examples)], 0
    )
    refusal = collate(
        [
            encode_example(tokenizer, ex, max_len, completion=refusal_for(i), index=i)
            for i, ex in enumerate(examples)
        ],
        0,
    )
    return completion, refusal


def _training_forward(model: PeftModel, batch: dict[str, torch.Tensor]) -> object:
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=True
    )


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cache_path_equals_the_full_refusal_forward(
    arch: str,
    request: pytest.FixtureRequest,
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
) -> None:
    model: PeftModel = request.getfixturevalue(arch)
    model.eval()  # dropout off: both paths are deterministic functions of the weights
    completion, refusal = _views(tokenizer, user_examples)
    lengths = shared_prompt_lengths(completion, refusal)
    assert lengths is not None
    # Prompts and refusals of different lengths: padding on both sides of the comparison.
    assert len(set(lengths.tolist())) > 1
    assert len(set((refusal["attention_mask"].sum(1) - lengths).tolist())) > 1

    out = _training_forward(model, completion)
    assert reusable_cache(out.past_key_values, completion["input_ids"].shape[1])  # type: ignore[attr-defined]
    fast = refusal_logprob(model, out.logits, out.past_key_values, completion, refusal)  # type: ignore[attr-defined]
    full = refusal_logprob_full(model, refusal)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    # Refusals differ per sample, so a wrong offset or mask could not match by accident.
    assert float(full.std()) > 1e-3


def test_cache_path_leaves_the_training_gradient_unchanged(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    """Extending the cache after the training forward must not touch what backward uses."""
    completion, refusal = _views(tokenizer, user_examples)
    params = [p for p in gpt2.parameters() if p.requires_grad]

    def grads(score_refusal: bool) -> list[torch.Tensor]:
        for p in params:
            p.grad = None
        out = _training_forward(gpt2, completion)
        if score_refusal:
            refusal_logprob(gpt2, out.logits, out.past_key_values, completion, refusal)  # type: ignore[attr-defined]
        out.logits.float().logsumexp(-1).mean().backward()  # type: ignore[attr-defined]
        return [p.grad.clone() for p in params if p.grad is not None]

    gpt2.eval()
    for a, b in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_prompts_truncated_differently_fall_back_to_the_full_forward(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast
) -> None:
    example = Example.from_prompt_completion("x" * 20, "ok")
    prompt = int(prompt_lengths(_views(tokenizer, [example])[0])[0])
    max_len = prompt + 10
    # The short completion fits with the whole prompt; the long refusal cuts the prompt's start.
    completion = collate([encode_example(tokenizer, example, max_len)], 0)
    refusal = collate([encode_example(tokenizer, example, max_len, completion="no, " * 10)], 0)
    assert int(prompt_lengths(completion)[0]) == prompt
    assert int(prompt_lengths(refusal)[0]) < prompt
    assert shared_prompt_lengths(completion, refusal) is None
    gpt2.eval()
    out = _training_forward(gpt2, completion)
    score = refusal_logprob(gpt2, out.logits, out.past_key_values, completion, refusal)  # type: ignore[attr-defined]
    torch.testing.assert_close(score, refusal_logprob_full(gpt2, refusal), rtol=0, atol=0)


def test_a_cache_without_every_position_is_not_reused(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    completion, _ = _views(tokenizer, user_examples)
    out = _training_forward(gpt2, completion)
    width = completion["input_ids"].shape[1]
    assert reusable_cache(out.past_key_values, width)  # type: ignore[attr-defined]
    assert not reusable_cache(out.past_key_values, width + 1)  # type: ignore[attr-defined]
    assert not reusable_cache(None, width)
