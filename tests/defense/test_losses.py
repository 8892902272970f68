"""Analytic checks of the loss math (defense/losses.py) and of the stage-1 gradient."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from defense.align import GradFn, perturbed, stage1_gradient
from defense.config import AlignConfig, LambdaForm
from defense.data import IGNORE_INDEX
from defense.losses import (
    adaptive_lambda,
    alignment_gradient,
    completion_token_counts,
    harmful_perturbation,
    mean_token_logprob,
    proximal_penalty,
    smoothed_lambda,
    token_nll,
    weighted_token_loss,
)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, 11, generator=generator)  # [B, T, V]
    labels = torch.randint(0, 11, (3, 6), generator=generator)  # [B, T]
    labels[:, :2] = IGNORE_INDEX  # prompt
    labels[0, 5] = IGNORE_INDEX  # padding
    labels[2, 4:] = IGNORE_INDEX
    return logits, labels


def test_token_nll_is_shifted_cross_entropy_zero_on_ignored() -> None:
    logits, labels = _batch()
    nll = token_nll(logits, labels)  # [B, T-1]
    assert nll.shape == (3, 5)
    for b in range(3):
        for t in range(5):
            target = int(labels[b, t + 1])
            expected = (
                0.0 if target == IGNORE_INDEX else float(-logits[b, t].log_softmax(-1)[target])
            )
            assert float(nll[b, t]) == pytest.approx(expected, abs=1e-6)
    assert completion_token_counts(labels).tolist() == [3, 4, 2]


def test_uniform_weights_give_plain_cross_entropy() -> None:
    logits, labels = _batch()
    nll = token_nll(logits, labels)
    counts = completion_token_counts(labels)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    for value in (1.0 / 3, 1.0, 7.5):
        loss = weighted_token_loss(nll, counts, torch.full((3,), value))
        torch.testing.assert_close(loss, plain)


def test_weighted_loss_matches_the_closed_form() -> None:
    logits, labels = _batch()
    nll = token_nll(logits, labels)
    counts = completion_token_counts(labels)
    w = torch.tensor([0.5, 0.3, 0.2])
    sums = [float(nll[b].sum()) for b in range(3)]
    expected = sum(w[b] * sums[b] for b in range(3)) / sum(
        float(w[b]) * int(counts[b]) for b in range(3)
    )
    assert float(weighted_token_loss(nll, counts, w)) == pytest.approx(float(expected), rel=1e-6)
    # Equal lengths: the token-weighted mean is sum_i w_i * mean_t CE_i (the paper's update).
    same = labels.clone()
    same[0, 5] = 3
    same[2, 4:] = 3
    nll_same = token_nll(logits, same)
    means = nll_same.sum(1) / completion_token_counts(same)
    torch.testing.assert_close(
        weighted_token_loss(nll_same, completion_token_counts(same), w), (w * means).sum()
    )


def test_zero_weight_sample_contributes_no_gradient() -> None:
    logits, labels = _batch()
    logits.requires_grad_(True)
    loss = weighted_token_loss(
        token_nll(logits, labels), completion_token_counts(labels), torch.tensor([0.0, 1.0, 1.0])
    )
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[0] == 0)
    assert torch.any(logits.grad[1] != 0)


def test_mean_token_logprob_is_length_normalised() -> None:
    logits, labels = _batch()
    nll = token_nll(logits, labels)
    counts = completion_token_counts(labels)
    expected = torch.stack([-nll[b].sum() / counts[b] for b in range(3)])
    torch.testing.assert_close(mean_token_logprob(nll, counts), expected)


# --- stage 1 pure functions -------------------------------------------------------------------


def test_harmful_perturbation_is_a_descent_step_of_norm_rho() -> None:
    g = torch.tensor([3.0, -4.0])
    delta = harmful_perturbation(g, 0.1)
    assert float(delta.norm()) == pytest.approx(0.1, rel=1e-6)
    assert float(torch.dot(delta, g)) < 0  # opposite to the gradient: a simulated harmful step


@pytest.mark.parametrize("form", ["cosine", "projection"])
def test_adaptive_lambda_forms(form: LambdaForm) -> None:
    g_a, d = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0])
    ratio = 2.0 / (math.sqrt(5) * 2.0) if form == "cosine" else 2.0 / 4.0
    assert adaptive_lambda(g_a, d, eta=5.0, form=form) == pytest.approx(5.0 - ratio)
    # Clamped at zero when the alignment gradient already points along d strongly.
    assert adaptive_lambda(g_a, d, eta=0.1, form=form) == 0.0
    # A zero sharpness direction stays finite: lambda = eta.
    assert adaptive_lambda(g_a, torch.zeros(2), eta=5.0, form=form) == pytest.approx(5.0)


def test_smoothed_lambda_is_an_ema_started_at_the_raw_value() -> None:
    assert smoothed_lambda(None, 4.0, 0.99) == 4.0
    assert smoothed_lambda(4.0, 6.0, 0.99) == pytest.approx(0.99 * 4 + 0.01 * 6)
    assert smoothed_lambda(4.0, 6.0, 0.0) == 6.0


def test_alignment_gradient_combination() -> None:
    g_a, g_h, g_p, g_r = (torch.tensor([float(i), 1.0]) for i in range(4))
    g = alignment_gradient(g_a, g_h, g_p, g_r, lam=2.0, lambda_refusal=0.5)
    torch.testing.assert_close(g, g_a + 2.0 * (g_h - g_p) + 0.5 * g_r)
    torch.testing.assert_close(
        alignment_gradient(g_a, g_h, g_p, None, 2.0, 0.5), g_a + 2.0 * (g_h - g_p)
    )


def test_proximal_penalty_value_and_gradient() -> None:
    w = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    value, grads = proximal_penalty(w, anchor, rho=0.5)
    assert value == pytest.approx(0.25 * (1 + 4 + 4))
    torch.testing.assert_close(grads[0], torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(grads[1], torch.tensor([[1.0]]))


# --- the stage-1 gradient on a two-parameter model, by hand -------------------------------------
#
# theta = (a, b). Harmful loss L_h = 0.5 * (2 (a - 1)^2 + (b + 1)^2), refusal loss
# L_r = 0.5 * ((a - 2)^2 + (b - 2)^2), alignment loss L_a = 0.5 * ((a + 1)^2 + 3 b^2).
# Gradients: g_h = (2 (a - 1), b + 1), g_r = (a - 2, b - 2), g_a = (a + 1, 3 b).


def _hand_gradients(a: float, b: float, rho: float) -> dict[str, tuple[float, float]]:
    g_h = (2 * (a - 1), b + 1)
    norm = math.hypot(*g_h) + 1e-7
    a_p, b_p = a - rho * g_h[0] / norm, b - rho * g_h[1] / norm  # theta'
    return {
        "g_h": g_h,
        "g_p": (2 * (a_p - 1), b_p + 1),
        "g_r": (a_p - 2, b_p - 2),
        "g_a": (a + 1, 3 * b),
    }


class _TwoParamModel:
    """theta as two scalar tensors; each GradFn evaluates (loss, grad) at their current values
    and records the point it saw."""

    def __init__(self, a: float, b: float) -> None:
        self.a = torch.tensor(a, dtype=torch.float64, requires_grad=True)
        self.b = torch.tensor(b, dtype=torch.float64, requires_grad=True)
        self.calls: list[tuple[str, float, float]] = []

    def grad_fn(self, name: str, loss_of: Callable[[Tensor, Tensor], Tensor]) -> GradFn:
        def evaluate() -> tuple[float, torch.Tensor]:
            self.calls.append((name, float(self.a.detach()), float(self.b.detach())))
            loss = loss_of(self.a, self.b)
            ga, gb = torch.autograd.grad(loss, [self.a, self.b])
            return float(loss.detach()), torch.stack([ga, gb])

        return evaluate


@pytest.mark.parametrize("form", ["cosine", "projection"])
def test_stage1_gradient_equals_the_formula_by_hand(form: LambdaForm) -> None:
    a, b, rho, eta, lam_ref, ema, lam_prev = 0.3, -0.7, 0.1, 1.2, 0.05, 0.9, 1.5
    model = _TwoParamModel(a, b)
    config = AlignConfig(
        method="antibody", rho=rho, eta=eta, ema=ema, lambda_form=form, lambda_refusal=lam_ref
    )
    result = stage1_gradient(
        [model.a, model.b],
        harmful=model.grad_fn("harmful", lambda x, y: 0.5 * (2 * (x - 1) ** 2 + (y + 1) ** 2)),
        refusal=model.grad_fn("refusal", lambda x, y: 0.5 * ((x - 2) ** 2 + (y - 2) ** 2)),
        align=model.grad_fn("align", lambda x, y: 0.5 * ((x + 1) ** 2 + 3 * y**2)),
        config=config,
        lam_prev=lam_prev,
    )

    g = _hand_gradients(a, b, rho)
    d = (g["g_h"][0] - g["g_p"][0], g["g_h"][1] - g["g_p"][1])
    dot = g["g_a"][0] * d[0] + g["g_a"][1] * d[1]
    if form == "cosine":
        ratio = dot / (math.hypot(*g["g_a"]) * math.hypot(*d))
    else:
        ratio = dot / (d[0] ** 2 + d[1] ** 2)
    lam_raw = max(0.0, eta - ratio)
    lam = ema * lam_prev + (1 - ema) * lam_raw
    expected = [g["g_a"][i] + lam * d[i] + lam_ref * g["g_r"][i] for i in range(2)]

    assert result.lam_raw == pytest.approx(lam_raw, rel=1e-9)
    assert result.lam == pytest.approx(lam, rel=1e-9)
    assert result.grad.tolist() == pytest.approx(expected, rel=1e-9)
    # The four evaluations, in the spec's order and at the right points; theta restored exactly.
    theta_p = (
        a - rho * g["g_h"][0] / (math.hypot(*g["g_h"]) + 1e-7),
        b - rho * g["g_h"][1] / (math.hypot(*g["g_h"]) + 1e-7),
    )
    assert [c[0] for c in model.calls] == ["harmful", "harmful", "refusal", "align"]
    assert model.calls[0][1:] == (a, b)
    assert model.calls[1][1:] == pytest.approx(theta_p, rel=1e-12)
    assert model.calls[2][1:] == pytest.approx(theta_p, rel=1e-12)
    assert model.calls[3][1:] == (a, b)
    assert (float(model.a.detach()), float(model.b.detach())) == (a, b)


def test_booster_is_the_same_path_with_constant_lambda_and_no_refusal() -> None:
    a, b, rho = 0.3, -0.7, 0.1
    model = _TwoParamModel(a, b)
    config = AlignConfig(method="booster", rho=rho, booster_lambda=5.0)
    result = stage1_gradient(
        [model.a, model.b],
        harmful=model.grad_fn("harmful", lambda x, y: 0.5 * (2 * (x - 1) ** 2 + (y + 1) ** 2)),
        refusal=None,
        align=model.grad_fn("align", lambda x, y: 0.5 * ((x + 1) ** 2 + 3 * y**2)),
        config=config,
        lam_prev=None,
    )
    g = _hand_gradients(a, b, rho)
    expected = [g["g_a"][i] + 5.0 * (g["g_h"][i] - g["g_p"][i]) for i in range(2)]
    assert result.grad.tolist() == pytest.approx(expected, rel=1e-9)
    assert [c[0] for c in model.calls] == ["harmful", "harmful", "align"]


def test_perturbed_restores_the_tensors_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=generator), torch.randn(7, generator=generator)]
    before = [p.clone() for p in params]
    delta = torch.randn(22, generator=generator) * 1e-3
    with perturbed(params, delta):
        assert not torch.equal(params[0], before[0])
        torch.testing.assert_close(params[1], before[1] + delta[15:])
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
    # Restored even when the body raises.
    with pytest.raises(RuntimeError), perturbed(params, delta):
        raise RuntimeError("boom")
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
