"""Stage 2: a user's fine-tuning job. Antibody weighting, plain SFT and Lisa share one loop.

* ``antibody`` (spec §2): every user example is weighted by softmax(score / tau) over the step,
  score = mean-token log-likelihood of its completion minus that of its assigned refusal.
* ``sft``: the same loss with uniform weights (the token-mean cross-entropy).
* ``lisa`` (spec §4.3): cycles of ``lisa_align_steps`` steps on the guide (safety) data and
  ``lisa_finetune_steps`` steps on the user data, uniform weights, plus a proximal pull towards
  the weights the other state reached when it last ended.

Compute per micro-batch: one forward+backward on (prompt + completion) and, for ``antibody`` only,
one no-grad forward over the refusal tokens, which attend to the prompt's keys and values kept
from the training forward (``defense.refusal_score``). The completion log-likelihood comes
(detached) from the training forward itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftModel
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedTokenizerBase

from defense.callbacks import FitResult, OnCheckpoint, OnStep, ShouldStop
from defense.config import FinetuneConfig
from defense.data import (
    BatchOrder,
    EncodedExample,
    Example,
    collate,
    digest,
    encode_example,
    pad_id_of,
    split_micro_batches,
)
from defense.loop import (
    StepOutput,
    build_optimizer,
    build_scheduler,
    move_to,
    run_identity,
    run_steps,
)
from defense.lora import lora_parameters
from defense.losses import completion_token_counts, mean_token_logprob, proximal_penalty, token_nll
from defense.refusal_score import refusal_logprob
from defense.refusals import refusal_for
from defense.seed import STREAM_GUIDE, STREAM_TRAIN, seed_everything
from defense.weights import likelihood_ratio_scores, shifted_exp_weights, softmax_weights

Phase = Literal["guide", "user"]


@dataclass(frozen=True)
class MicroBatch:
    """``collate`` outputs: the (prompt + completion) batch and, for Antibody, the same prompts
    with their assigned refusals (``None``: uniform weights, no extra forward)."""

    completion: dict[str, Tensor]
    refusal: dict[str, Tensor] | None = None


@dataclass(frozen=True)
class Proximal:
    """Lisa's proximal term rho/2 * ||w - anchor||^2 for one step."""

    anchor: list[Tensor]
    rho: float


# ---------------------------------------------------------------------------------------------
# One optimizer step
# ---------------------------------------------------------------------------------------------


