"""Antibody's per-sample weights (spec §2): the fine-tuning stage's safety signal.

score_i = mean-token log p(y_i | x_i) - mean-token log p(y_r(i) | x_i), where y_i is the user's
completion and y_r(i) the generic refusal assigned to sample i (``defense.refusals``); the
weights are softmax(score / tau) over the samples of the optimizer step, treated as constants
(stop-gradient). An aligned model prefers refusing a harmful prompt, so a harmful sample gets a
low score and a small weight; a completion that is exactly its refusal scores 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def likelihood_ratio_scores(completion_logprob: Tensor, refusal_logprob: Tensor) -> Tensor:
    """[B], [B] -> scores [B] (detached): how much more the model likes the completion."""
    return (completion_logprob - refusal_logprob).detach()


def softmax_weights(scores: Tensor, tau: float) -> Tensor:
    """scores [B] -> weights [B] = softmax(scores / tau), summing to 1, detached."""
    return torch.softmax(scores.detach().double() / tau, dim=0).to(scores.dtype)


def shifted_exp_weights(scores: Tensor, tau: float, shift: float) -> Tensor:
    """scores [B] -> exp(scores / tau - shift) [B], the unnormalised softmax terms.

    With ``shift`` >= max(scores / tau) no term overflows; the softmax of a set of scores is
    these terms divided by their sum for any common shift, which is what lets a step combine
    micro-batches whose terms were computed with different shifts (rescale, then normalise).
    """
    return torch.exp(scores.detach().double() / tau - shift).to(scores.dtype)
