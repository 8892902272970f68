"""Stage 1: the provider's alignment of a base model. Antibody, Booster, Vaccine and SFT.

Every method is a configuration of one loop; they differ only in how a step's gradient is made:

=========  ===============================================================  ==================
method     gradient written into .grad                                       forward+backward
=========  ===============================================================  ==================
sft        g_a                                                               1
vaccine    g_a at hidden states offset by rho * dL/dh / ||dL/dh|| (§4.2)     2
booster    g_a + lambda (g_h - g_p), constant lambda (§4.1)                  3
antibody   g_a + lambda_t (g_h - g_p) + lambda_ref g_r, adaptive lambda_t    4
=========  ===============================================================  ==================

with g_h = grad L_harm(theta), g_p = grad L_harm(theta'), g_r = grad L_refusal(theta'),
g_a = grad L_align(theta) and theta' = theta - rho g_h / ||g_h|| (spec §1.3). The math lives in
``defense.losses``; ``stage1_gradient`` runs the four gradient evaluations in the order of the
spec (harmful@theta, harmful@theta', refusal@theta', align@theta), perturbing the LoRA tensors in
place and restoring them exactly in between. Gradients are flat vectors [P] over the LoRA tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedTokenizerBase

from defense.callbacks import FitResult, OnCheckpoint, OnStep, ShouldStop
from defense.config import AlignConfig
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
from defense.losses import (
    adaptive_lambda,
    alignment_gradient,
    completion_token_counts,
    harmful_perturbation,
    smoothed_lambda,
    token_nll,
)
from defense.refusals import refusal_for
from defense.seed import STREAM_HARMFUL, STREAM_RETAIN, STREAM_TRAIN, seed_everything

GradFn = Callable[[], tuple[float, Tensor]]
"""Evaluates (loss, flat gradient [P]) at the current values of the trainable tensors."""

Batch = dict[str, Tensor]

# ---------------------------------------------------------------------------------------------
# Flat gradients and the in-place perturbation
# ---------------------------------------------------------------------------------------------


def flat_grad(params: Sequence[Tensor]) -> Tensor:
    """The gradients of ``params`` as one vector [P] (zeros where a tensor has no gradient)."""
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


def write_flat_grad(params: Sequence[Tensor], g: Tensor) -> None:
    """Set each tensor's ``.grad`` from its slice of the flat vector g [P]."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = g[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


@contextmanager
def perturbed(params: Sequence[Tensor], delta: Tensor) -> Iterator[None]:
    """Move the trainable tensors to theta + delta in place, and back *exactly* on exit.

    Subtracting delta again would not give back theta bit for bit in floating point, so the
    LoRA tensors (not the model) are snapshotted and copied back.
    """
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            offset = 0
            for p in params:
                n = p.numel()
                p.add_(delta[offset : offset + n].view_as(p).to(p.dtype))
                offset += n
        yield
    finally:
        with torch.no_grad():
            for p, original in zip(params, saved, strict=True):
                p.copy_(original)


# ---------------------------------------------------------------------------------------------
# The step gradients
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage1Gradient:
    grad: Tensor  # [P]
    align_loss: float
    harmful_loss: float
    perturbed_harmful_loss: float
    refusal_loss: float  # nan without a refusal term
    lam: float
    lam_raw: float


def stage1_gradient(
    params: Sequence[Tensor],
    *,
    harmful: GradFn,
    refusal: GradFn | None,
    align: GradFn,
    config: AlignConfig,
    lam_prev: float | None,
) -> Stage1Gradient:
    """The Antibody (``refusal`` given) or Booster (``refusal=None``) direction for one step.

    Antibody: lambda_t = EMA(max(0, eta - cos(g_a, d))) (or the projection form), with the EMA
    state ``lam_prev`` (None on the first step). Booster: lambda = ``config.booster_lambda``.
    Choices (docs/antibody.md): g_h is computed once (the released code computes it twice, once
    on a deep copy); the refusal term is g_r alone at theta', applied to theta (first order), not
    the commented-out g_r - g_p variant; the caller passes ``refusal=None`` when
    ``lambda_refusal`` is 0, which skips that pass.
    """
    harmful_loss, g_h = harmful()  # pass 1: harmful @ theta
    delta = harmful_perturbation(g_h, config.rho)  # theta' = theta + delta
    refusal_loss, g_r = math.nan, None
    with perturbed(params, delta):
        perturbed_loss, g_p = harmful()  # pass 2: harmful @ theta'
        if refusal is not None:
            refusal_loss, g_r = refusal()  # pass 3: refusal @ theta'
    align_loss, g_a = align()  # pass 4: align @ theta
    if config.method == "antibody":
        lam_raw = adaptive_lambda(g_a, g_h - g_p, eta=config.eta, form=config.lambda_form)
        lam = smoothed_lambda(lam_prev, lam_raw, config.ema)
    else:
        lam_raw = lam = config.booster_lambda
    return Stage1Gradient(
        grad=alignment_gradient(g_a, g_h, g_p, g_r, lam, config.lambda_refusal),
        align_loss=align_loss,
        harmful_loss=harmful_loss,
        perturbed_harmful_loss=perturbed_loss,
        refusal_loss=refusal_loss,
        lam=lam,
        lam_raw=lam_raw,
    )