def train_step(
    model: nn.Module,
    micro_batches: Sequence[MicroBatch],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    *,
    params: Sequence[nn.Parameter],
    tau: float | None,
    max_grad_norm: float,
    proximal: Proximal | None = None,
) -> StepOutput:
    """One optimizer step of loss sum_i w_i sum_t CE_it / sum_i w_i N_i over all micro-batches.

    ``tau=None`` means uniform weights (SFT, Lisa). Otherwise w = softmax(score / tau) over every
    example of the step, not per micro-batch (a choice: the released code never accumulates).
    That softmax needs every score before any weight is known, yet each micro-batch's graph must
    be freed after its backward. So each micro-batch backpropagates its *unnormalised* terms
    exp(score / tau - shift) * sum_t CE_it with a running shift (the largest score / tau so far);
    when a later micro-batch raises the shift, the gradient accumulated so far is rescaled by
    exp(old - new); at the end the gradient is divided by sum_i exp(score_i / tau - shift) N_i.
    This is the online softmax: the result equals one big batch, with one forward per
    micro-batch, and grad_accum is only a memory knob.
    """
    device = params[0].device
    for p in params:
        p.grad = None
    shift = -math.inf
    numerator = torch.zeros((), dtype=torch.float64, device=device)  # sum_i e_i sum_t CE_it
    denominator = torch.zeros((), dtype=torch.float64, device=device)  # sum_i e_i N_i
    scores: list[Tensor] = []
    indices: list[Tensor] = []
    tokens = 0
    temperature = 1.0 if tau is None else tau
    for micro in micro_batches:
        batch = move_to(micro.completion, device)
        # Antibody keeps the forward's key/value cache: the refusal score reuses its prompt part.
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            use_cache=tau is not None,
        )
        logits = out.logits
        nll = token_nll(logits, batch["labels"])  # [b, T-1]
        counts = completion_token_counts(batch["labels"])  # [b]
        if tau is None:
            score = torch.zeros(nll.shape[0], dtype=nll.dtype, device=device)  # [b]
        else:
            if micro.refusal is None:
                raise ValueError("antibody weighting needs the refusal view of every micro-batch")
            refusal = move_to(micro.refusal, device)
            score = likelihood_ratio_scores(
                mean_token_logprob(nll.detach(), counts),
                refusal_logprob(model, logits, out.past_key_values, batch, refusal),
            )  # [b]
        del out  # the cache: the backward keeps what it needs
        new_shift = max(shift, float((score / temperature).max()))
        if new_shift > shift and scores:
            factor = math.exp(shift - new_shift)
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(factor)
            numerator, denominator = numerator * factor, denominator * factor
        shift = new_shift
        terms = shifted_exp_weights(score, temperature, shift)  # [b], detached
        part = (terms * nll.sum(dim=1)).sum()
        part.backward()
        numerator = numerator + part.detach().double()
        denominator = denominator + (terms.double() * counts.double()).sum()
        scores.append(score)
        indices.append(batch["index"])
        tokens += int(batch["attention_mask"].sum())
    for p in params:
        if p.grad is not None:
            p.grad.div_(denominator.to(p.grad.dtype))
    loss = float(numerator / denominator)

    extra: dict[str, float] = {}
    if proximal is not None and proximal.rho > 0:
        value, grads = proximal_penalty(list(params), proximal.anchor, proximal.rho)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone() if p.grad is None else p.grad.add_(g)
        extra["proximal"] = value
    if max_grad_norm > 0:
        extra["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    scheduler.step()
    for p in params:
        p.grad = None

    sample_weights: dict[int, float] = {}
    if tau is not None:
        weights = softmax_weights(torch.cat(scores), tau)  # [B_step]
        sample_weights = dict(zip(torch.cat(indices).tolist(), weights.tolist(), strict=True))
    return StepOutput(loss=loss, tokens=tokens, sample_weights=sample_weights, extra=extra)


# ---------------------------------------------------------------------------------------------
# Step plan (Lisa's alternation) and the loop state
# ---------------------------------------------------------------------------------------------


def user_steps_per_epoch(n_train: int, config: FinetuneConfig) -> int:
    return math.ceil(n_train / (config.batch_size * config.grad_accum))


def total_steps(n_train: int, config: FinetuneConfig) -> int:
    """Optimizer steps of a run: every user batch of every epoch, plus Lisa's guide steps.

    Lisa inserts its guide steps (the released Lisa trainer instead replaces user batches with
    guide batches; we never drop a user's data). The run ends after the last user step.
    """
    user = config.n_epochs * user_steps_per_epoch(n_train, config)
    if config.method != "lisa" or config.lisa_align_steps == 0:
        return user
    full, rest = divmod(user, config.lisa_finetune_steps)
    cycle = config.lisa_align_steps + config.lisa_finetune_steps
    return full * cycle + (config.lisa_align_steps + rest if rest else 0)


def lisa_phase(step: int, config: FinetuneConfig) -> Phase:
    """Which data 0-based ``step`` trains on: each cycle starts with the guide (alignment) state."""
    if config.method != "lisa":
        return "user"
    cycle = config.lisa_align_steps + config.lisa_finetune_steps
    return "guide" if step % cycle < config.lisa_align_steps else "user"


def user_steps_before(step: int, config: FinetuneConfig) -> int:
    """How many user-data steps come before 0-based ``step``."""
    if config.method != "lisa":
        return step
    cycle = config.lisa_align_steps + config.lisa_finetune_steps
    full, rest = divmod(step, cycle)
    return full * config.lisa_finetune_steps + max(0, rest - config.lisa_align_steps)


class _FinetuneState:
    """Data orders and Lisa's anchors: everything beyond weights/optimizer a resume needs."""

    def __init__(
        self, train: BatchOrder, guide: BatchOrder | None, params: Sequence[nn.Parameter]
    ) -> None:
        self.train = train
        self.guide = guide
        # Lisa: both anchors start at the initial weights (as the Lisa trainer does).
        self.alignment_anchor = [p.detach().clone() for p in params]
        self.finetune_anchor = [p.detach().clone() for p in params]

    def state_dict(self) -> dict[str, Any]:
        return {
            "train": self.train.state_dict(),
            "guide": None if self.guide is None else self.guide.state_dict(),
            "alignment_anchor": [a.cpu() for a in self.alignment_anchor],
            "finetune_anchor": [a.cpu() for a in self.finetune_anchor],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train.load_state_dict(state["train"])
        if self.guide is not None:
            self.guide.load_state_dict(state["guide"])
        device = self.alignment_anchor[0].device
        self.alignment_anchor = [a.to(device) for a in state["alignment_anchor"]]
        self.finetune_anchor = [a.to(device) for a in state["finetune_anchor"]]


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def fit(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    config: FinetuneConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    on_step: OnStep | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    should_stop: ShouldStop | None = None,
    guide: Sequence[Example] = (),
) -> FitResult:
    """Fine-tune the LoRA tensors of ``model`` on ``train`` (dataset index = position in ``train``).

    Seeds Python and torch from ``config.seed`` (the adapter's initialisation is the caller's:
    ``attach_lora(..., seed=...)``), trains in train mode and restores the model's mode after.
    Raises ``TrainingStopped`` when ``should_stop()`` says so (after checkpointing).
    """
    if not train:
        raise ValueError("train: no examples")
    uses_guide = config.method == "lisa" and config.lisa_align_steps > 0
    if uses_guide and not guide:
        raise ValueError("guide: lisa needs guide (alignment) examples when lisa_align_steps > 0")
    seed_everything(config.seed)
    params = lora_parameters(model)
    pad_id = pad_id_of(tokenizer)
    length = config.max_seq_len
    encoded = [encode_example(tokenizer, ex, length, index=i) for i, ex in enumerate(train)]
    refusals: list[EncodedExample] | None = None
    if config.method == "antibody":
        refusals = [
            encode_example(tokenizer, ex, length, completion=refusal_for(i), index=i)
            for i, ex in enumerate(train)
        ]
    guide_encoded = [encode_example(tokenizer, ex, length, index=i) for i, ex in enumerate(guide)]

    per_step = config.batch_size * config.grad_accum
    state = _FinetuneState(
        BatchOrder(len(train), per_step, seed=config.seed, stream=STREAM_TRAIN),
        BatchOrder(len(guide), per_step, seed=config.seed, stream=STREAM_GUIDE)
        if uses_guide
        else None,
        params,
    )
    n_steps = total_steps(len(train), config)
    per_epoch = user_steps_per_epoch(len(train), config)
    optimizer = build_optimizer(
        params, learning_rate=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=n_steps,
        schedule=config.lr_schedule,
        warmup_steps=config.warmup_steps,
    )

    def micro_batches(
        indices: list[int], examples: list[EncodedExample], views: list[EncodedExample] | None
    ) -> list[MicroBatch]:
        return [
            MicroBatch(
                completion=collate([examples[i] for i in chunk], pad_id),
                refusal=None if views is None else collate([views[i] for i in chunk], pad_id),
            )
            for chunk in split_micro_batches(indices, config.batch_size)
        ]

    def step_fn(step: int) -> StepOutput:
        phase = lisa_phase(step, config)
        proximal = _lisa_proximal(step, phase, n_steps, config, state, params)
        if phase == "guide":
            assert state.guide is not None
            batches = micro_batches(state.guide.next_batch(), guide_encoded, None)
            out = train_step(
                model,
                batches,
                optimizer,
                scheduler,
                params=params,
                tau=None,
                max_grad_norm=config.max_grad_norm,
                proximal=proximal,
            )
            return StepOutput(out.loss, out.tokens, {}, {**out.extra, "lisa_guide": 1.0})
        batches = micro_batches(state.train.next_batch(), encoded, refusals)
        tau = config.tau if config.method == "antibody" else None
        return train_step(
            model,
            batches,
            optimizer,
            scheduler,
            params=params,
            tau=tau,
            max_grad_norm=config.max_grad_norm,
            proximal=proximal,
        )

    was_training = model.training
    model.train()
    try:
        return run_steps(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            total_steps=n_steps,
            step_fn=step_fn,
            epoch_of=lambda done: user_steps_before(done, config) / per_epoch,
            loop_state=state,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            checkpoint_every=config.checkpoint_every,
            on_step=on_step,
            on_checkpoint=on_checkpoint,
            should_stop=should_stop,
            run_identity=run_identity(config, digest(encoded, refusals or [], guide_encoded)),
        )
    finally:
        model.train(was_training)


def _lisa_proximal(
    step: int,
    phase: Phase,
    n_steps: int,
    config: FinetuneConfig,
    state: _FinetuneState,
    params: Sequence[nn.Parameter],
) -> Proximal | None:
    """Lisa's state switch and proximal term for 0-based ``step``.

    When the state changes, the weights reached at the end of the state just finished become
    that state's anchor; guide steps are pulled towards the fine-tuning anchor and user steps
    towards the alignment anchor, once more than ``lisa_proximal_after`` of the run is done.
    """
    if config.method != "lisa":
        return None
    if step > 0 and lisa_phase(step - 1, config) != phase:
        snapshot = [p.detach().clone() for p in params]
        if phase == "user":
            state.alignment_anchor = snapshot
        else:
            state.finetune_anchor = snapshot
    if config.lisa_rho == 0 or step <= config.lisa_proximal_after * n_steps:
        return None
    anchor = state.finetune_anchor if phase == "guide" else state.alignment_anchor
    return Proximal(anchor=anchor, rho=config.lisa_rho)
