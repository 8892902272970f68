"""Stage 2: the step's loss and gradient, accumulation, compute, Lisa, and fit's contract."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerFast

from defense.callbacks import StepMetrics
from defense.config import FinetuneConfig
from defense.data import Example, collate, encode_example
from defense.finetune import (
    MicroBatch,
    Proximal,
    fit,
    lisa_phase,
    total_steps,
    train_step,
    user_steps_before,
)
from defense.loop import StepOutput, build_scheduler
from defense.lora import lora_parameters
from defense.refusals import refusal_for


def _micro_batches(
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[Example],
    groups: Sequence[Sequence[int]],
    refusal: bool,
) -> list[MicroBatch]:
    def view(i: int, completion: str | None) -> object:
        return encode_example(tokenizer, examples[i], 256, completion=completion, index=i)

    return [
        MicroBatch(
            completion=collate([view(i, None) for i in group], 0),  # type: ignore[misc]
            refusal=collate([view(i, refusal_for(i)) for i in group], 0) if refusal else None,  # type: ignore[misc]
        )
        for group in groups
    ]


def _sgd_step(
    model: PeftModel, batches: list[MicroBatch], tau: float | None, proximal: Proximal | None = None
) -> tuple[StepOutput, list[torch.Tensor]]:
    """One train_step with SGD(lr=1) and no clipping: the update is minus the gradient."""
    params = lora_parameters(model)
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)
    scheduler = build_scheduler(optimizer, total_steps=1, schedule="constant", warmup_steps=0)
    out = train_step(
        model,
        batches,
        optimizer,
        scheduler,
        params=params,
        tau=tau,
        max_grad_norm=0.0,
        proximal=proximal,
    )
    return out, [b - p.detach() for b, p in zip(before, params, strict=True)]


def test_sft_step_is_plain_cross_entropy(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    batches = _micro_batches(tokenizer, user_examples, [range(4)], refusal=False)
    batch = batches[0].completion
    reference = gpt2(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    reference.backward()
    params = lora_parameters(gpt2)
    expected = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    for p in params:
        p.grad = None
    out, grads = _sgd_step(gpt2, batches, tau=None)
    assert out.loss == pytest.approx(float(reference.detach()), rel=1e-6)
    assert out.sample_weights == {}
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tau", [None, 1.0, 0.3])
def test_accumulation_equals_one_batch(
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
    tau: float | None,
) -> None:
    """The invariant of our choice (softmax over the whole step): any split gives the same step.

    The micro-batches are ordered by increasing weight, so every micro-batch raises the running
    shift and the online rescaling is exercised."""
    examples = user_examples[:6]
    whole, whole_grads = _sgd_step(
        make_gpt2(), _micro_batches(tokenizer, examples, [range(6)], tau is not None), tau
    )
    order = (
        sorted(range(6), key=lambda i: whole.sample_weights.get(i, 0.0)) if tau else list(range(6))
    )
    for groups in ([order[:3], order[3:]], [[i] for i in order]):
        split, split_grads = _sgd_step(
            make_gpt2(), _micro_batches(tokenizer, examples, groups, tau is not None), tau
        )
        assert split.loss == pytest.approx(whole.loss, rel=1e-6)
        assert split.tokens == whole.tokens
        assert split.sample_weights.keys() == whole.sample_weights.keys()
        for i, w in whole.sample_weights.items():
            assert split.sample_weights[i] == pytest.approx(w, rel=1e-5)
        for got, want in zip(split_grads, whole_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_weighted_step_differs_from_uniform(
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
) -> None:
    weighted, g_w = _sgd_step(
        make_gpt2(), _micro_batches(tokenizer, user_examples, [range(4)], True), 0.2
    )
    uniform, g_u = _sgd_step(
        make_gpt2(), _micro_batches(tokenizer, user_examples, [range(4)], False), None
    )
    assert max(weighted.sample_weights.values()) > 0.25 + 1e-3
    assert not torch.allclose(g_w[0], g_u[0])


def test_lisa_proximal_term_adds_rho_times_the_drift(
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
) -> None:
    batches = _micro_batches(tokenizer, user_examples, [range(2)], refusal=False)
    plain, g_plain = _sgd_step(make_gpt2(), batches, None)
    model = make_gpt2()
    anchor = [p.detach() + 0.1 for p in lora_parameters(model)]
    prox, g_prox = _sgd_step(model, batches, None, Proximal(anchor=anchor, rho=0.5))
    for a, b in zip(g_prox, g_plain, strict=True):
        torch.testing.assert_close(a - b, torch.full_like(a, 0.5 * -0.1), rtol=1e-4, atol=1e-6)
    assert prox.extra["proximal"] == pytest.approx(
        0.25 * 0.01 * sum(p.numel() for p in anchor), rel=1e-4
    )


def _count_forwards(model: PeftModel) -> dict[str, int]:
    counts = {"grad": 0, "no_grad": 0, "backward": 0}

    def hook(module: torch.nn.Module, args: object, output: object) -> None:
        counts["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        logits = output.logits  # type: ignore[attr-defined]
        if logits.requires_grad:
            logits.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))

    model.get_base_model().register_forward_hook(hook)
    return counts


@pytest.mark.parametrize("method", ["antibody", "sft"])
def test_exactly_one_extra_no_grad_forward_per_step(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example], method: str
) -> None:
    counts = _count_forwards(gpt2)
    config = FinetuneConfig(method=method, batch_size=4, n_epochs=1)  # type: ignore[arg-type]
    result = fit(gpt2, tokenizer, user_examples, config)
    assert result.step == 2
    assert counts["grad"] == counts["backward"] == 2
    assert counts["no_grad"] == (2 if method == "antibody" else 0)
    assert bool(result.sample_weights) == (method == "antibody")


def test_fit_trains_only_lora_and_reports_every_step(
    gpt2: PeftModel, tokenizer: PreTrainedTokenizerFast, user_examples: list[Example]
) -> None:
    before = {n: p.detach().clone() for n, p in gpt2.named_parameters()}
    seen: list[StepMetrics] = []
    config = FinetuneConfig(batch_size=2, n_epochs=2, learning_rate=1e-2)
    gpt2.eval()
    result = fit(gpt2, tokenizer, user_examples, config, on_step=seen.append)
    assert not gpt2.training  # mode restored
    for name, param in gpt2.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == ("lora_" in name), name
    assert [m.step for m in seen] == list(range(1, 9))
    assert all(m.total_steps == 8 for m in seen)
    assert seen[-1].epoch == pytest.approx(2.0)
    assert all(
        len(m.sample_weights) == 2 and sum(m.sample_weights.values()) == pytest.approx(1.0)
        for m in seen
    )
    assert all(m.tokens > 0 and m.tokens_per_second > 0 for m in seen)
    assert result.trained_tokens == sum(m.tokens for m in seen)
    assert sorted(result.sample_weights) == list(range(8))
    assert result.loss == seen[-1].loss


def test_same_seed_same_run_other_seed_other_run(
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
) -> None:
    def run(seed: int) -> tuple[list[float], dict[str, torch.Tensor]]:
        model = make_gpt2(lora=None)
        losses: list[float] = []
        config = FinetuneConfig(batch_size=2, seed=seed, learning_rate=1e-2)
        fit(model, tokenizer, user_examples, config, on_step=lambda m: losses.append(m.loss))
        return losses, {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    losses_a, weights_a = run(0)
    losses_b, weights_b = run(0)
    losses_c, _ = run(1)
    assert losses_a == losses_b
    assert all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)
    assert losses_a != losses_c


def test_lisa_plan_inserts_guide_steps() -> None:
    config = FinetuneConfig(method="lisa", batch_size=2, lisa_align_steps=2, lisa_finetune_steps=3)
    # 14 examples -> 7 user steps -> cycles G G U U U | G G U U U | G G U
    assert total_steps(14, config) == 13
    phases = [lisa_phase(s, config) for s in range(13)]
    assert "".join(p[0] for p in phases) == "gguuugguuuggu"
    assert [user_steps_before(s, config) for s in (0, 2, 5, 13)] == [0, 0, 3, 7]
    assert total_steps(12, config) == 10  # ends on a full user phase, no trailing guide steps
    sft = FinetuneConfig(method="sft", batch_size=2, grad_accum=2)
    assert total_steps(14, sft) == 4


def test_lisa_fit_alternates_between_guide_and_user_data(
    gpt2: PeftModel,
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
    safe_examples: list[Example],
) -> None:
    config = FinetuneConfig(
        method="lisa",
        batch_size=2,
        lisa_align_steps=1,
        lisa_finetune_steps=2,
        lisa_rho=1.0,
        lisa_proximal_after=0.0,
    )
    seen: list[StepMetrics] = []
    result = fit(gpt2, tokenizer, user_examples, config, guide=safe_examples, on_step=seen.append)
    assert result.step == total_steps(8, config) == 6
    assert [m.extra.get("lisa_guide", 0.0) for m in seen] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert all(m.sample_weights == {} for m in seen)
    assert "proximal" in seen[-1].extra and seen[-1].extra["proximal"] > 0
    assert seen[-1].epoch == pytest.approx(1.0)
    with pytest.raises(ValueError, match="guide"):
        fit(gpt2, tokenizer, user_examples, config)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="^batch_size"):
        FinetuneConfig(batch_size=0)
    with pytest.raises(ValueError, match="^method"):
        FinetuneConfig(method="dpo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^tau"):
        FinetuneConfig(tau=0.0)