def loss_and_grad(
    model: nn.Module, params: Sequence[Tensor], micro_batches: Sequence[Batch]
) -> tuple[float, Tensor]:
    """Token-mean CE over all micro-batches (each part divided by the step's token count, so
    accumulation equals one batch) and its flat gradient [P]. One forward+backward per micro-batch."""
    return grouped_loss_and_grad(model, params, [micro_batches])


def grouped_loss_and_grad(
    model: nn.Module, params: Sequence[Tensor], groups: Sequence[Sequence[Batch]]
) -> tuple[float, Tensor]:
    """The sum over ``groups`` of each group's token-mean CE, and its flat gradient [P]: the
    refusal pass with ``perturbed_retain`` is refusals + retain answers, each a token mean, so
    the retain answers' longer completions do not outweigh the short refusals."""
    for p in params:
        p.grad = None
    device = params[0].device
    loss = 0.0
    for micro_batches in groups:
        total = sum(int(completion_token_counts(mb["labels"]).sum()) for mb in micro_batches)
        for micro in micro_batches:
            batch = move_to(micro, device)
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            part = token_nll(logits, batch["labels"]).sum() / total
            part.backward()
            loss += float(part.detach())
    g = flat_grad(params)
    for p in params:
        p.grad = None
    return loss, g


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention blocks whose outputs Vaccine perturbs: modules whose class name ends in
    ``Attention`` (GPT2Attention, LlamaAttention, Qwen2Attention, ...), outermost ones only."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("Attention") and not any(
            name.startswith(outer + ".") for outer, _ in found
        ):
            found.append((name, module))
    if not found:
        raise ValueError("model: vaccine found no attention modules to perturb")
    return [module for _, module in found]


@contextmanager
def offset_attention_outputs(
    layers: Sequence[nn.Module], offset: Callable[[int, Tensor], Tensor]
) -> Iterator[None]:
    """Add ``offset(k, h)`` to the hidden states h [b, T, H] of the k-th attention call of a
    forward (call order = layer order in a decoder)."""
    calls = [0]

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        shifted = hidden + offset(calls[0], hidden)
        calls[0] += 1
        return (shifted, *output[1:]) if isinstance(output, tuple) else shifted

    handles: list[RemovableHandle] = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def vaccine_gradient(
    model: nn.Module, params: Sequence[Tensor], micro_batches: Sequence[Batch], rho: float
) -> tuple[float, Tensor]:
    """Vaccine (spec §4.2): the alignment gradient under the worst hidden-state perturbation.

    Pass 1 takes dL/dh at every attention output through zero "probe" offsets (so no parameter
    gradient is accumulated and layers without trainable tensors below them still get one);
    e_l = rho * g_l / ||(g_1..g_L)|| with the norm over all layers and micro-batches of the step;
    pass 2 adds e_l to the attention outputs and backpropagates into the LoRA tensors.
    """
    layers = attention_modules(model)
    device = params[0].device
    batches = [move_to(mb, device) for mb in micro_batches]
    total = sum(int(completion_token_counts(b["labels"]).sum()) for b in batches)

    hidden_grads: list[list[Tensor]] = []
    for batch in batches:
        probes: list[Tensor] = []

        def probe(k: int, hidden: Tensor, probes: list[Tensor] = probes) -> Tensor:
            probes.append(torch.zeros_like(hidden, requires_grad=True))
            return probes[-1]

        with offset_attention_outputs(layers, probe):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        part = token_nll(logits, batch["labels"]).sum() / total
        grads = torch.autograd.grad(part, probes, allow_unused=True)
        hidden_grads.append(
            [torch.zeros_like(z) if g is None else g for z, g in zip(probes, grads, strict=True)]
        )
    norm = torch.sqrt(
        sum(
            (g.double().pow(2).sum() for gs in hidden_grads for g in gs),
            torch.zeros((), dtype=torch.float64, device=device),
        )
    )
    scale = rho / (float(norm) + 1e-7)

    for p in params:
        p.grad = None
    loss = 0.0
    for batch, grads_of_batch in zip(batches, hidden_grads, strict=True):

        def perturb(k: int, hidden: Tensor, grads: list[Tensor] = grads_of_batch) -> Tensor:
            return (scale * grads[k]).to(hidden.dtype)

        with offset_attention_outputs(layers, perturb):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        part = token_nll(logits, batch["labels"]).sum() / total
        part.backward()
        loss += float(part.detach())
    g = flat_grad(params)
    for p in params:
        p.grad = None
    return loss, g


