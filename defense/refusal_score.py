"""b_i of Antibody's score (spec §2.2): the mean-token log-likelihood of each sample's refusal.

Two ways, same number (tested to float tolerance in tests/defense/test_refusal_score.py):

* ``refusal_logprob_full``: one no-grad forward over the whole refusal view (prompt + refusal).
* ``refusal_logprob_from_cache``: the prompt is the same tokens in both views, so its keys and
  values were already computed by the training forward (the prompt tokens come first and the
  model is causal: their states do not depend on the completion). Only the refusal tokens go
  through the model, attending to the cached prompt positions (the completion positions of the
  cache are masked out) at the right position ids. The first refusal token is predicted by the
  training forward's logits at the last prompt position, so the extra forward is over
  ``len(refusal) - 1`` tokens instead of ``len(prompt) + len(refusal)``. This is what keeps
  Antibody's stage 2 near SFT's step time (``bench/results/overhead.md``).

``refusal_logprob`` (what ``finetune.train_step`` and ``screening.score_examples`` call) takes the
cache path whenever ``shared_prompt_lengths`` says the two views agree and
the cache is a plain full-attention ``DynamicCache`` holding the training forward's positions;
otherwise (a prompt truncated differently in the two views, gradient checkpointing, sliding-window
attention) it falls back to the full forward, so the score is the same number either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from defense.data import IGNORE_INDEX
from defense.losses import completion_token_counts, mean_token_logprob, token_nll


def refusal_logprob(
    model: nn.Module,
    logits: Tensor,
    cache: Cache | None,
    completion: dict[str, Tensor],
    refusal: dict[str, Tensor],
) -> Tensor:
    """b_i [b] = mean log p(refusal | prompt), from the one extra no-grad forward (spec §2.2).

    ``logits`` and ``cache`` are the outputs of the forward on ``completion`` (run with
    ``use_cache=True``). Over the refusal tokens only, on that forward's prompt cache, when both
    views share their prompt tokens (always, unless truncation cut them differently); otherwise
    over the whole refusal view. Either runs in the model's current mode: in training (train
    mode, as the released scoring forwards) the cache path shares the training forward's dropout
    masks on the prompt, as the completion term a_i does.
    """
    lengths = shared_prompt_lengths(completion, refusal)
    if lengths is not None and reusable_cache(cache, completion["input_ids"].shape[1]):
        assert isinstance(cache, DynamicCache)
        return refusal_logprob_from_cache(model, logits, cache, completion, refusal, lengths)
    return refusal_logprob_full(model, refusal)


def refusal_logprob_full(model: nn.Module, refusal: dict[str, Tensor]) -> Tensor:
    """[b]: mean-token log p(refusal | prompt) from one no-grad forward over the refusal view."""
    with torch.no_grad():
        logits = model(
            input_ids=refusal["input_ids"],
            attention_mask=refusal["attention_mask"],
            use_cache=False,
        ).logits
        nll = token_nll(logits, refusal["labels"])  # [b, T_r-1]
        return mean_token_logprob(nll, completion_token_counts(refusal["labels"]))


def prompt_lengths(batch: dict[str, Tensor]) -> Tensor:
    """[b]: the number of prompt tokens of each row (the unlabelled, unpadded positions)."""
    real = batch["attention_mask"].bool()
    return ((batch["labels"] == IGNORE_INDEX) & real).sum(dim=1)


def shared_prompt_lengths(
    completion: dict[str, Tensor], refusal: dict[str, Tensor]
) -> Tensor | None:
    """The prompt length of each row [b] if both views start with the very same prompt tokens
    (at least one each), else ``None``. They differ only when truncation cut the prompt of one
    view and not the other (``encode_example`` keeps the end of a too-long prompt)."""
    lengths = prompt_lengths(completion)
    if not torch.equal(lengths, prompt_lengths(refusal)) or int(lengths.min()) < 1:
        return None
    width = int(lengths.max())
    in_prompt = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]  # [b, W]
    same = completion["input_ids"][:, :width] == refusal["input_ids"][:, :width]
    return lengths if bool((same | ~in_prompt).all()) else None


def reusable_cache(cache: Cache | None, width: int) -> bool:
    """Whether ``cache`` holds every position of the training forward in full-attention layers
    that grow by concatenation (the only kind whose prompt part can be masked in place)."""
    return (
        isinstance(cache, DynamicCache)
        and len(cache.layers) > 0
        and all(type(layer) is DynamicLayer for layer in cache.layers)
        and cache.get_seq_length() == width
    )


def refusal_logprob_from_cache(
    model: nn.Module,
    logits: Tensor,
    cache: DynamicCache,
    completion: dict[str, Tensor],
    refusal: dict[str, Tensor],
    lengths: Tensor,
) -> Tensor:
    """[b]: mean-token log p(refusal | prompt), reusing the training forward's prompt states.

    ``logits`` [b, T, V] and ``cache`` come from the training forward on ``completion``;
    ``lengths`` [b] from ``shared_prompt_lengths``. The cache is extended in place (its earlier
    tensors, which the backward still needs, are not modified): do not reuse it afterwards.
    """
    rows = torch.arange(lengths.shape[0], device=lengths.device)
    n_refusal = refusal["attention_mask"].sum(dim=1) - lengths  # [b], >= 1 (EOS at least)
    longest = int(n_refusal.max())
    offsets = torch.arange(longest, device=lengths.device)  # [R]
    last = refusal["input_ids"].shape[1] - 1
    tokens = refusal["input_ids"].gather(1, (lengths[:, None] + offsets).clamp(max=last))  # [b, R]
    valid = offsets[None, :] < n_refusal[:, None]  # [b, R]

    with torch.no_grad():
        # Token 0 of the refusal: predicted from the last prompt position of the training forward.
        first = logits[rows, lengths - 1].float().log_softmax(dim=-1)[rows, tokens[:, 0]]  # [b]
        total = first
        if longest > 1:
            width = completion["input_ids"].shape[1]
            positions = torch.arange(width, device=lengths.device)[None, :]  # [1, T]
            prompt_only = completion["attention_mask"].bool() & (positions < lengths[:, None])
            inputs = tokens[:, :-1]  # [b, R-1]: the last token predicts nothing we score
            inputs_valid = valid[:, :-1]
            mask = torch.cat([prompt_only, inputs_valid], dim=1).long()  # [b, T + R-1]
            # Padding rows repeat their last real position: no position beyond the view's length.
            steps = torch.minimum(offsets[:-1][None, :], (n_refusal - 1)[:, None])
            out = model(
                input_ids=inputs,
                attention_mask=mask,
                position_ids=lengths[:, None] + steps,
                past_key_values=cache,
                use_cache=True,
            )
            b, r, v = out.logits.shape
            rest = F.cross_entropy(
                out.logits.float().reshape(-1, v), tokens[:, 1:].reshape(-1), reduction="none"
            ).view(b, r)  # [b, R-1]: nll of refusal tokens 1..R-1
            total = total - (rest * valid[:, 1:]).sum(dim=1)
        return total / n_refusal.to(total.dtype)
