"""Scoring examples with a frozen model: upload screening and validation loss.

``score_examples`` is Antibody's sample score (spec §2.2, ``defense.weights``) computed without
training: score_i = mean-token log p(y_i | x_i) - mean-token log p(y_r(i) | x_i), where y_r(i) is
the refusal assigned to dataset index i (``defense.refusals.refusal_for``). It is the very number
``defense.finetune.train_step`` turns into a softmax weight at the first step of a fine-tuning run
on the same model: the same encoding (``encode_example`` with the same index and ``max_seq_len``),
the same per-token NLL (``losses.token_nll``), the same length normalisation
(``losses.mean_token_logprob``, EOS included) and the same difference
(``weights.likelihood_ratio_scores``). So a provider can screen an upload with the signal the
defense will weight it by, before any GPU time is spent.

Choices where the references are silent:

* The model runs in eval mode under ``no_grad``. Training scores in train mode; with the default
  LoRA dropout of 0 (and the tiny/SmolLM2 configs' dropout) both modes give the same logits.
* Batches are sorted by length to waste little on padding; right padding with an attention mask
  does not change a causal model's logits at the real positions, so the score of an example does
  not depend on its batch (up to float rounding, tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from defense.data import EncodedExample, Example, collate, encode_example, pad_id_of
from defense.loop import move_to
from defense.losses import completion_token_counts, mean_token_logprob, token_nll
from defense.progress import tick
from defense.refusal_score import refusal_logprob
from defense.refusals import refusal_for
from defense.weights import likelihood_ratio_scores

DEFAULT_BATCH_SIZE = 8


@contextmanager
def _scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the block; the model's previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (little padding), shortest first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def completion_logprobs(
    model: nn.Module,
    encoded: Sequence[EncodedExample],
    *,
    pad_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[Tensor, Tensor]:
    """Mean-token log-likelihood of each example's labelled (completion) tokens, and their count.

    encoded: N examples -> (logprob [N] float32, counts [N] long), in input order, on the CPU.
    The model is put in eval mode for the call and its previous mode restored.
    """
    batches = _length_sorted_batches([len(e.input_ids) for e in encoded], batch_size)
    logprob = torch.zeros(len(encoded), dtype=torch.float32)  # [N]
    counts = torch.zeros(len(encoded), dtype=torch.long)  # [N]
    device = next(model.parameters()).device
    with _scoring_mode(model):
        for rows in batches:
            tick()
            batch = move_to(collate([encoded[i] for i in rows], pad_id), device)
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits  # [b, T, V]
            n = completion_token_counts(batch["labels"])  # [b]
            index = torch.tensor(rows, dtype=torch.long)
            logprob[index] = mean_token_logprob(token_nll(logits, batch["labels"]), n).float().cpu()
            counts[index] = n.cpu()
    return logprob, counts


def score_examples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_seq_len: int = 256,
    first_index: int = 0,
) -> list[float]:
    """Antibody's likelihood-ratio score of every example (dataset index = ``first_index`` +
    position, so a long dataset can be scored in consecutive slices with the same result).

    Negative: the model prefers refusing the prompt to giving this completion (what a pre-aligned
    model says of a harmful sample); a completion equal to its assigned refusal scores 0.
    Per batch: one forward on (prompt + completion) and one over the refusal tokens on its prompt
    cache (``defense.refusal_score.refusal_logprob``), as in training.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not examples:
        return []
    pad_id = pad_id_of(tokenizer)
    completions = [
        encode_example(tokenizer, ex, max_seq_len, index=i)
        for i, ex in enumerate(examples, start=first_index)
    ]
    refusals = [
        encode_example(tokenizer, ex, max_seq_len, completion=refusal_for(i), index=i)
        for i, ex in enumerate(examples, start=first_index)
    ]
    batches = _length_sorted_batches([len(c.input_ids) for c in completions], batch_size)
    scores = torch.zeros(len(examples), dtype=torch.float32)  # [N]
    device = next(model.parameters()).device
    with _scoring_mode(model):
        for rows in batches:
            tick()
            completion = move_to(collate([completions[i] for i in rows], pad_id), device)
            refusal = move_to(collate([refusals[i] for i in rows], pad_id), device)
            out = model(
                input_ids=completion["input_ids"],
                attention_mask=completion["attention_mask"],
                use_cache=True,
            )
            labels = completion["labels"]
            completion_lp = mean_token_logprob(
                token_nll(out.logits, labels), completion_token_counts(labels)
            )
            refusal_lp = refusal_logprob(
                model, out.logits, out.past_key_values, completion, refusal
            )
            index = torch.tensor(rows, dtype=torch.long)
            scores[index] = likelihood_ratio_scores(completion_lp, refusal_lp).float().cpu()
    return [float(s) for s in scores]


def mean_token_nll(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_seq_len: int = 256,
) -> float:
    """Token-mean NLL of the completions of ``examples`` (a validation loss): the sum of every
    completion token's NLL over the number of completion tokens, EOS included, as in training."""
    if not examples:
        raise ValueError("examples: nothing to evaluate")
    encoded = [encode_example(tokenizer, ex, max_seq_len, index=i) for i, ex in enumerate(examples)]
    logprob, counts = completion_logprobs(
        model, encoded, pad_id=pad_id_of(tokenizer), batch_size=batch_size
    )
    total = counts.sum().clamp_min(1).double()
    return float(-(logprob.double() * counts.double()).sum() / total)