# ---------------------------------------------------------------------------------------------
# One optimizer step
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignBatch:
    """One step's micro-batches (``collate`` outputs) of the three data views."""

    align: list[Batch]
    harmful: list[Batch]
    refusal: list[Batch]
    retain: list[Batch] = field(default_factory=list)
    """Benign retain examples for the refusal pass at theta' (``perturbed_retain``)."""


def train_step(
    model: nn.Module,
    batch: AlignBatch,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    *,
    params: Sequence[nn.Parameter],
    config: AlignConfig,
    lam_prev: float | None = None,
) -> StepOutput:
    """One optimizer step of ``config.method``; ``extra["lambda"]`` carries Antibody's EMA state.

    The combined gradient is clipped to ``max_grad_norm`` (HF's default 1.0, never overridden by
    the released scripts) before the optimizer step. Booster's harmful batch has the alignment
    batch's size (Antibody's re-run; Booster itself hard-codes 10).
    """
    extra: dict[str, float] = {}
    tokens = sum(int(b["attention_mask"].sum()) for b in batch.align)
    if config.method == "sft":
        loss, g = loss_and_grad(model, params, batch.align)
    elif config.method == "vaccine":
        loss, g = vaccine_gradient(model, params, batch.align, config.vaccine_rho)
    else:
        refusal: GradFn | None = None
        # lambda_refusal = 0 switches the refusal term off, and with it the third pass.
        if config.uses_refusal_term:
            groups = [batch.refusal, batch.retain] if batch.retain else [batch.refusal]
            refusal = lambda: grouped_loss_and_grad(model, params, groups)  # noqa: E731
            tokens += sum(int(b["attention_mask"].sum()) for g in groups for b in g)
        tokens += sum(int(b["attention_mask"].sum()) for b in batch.harmful)
        result = stage1_gradient(
            params,
            harmful=lambda: loss_and_grad(model, params, batch.harmful),
            refusal=refusal,
            align=lambda: loss_and_grad(model, params, batch.align),
            config=config,
            lam_prev=lam_prev,
        )
        loss, g = result.align_loss, result.grad
        extra = {
            "lambda": result.lam,
            "lambda_raw": result.lam_raw,
            "harmful_loss": result.harmful_loss,
            "perturbed_harmful_loss": result.perturbed_harmful_loss,
        }
        if refusal is not None:
            extra["refusal_loss"] = result.refusal_loss
    write_flat_grad(params, g)
    if config.max_grad_norm > 0:
        extra["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    optimizer.step()
    scheduler.step()
    for p in params:
        p.grad = None
    return StepOutput(loss=loss, tokens=tokens, extra=extra)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class _AlignState:
    def __init__(
        self, safe: BatchOrder, harmful: BatchOrder | None, retain: BatchOrder | None = None
    ) -> None:
        self.safe = safe
        self.harmful = harmful
        self.retain = retain
        self.lam: float | None = None

    def state_dict(self) -> dict[str, Any]:
        state = {
            "safe": self.safe.state_dict(),
            "harmful": None if self.harmful is None else self.harmful.state_dict(),
            "lambda": self.lam,
        }
        if self.retain is not None:
            state["retain"] = self.retain.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.safe.load_state_dict(state["safe"])
        if self.harmful is not None:
            self.harmful.load_state_dict(state["harmful"])
        if self.retain is not None:
            self.retain.load_state_dict(state["retain"])
        self.lam = None if state["lambda"] is None else float(state["lambda"])


def total_steps(n_safe: int, config: AlignConfig) -> int:
    """``max_steps`` if set, else ``n_epochs`` passes over the safe data."""
    if config.max_steps is not None:
        return config.max_steps
    return config.n_epochs * math.ceil(n_safe / (config.batch_size * config.grad_accum))


def align(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    safe: Sequence[Example],
    harmful: Sequence[Example],
    config: AlignConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    on_step: OnStep | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    should_stop: ShouldStop | None = None,
    retain: Sequence[Example] = (),
) -> FitResult:
    """Align the LoRA tensors of ``model``.

    ``safe``: harmful prompt -> safe (refusing) answer, the alignment view x_a. ``harmful``: harmful
    prompt -> harmful answer, x_h (needed by antibody and booster; ignored otherwise); the refusal
    view x_r of ``harmful[j]`` is its prompt with ``refusal_for(j)``. The two sets are shuffled
    independently (as the released code's two samplers are), so a step's x_a and x_h are generally
    different prompts. ``retain``: benign request -> helpful answer, drawn by a third stream,
    ``config.perturbed_retain`` per step, into the refusal pass at theta' (ignored unless that
    option is on; the caller's safe set usually holds the same pairs too).
    """
    if not safe:
        raise ValueError("safe: no alignment examples")
    if config.uses_harmful_data and not harmful:
        raise ValueError(f"harmful: {config.method} alignment needs harmful examples")
    if config.uses_perturbed_retain and not retain:
        raise ValueError("retain: perturbed_retain > 0 needs benign retain examples")
    seed_everything(config.seed)
    params = lora_parameters(model)
    pad_id = pad_id_of(tokenizer)
    length = config.max_seq_len
    safe_encoded = [encode_example(tokenizer, ex, length, index=i) for i, ex in enumerate(safe)]
    harmful_encoded: list[EncodedExample] = []
    refusal_encoded: list[EncodedExample] = []
    if config.uses_harmful_data:
        harmful_encoded = [
            encode_example(tokenizer, ex, length, index=i) for i, ex in enumerate(harmful)
        ]
    retain_encoded: list[EncodedExample] = []
    if config.uses_refusal_term:
        refusal_encoded = [
            encode_example(tokenizer, ex, length, completion=refusal_for(i), index=i)
            for i, ex in enumerate(harmful)
        ]
    if config.uses_perturbed_retain:
        retain_encoded = [
            encode_example(tokenizer, ex, length, index=i) for i, ex in enumerate(retain)
        ]

    per_step = config.batch_size * config.grad_accum
    state = _AlignState(
        BatchOrder(len(safe), per_step, seed=config.seed, stream=STREAM_TRAIN),
        BatchOrder(len(harmful), per_step, seed=config.seed, stream=STREAM_HARMFUL)
        if config.uses_harmful_data
        else None,
        BatchOrder(len(retain), config.perturbed_retain, seed=config.seed, stream=STREAM_RETAIN)
        if retain_encoded
        else None,
    )
    n_steps = total_steps(len(safe), config)
    per_epoch = math.ceil(len(safe) / per_step)
    optimizer = build_optimizer(
        params, learning_rate=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=n_steps,
        schedule=config.lr_schedule,
        warmup_steps=config.warmup_steps,
    )

    def collated(indices: list[int], examples: list[EncodedExample]) -> list[Batch]:
        chunks = split_micro_batches(indices, config.batch_size)
        return [collate([examples[i] for i in chunk], pad_id) for chunk in chunks]

    def step_fn(step: int) -> StepOutput:
        harmful_indices = state.harmful.next_batch() if state.harmful is not None else []
        batch = AlignBatch(
            align=collated(state.safe.next_batch(), safe_encoded),
            harmful=collated(harmful_indices, harmful_encoded) if harmful_encoded else [],
            refusal=collated(harmful_indices, refusal_encoded) if refusal_encoded else [],
            retain=collated(state.retain.next_batch(), retain_encoded)
            if state.retain is not None
            else [],
        )
        out = train_step(
            model, batch, optimizer, scheduler, params=params, config=config, lam_prev=state.lam
        )
        if "lambda" in out.extra and config.method == "antibody":
            state.lam = out.extra["lambda"]
        return out

    was_training = model.training
    model.train()
    try:
        return run_steps(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            total_steps=n_steps,
            step_fn=step_fn,
            epoch_of=lambda done: done / per_epoch,
            loop_state=state,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            checkpoint_every=config.checkpoint_every,
            on_step=on_step,
            on_checkpoint=on_checkpoint,
            should_stop=should_stop,
            run_identity=run_identity(
                config,
                # retain only when used, so runs without it keep their earlier identity
                digest(
                    safe_encoded,
                    harmful_encoded,
                    refusal_encoded,
                    *([retain_encoded] if retain_encoded else []),
                ),
            ),
        )
    finally:
        model.train(was_training)
