"""The math of both stages as pure functions on tensors.

Shapes: B examples, T tokens, V vocabulary, P trainable (LoRA) scalars flattened into one vector.

Loss normalisation (decided here, tested in tests/defense/test_losses.py):

* Stage 1 and plain SFT use the token mean over the whole optimizer step: the sum of the
  completion-token NLLs of every example in the step divided by the number of completion tokens
  in the step. This is Hugging Face's default loss at ``grad_accum=1``; we keep it exact under
  gradient accumulation too (each micro-batch's sum is divided by the step's token count), so
  accumulation equals one big batch.
* Stage 2 (Antibody) uses the token-weighted mean of the released code,
  ``L = sum_i w_i sum_t CE_it / sum_i w_i N_i`` (``weighted_token_loss``): normalised by the
  weighted token count, not by the sum of weights (which is 1) nor by the raw token count. With
  equal weights it is exactly the SFT loss above; with equal lengths it is ``sum_i w_i l_i``,
  the paper's update (the extra ``1/L`` of one paper reading, meaning unknown, is not applied).
  The weights w are a softmax over all examples of the optimizer step
  (every micro-batch); ``defense.finetune.train_step`` shows how that is done with one forward
  per micro-batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from defense.config import LambdaForm
from defense.data import IGNORE_INDEX

# ---------------------------------------------------------------------------------------------
# Token losses (both stages)
# ---------------------------------------------------------------------------------------------


def token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token negative log-likelihood of the next token, 0 where the label is ignored.

    logits [B, T, V] (any float dtype; computed in float32), labels [B, T] -> nll [B, T-1],
    where nll[:, t] scores labels[:, t+1] under logits[:, t] (the causal shift).
    """
    b, t, v = logits.shape
    shifted = logits[:, :-1, :].float().reshape(-1, v)  # [B*(T-1), V]
    targets = labels[:, 1:].reshape(-1)  # [B*(T-1)]
    nll = F.cross_entropy(shifted, targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.view(b, t - 1)  # [B, T-1]


def completion_token_counts(labels: Tensor) -> Tensor:
    """labels [B, T] -> N [B]: the number of scored (completion) tokens of each example."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)  # [B]


def mean_token_logprob(nll: Tensor, counts: Tensor) -> Tensor:
    """nll [B, T-1], counts [B] -> mean log-likelihood per completion token [B].

    Length-normalised (the released code), not the sequence sum of the paper's formula.
    """
    return -nll.sum(dim=1) / counts.clamp_min(1).to(nll.dtype)  # [B]


def weighted_token_loss(nll: Tensor, counts: Tensor, weights: Tensor) -> Tensor:
    """Antibody's weighted loss sum_i w_i sum_t nll_it / sum_i w_i N_i.

    nll [B, T-1], counts [B], weights [B] (constants: pass them detached) -> scalar.
    With equal weights this is the token-mean cross-entropy of the batch.
    """
    per_example = nll.sum(dim=1)  # [B]
    return (weights * per_example).sum() / (weights * counts.to(nll.dtype)).sum()


# ---------------------------------------------------------------------------------------------
# Stage 1: the alignment direction (spec §1.2-1.3), on flat gradient vectors [P]
# ---------------------------------------------------------------------------------------------


def harmful_perturbation(g_h: Tensor, rho: float, eps: float = 1e-7) -> Tensor:
    """delta [P] = -rho * g_h / (||g_h|| + eps): one normalised *descent* step on the harmful
    loss (a simulated harmful fine-tuning step, as in Booster), so theta' = theta + delta."""
    return -rho * g_h / (g_h.norm() + eps)


def adaptive_lambda(
    g_a: Tensor, d: Tensor, *, eta: float, form: LambdaForm, eps: float = 1e-12
) -> float:
    """The raw lambda_t of Antibody from g_a [P] and d = g_h - g_p [P].

    ``cosine`` (released code): max(0, eta - cos(g_a, d)).
    ``projection`` (the paper form per the third-party reading, a_t = eta ||d||^2):
    max(0, eta - <g_a, d> / ||d||^2). ``eps`` keeps both finite when d or g_a is zero.
    """
    a, s = g_a.double(), d.double()
    dot = torch.dot(a, s)
    if form == "cosine":
        ratio = dot / (a.norm() * s.norm() + eps)
    else:
        ratio = dot / (s.norm() ** 2 + eps)
    return max(0.0, eta - float(ratio))


def smoothed_lambda(previous: float | None, raw: float, momentum: float) -> float:
    """EMA of lambda_t: the raw value on the first step, else momentum * prev + (1 - momentum) * raw."""
    if previous is None:
        return raw
    return momentum * previous + (1.0 - momentum) * raw


def alignment_gradient(
    g_a: Tensor, g_h: Tensor, g_p: Tensor, g_r: Tensor | None, lam: float, lambda_refusal: float
) -> Tensor:
    """g [P] = g_a + lam * (g_h - g_p) + lambda_refusal * g_r (g_r = None: no refusal term)."""
    g = g_a + lam * (g_h - g_p)
    if g_r is not None:
        g = g + lambda_refusal * g_r
    return g


# ---------------------------------------------------------------------------------------------
# Lisa: the proximal term (spec §4.3)
# ---------------------------------------------------------------------------------------------


def proximal_penalty(
    params: list[Tensor], anchor: list[Tensor], rho: float
) -> tuple[float, list[Tensor]]:
    """rho/2 * ||w - anchor||^2 and its gradient rho * (w - anchor), per tensor."""
    diffs = [p.detach() - a for p, a in zip(params, anchor, strict=True)]
    value = 0.5 * rho * sum(float(d.double().pow(2).sum()) for d in diffs)
    return value, [rho * d for d in diffs]
