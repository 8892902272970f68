"""Stage 1 on tiny models: compute per step, exact restore, accumulation, Vaccine hooks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerFast

from defense.align import (
    AlignBatch,
    align,
    attention_modules,
    grouped_loss_and_grad,
    loss_and_grad,
    offset_attention_outputs,
    train_step,
    vaccine_gradient,
)
from defense.callbacks import StepMetrics
from defense.config import AlignConfig
from defense.data import Example, collate, encode_example
from defense.loop import build_scheduler
from defense.lora import default_target_modules, lora_parameters
from defense.refusals import refusal_for


def _count_passes(model: PeftModel) -> dict[str, int]:
    """Forwards of the base model and backwards through its logits."""
    counts = {"forward": 0, "backward": 0}

    def hook(module: torch.nn.Module, args: object, output: object) -> None:
        counts["forward"] += 1
        logits = output.logits  # type: ignore[attr-defined]
        if logits.requires_grad:
            logits.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))

    model.get_base_model().register_forward_hook(hook)
    return counts


@pytest.mark.parametrize(
    ("method", "passes"), [("antibody", 4), ("booster", 3), ("vaccine", 2), ("sft", 1)]
)
def test_passes_per_step(
    gpt2: PeftModel,
    tokenizer: PreTrainedTokenizerFast,
    safe_examples: list[Example],
    harmful_examples: list[Example],
    method: str,
    passes: int,
) -> None:
    counts = _count_passes(gpt2)
    config = AlignConfig(method=method, batch_size=2, max_steps=3)  # type: ignore[arg-type]
    result = align(gpt2, tokenizer, safe_examples, harmful_examples, config)
    assert result.step == 3
    assert counts == {"forward": 3 * passes, "backward": 3 * passes}


def test_antibody_align_trains_only_lora_and_reports_lambda(
    gpt2: PeftModel,
    tokenizer: PreTrainedTokenizerFast,
    safe_examples: list[Example],
    harmful_examples: list[Example],
) -> None:
    before = {n: p.detach().clone() for n, p in gpt2.named_parameters()}
    seen: list[StepMetrics] = []
    config = AlignConfig(batch_size=2, n_epochs=2, eta=5.0, ema=0.5)
    result = align(gpt2, tokenizer, safe_examples, harmful_examples, config, on_step=seen.append)
    for name, param in gpt2.named_parameters():
        assert (not torch.equal(param.detach(), before[name])) == ("lora_" in name), name
    assert [m.step for m in seen] == [1, 2, 3, 4]
    raw = [m.extra["lambda_raw"] for m in seen]
    assert all(4.0 <= r <= 6.0 for r in raw)  # cosine form with eta = 5
    lam = raw[0]
    for m, r in zip(seen, raw, strict=True):
        lam = r if m.step == 1 else 0.5 * lam + 0.5 * r
        assert m.extra["lambda"] == pytest.approx(lam)
    assert {"harmful_loss", "perturbed_harmful_loss", "refusal_loss"} <= seen[0].extra.keys()
    # The simulated harmful step lowers the harmful loss.
    assert seen[0].extra["perturbed_harmful_loss"] < seen[0].extra["harmful_loss"]
    assert result.extra["lambda"] == seen[-1].extra["lambda"]
    assert result.sample_weights == {}


def _align_batch(
    tokenizer: PreTrainedTokenizerFast,
    safe: list[Example],
    harmful: list[Example],
    groups: list[list[int]],
) -> AlignBatch:
    def view(examples: list[Example], group: list[int], refusal: bool) -> dict[str, torch.Tensor]:
        return collate(
            [
                encode_example(
                    tokenizer,
                    examples[i],
                    256,
                    completion=refusal_for(i) if refusal else None,
                    index=i,
                )
                for i in group
            ],
            0,
        )

    return AlignBatch(
        align=[view(safe, g, False) for g in groups],
        harmful=[view(harmful, g, False) for g in groups],
        refusal=[view(harmful, g, True) for g in groups],
    )


def test_stage1_step_restores_the_lora_tensors_exactly(
    gpt2: PeftModel,
    tokenizer: PreTrainedTokenizerFast,
    safe_examples: list[Example],
    harmful_examples: list[Example],
) -> None:
    """With a zero learning rate the only thing that could move theta is an inexact restore
    after the in-place perturbation."""
    params = lora_parameters(gpt2)
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.0)
    scheduler = build_scheduler(optimizer, total_steps=1, schedule="constant", warmup_steps=0)
    batch = _align_batch(tokenizer, safe_examples, harmful_examples, [[0, 1, 2, 3]])
    out = train_step(gpt2, batch, optimizer, scheduler, params=params, config=AlignConfig(rho=0.5))
    assert out.extra["perturbed_harmful_loss"] != out.extra["harmful_loss"]  # it did move
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))


@pytest.mark.parametrize("method", ["antibody", "vaccine"])
def test_stage1_accumulation_equals_one_batch(
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    safe_examples: list[Example],
    harmful_examples: list[Example],
    method: str,
) -> None:
    config = AlignConfig(method=method, max_grad_norm=0.0)  # type: ignore[arg-type]

    def update(groups: list[list[int]]) -> tuple[list[torch.Tensor], dict[str, float]]:
        model = make_gpt2()
        params = lora_parameters(model)
        before = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=1.0)
        scheduler = build_scheduler(optimizer, total_steps=1, schedule="constant", warmup_steps=0)
        batch = _align_batch(tokenizer, safe_examples, harmful_examples, groups)
        out = train_step(model, batch, optimizer, scheduler, params=params, config=config)
        return [b - p.detach() for b, p in zip(before, params, strict=True)], out.extra

    whole, whole_extra = update([[0, 1, 2, 3]])
    split, split_extra = update([[0, 1], [2, 3]])
    for got, want in zip(split, whole, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    for key, value in whole_extra.items():
        assert split_extra[key] == pytest.approx(value, rel=1e-5)


def test_vaccine_perturbs_every_attention_output_by_rho_in_total(
    llama: PeftModel,
    tokenizer: PreTrainedTokenizerFast,
    safe_examples: list[Example],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert default_target_modules(llama.get_base_model()) == ("q_proj", "k_proj", "v_proj")
    layers = attention_modules(llama)
    assert [type(m).__name__ for m in layers] == ["LlamaAttention", "LlamaAttention"]
    params = lora_parameters(llama)
    batch = [collate([encode_example(tokenizer, ex, 256) for ex in safe_examples], 0)]

    offsets: list[torch.Tensor] = []
    original = offset_attention_outputs

    def recording(layers_: object, offset: Callable[[int, torch.Tensor], torch.Tensor]) -> object:
        def wrapped(k: int, hidden: torch.Tensor) -> torch.Tensor:
            value = offset(k, hidden)
            offsets.append(value.detach())
            return value

        return original(layers_, wrapped)  # type: ignore[arg-type]

    monkeypatch.setattr("defense.align.offset_attention_outputs", recording)
    _, g_vaccine = vaccine_gradient(llama, params, batch, rho=2.0)
    monkeypatch.undo()
    probes, perturbations = offsets[:2], offsets[2:]
    assert all(torch.count_nonzero(p) == 0 for p in probes)
    total = torch.sqrt(
        sum((p.double().pow(2).sum() for p in perturbations), torch.zeros((), dtype=torch.float64))
    )
    assert float(total) == pytest.approx(2.0, rel=1e-4)
    assert all(not m._forward_hooks for m in layers)  # hooks removed

    _, g_plain = loss_and_grad(llama, params, batch)
    _, g_zero = vaccine_gradient(llama, params, batch, rho=0.0)
    torch.testing.assert_close(g_zero, g_plain, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(g_vaccine, g_plain)


def test_align_is_deterministic_and_validates_inputs(
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    safe_examples: list[Example],
    harmful_examples: list[Example],
) -> None:
    config = AlignConfig(batch_size=2, max_steps=2, seed=3)
    models = [make_gpt2(), make_gpt2()]
    results = [align(m, tokenizer, safe_examples, harmful_examples, config) for m in models]
    assert results[0] == results[1]
    for (n, a), (_, b) in zip(
        models[0].named_parameters(), models[1].named_parameters(), strict=True
    ):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="^harmful"):
        align(models[0], tokenizer, safe_examples, [], config)
    with pytest.raises(ValueError, match="^lambda_form"):
        AlignConfig(lambda_form="dot")  # type: ignore[arg-type]


def test_grouped_loss_is_the_sum_of_each_groups_token_mean(
    gpt2: PeftModel,
    tokenizer: PreTrainedTokenizerFast,
    safe_examples: list[Example],
    harmful_examples: list[Example],
) -> None:
    """The refusal pass with perturbed_retain: refusals and retain answers each a token mean,
    so the longer group does not outweigh the shorter one."""
    params = lora_parameters(gpt2)
    refusals = _align_batch(tokenizer, safe_examples, harmful_examples, [[0, 1]]).refusal
    answers = _align_batch(tokenizer, safe_examples, harmful_examples, [[2], [3]]).harmful
    loss_r, g_r = loss_and_grad(gpt2, params, refusals)
    loss_a, g_a = loss_and_grad(gpt2, params, answers)
    loss, g = grouped_loss_and_grad(gpt2, params, [refusals, answers])
    assert loss == pytest.approx(loss_r + loss_a, rel=1e-6)
    torch.testing.assert_close(g, g_r + g_a, rtol=1e-5, atol=1e-8)
    _, pooled = loss_and_grad(gpt2, params, refusals + answers)  # one token mean over both
    assert not torch.allclose(g, pooled)


def test_perturbed_retain_joins_the_refusal_pass_only(
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    safe_examples: list[Example],
    harmful_examples: list[Example],
) -> None:
    """One more forward+backward per step (the retain micro-batch inside pass 3), a different
    result from the released refusal term, and a clear error without retain examples."""
    benign = [Example.from_prompt_completion("Name a fruit.", "An apple.")] * 3
    config = AlignConfig(batch_size=2, max_steps=3, perturbed_retain=2)
    model = make_gpt2()
    counts = _count_passes(model)
    with_retain = align(model, tokenizer, safe_examples, harmful_examples, config, retain=benign)
    assert counts == {"forward": 3 * 5, "backward": 3 * 5}
    assert with_retain.step == 3
    released = make_gpt2()
    align(
        released, tokenizer, safe_examples, harmful_examples, AlignConfig(batch_size=2, max_steps=3)
    )
    moved = lora_parameters(model)
    assert not all(torch.equal(a, b) for a, b in zip(moved, lora_parameters(released), strict=True))
    with pytest.raises(ValueError, match="^retain"):
        align(make_gpt2(), tokenizer, safe_examples, harmful_examples, config)
    with pytest.raises(ValueError, match="^perturbed_retain"):
        AlignConfig(perturbed_retain=-1)
