"""The step driver shared by both stages: resume, callbacks, cancellation, checkpoints.

``finetune.fit`` and ``align.align`` build their data and a ``step_fn`` that performs one
optimizer step (their ``train_step``); ``run_steps`` calls it ``total_steps`` times and owns
everything around it:

* resume: load the latest COMPLETE checkpoint (adapter, optimizer, scheduler, RNG states, the
  loop's own state such as data orders, and the running tallies), then continue at the next step;
* after every step: ``on_step(StepMetrics)``; every ``checkpoint_every`` steps and at the end: a
  checkpoint and ``on_checkpoint(CheckpointInfo)``;
* before every step: ``should_stop()``; if it says stop, checkpoint the current state and raise
  ``TrainingStopped``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import PeftModel
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from defense.callbacks import (
    CheckpointInfo,
    FitResult,
    OnCheckpoint,
    OnStep,
    ShouldStop,
    StepMetrics,
    TrainingStopped,
)
from defense.checkpoint import (
    latest_complete_checkpoint,
    load_adapter_weights,
    load_training_state,
    save_checkpoint,
)
from defense.config import LrSchedule
from defense.seed import restore_rng_state, rng_state


@dataclass(frozen=True)
class StepOutput:
    """What one ``train_step`` reports (the driver adds step counts, timing and the LR)."""

    loss: float
    tokens: int
    sample_weights: dict[int, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_optimizer(
    params: Sequence[nn.Parameter], *, learning_rate: float, weight_decay: float
) -> AdamW:
    """AdamW over the LoRA tensors (the released code's ``adamw_torch``)."""
    return AdamW(list(params), lr=learning_rate, weight_decay=weight_decay)


def build_scheduler(
    optimizer: Optimizer, *, total_steps: int, schedule: LrSchedule, warmup_steps: int
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant, linear or cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class Tally:
    """Running totals for ``FitResult``; checkpointed so a resumed run reports the same result."""

    def __init__(self) -> None:
        self.trained_tokens = 0
        self.last_loss = math.nan
        self.last_extra: dict[str, float] = {}
        self.weight_sum: dict[int, float] = {}
        self.relative_sum: dict[int, float] = {}
        self.weight_count: dict[int, int] = {}

    def add(self, out: StepOutput) -> None:
        self.trained_tokens += out.tokens
        self.last_loss = out.loss
        self.last_extra = dict(out.extra)
        size = len(out.sample_weights)
        for index, weight in out.sample_weights.items():
            self.weight_sum[index] = self.weight_sum.get(index, 0.0) + weight
            self.relative_sum[index] = self.relative_sum.get(index, 0.0) + weight * size
            self.weight_count[index] = self.weight_count.get(index, 0) + 1

    def result(self, step: int) -> FitResult:
        count = self.weight_count
        return FitResult(
            step=step,
            loss=self.last_loss,
            sample_weights={i: self.weight_sum[i] / count[i] for i in sorted(count)},
            relative_weights={i: self.relative_sum[i] / count[i] for i in sorted(count)},
            trained_tokens=self.trained_tokens,
            extra=dict(self.last_extra),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "trained_tokens": self.trained_tokens,
            "last_loss": self.last_loss,
            "last_extra": dict(self.last_extra),
            "weight_sum": dict(self.weight_sum),
            "relative_sum": dict(self.relative_sum),
            "weight_count": dict(self.weight_count),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trained_tokens = int(state["trained_tokens"])
        self.last_loss = float(state["last_loss"])
        self.last_extra = {str(k): float(v) for k, v in state["last_extra"].items()}
        self.weight_sum = {int(k): float(v) for k, v in state["weight_sum"].items()}
        self.relative_sum = {int(k): float(v) for k, v in state["relative_sum"].items()}
        self.weight_count = {int(k): int(v) for k, v in state["weight_count"].items()}


def run_steps(
    *,
    model: PeftModel,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    total_steps: int,
    step_fn: Callable[[int], StepOutput],
    epoch_of: Callable[[int], float],
    loop_state: Stateful,
    checkpoint_dir: Path | None,
    resume: bool,
    checkpoint_every: int,
    on_step: OnStep | None,
    on_checkpoint: OnCheckpoint | None,
    should_stop: ShouldStop | None,
    run_identity: dict[str, Any],
) -> FitResult:
    """Run ``step_fn(step)`` for step = first..total_steps-1 (0-based index of the step to run).

    ``epoch_of(n)`` is the fractional epoch after ``n`` steps. ``run_identity`` (the config and
    the data sizes) is stored in every checkpoint; resuming from a checkpoint whose identity
    differs is refused, because the result could not equal an uninterrupted run.
    """
    tally = Tally()
    step = 0
    resumed_at: int | None = None
    latest = latest_complete_checkpoint(checkpoint_dir) if checkpoint_dir and resume else None
    if latest is not None:
        saved = load_training_state(latest)
        changed = sorted(
            key
            for key in run_identity.keys() | saved["run_identity"].keys()
            if run_identity.get(key) != saved["run_identity"].get(key)
        )
        if changed or int(saved["total_steps"]) != total_steps:
            raise ValueError(
                f"checkpoint_dir: {latest} belongs to another run (the data or the configuration "
                f"changed: {', '.join(changed) or 'total_steps'}); resume=False starts over"
            )
        load_adapter_weights(model, latest)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        loop_state.load_state_dict(saved["loop"])
        tally.load_state_dict(saved["tally"])
        restore_rng_state(saved["rng"])
        step = resumed_at = int(saved["step"])

    def checkpoint() -> Path | None:
        if checkpoint_dir is None:
            return None
        metrics = {"epoch": epoch_of(step), "trained_tokens": float(tally.trained_tokens)}
        if step > 0:
            metrics["train_loss"] = tally.last_loss
            metrics.update(tally.last_extra)
        state = {
            "total_steps": total_steps,
            "run_identity": run_identity,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "loop": loop_state.state_dict(),
            "tally": tally.state_dict(),
        }
        path = save_checkpoint(checkpoint_dir, step, model=model, state=state, metrics=metrics)
        if on_checkpoint is not None:
            on_checkpoint(CheckpointInfo(step=step, path=path, metrics=metrics))
        return path

    while step < total_steps:
        if should_stop is not None and should_stop():
            raise TrainingStopped(step, checkpoint())
        learning_rate = float(optimizer.param_groups[0]["lr"])
        started = time.perf_counter()
        out = step_fn(step)
        elapsed = time.perf_counter() - started
        step += 1
        tally.add(out)
        if on_step is not None:
            on_step(
                StepMetrics(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch_of(step),
                    loss=out.loss,
                    tokens=out.tokens,
                    tokens_per_second=out.tokens / elapsed if elapsed > 0 else 0.0,
                    learning_rate=learning_rate,
                    sample_weights=dict(out.sample_weights),
                    extra=dict(out.extra),
                )
            )
        if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
            checkpoint()
    if resumed_at != total_steps:
        checkpoint()
    elif on_checkpoint is not None and latest is not None:
        # Resumed from the final checkpoint itself (the run had finished): report it again.
        on_checkpoint(CheckpointInfo(step=step, path=latest, metrics=_metrics_of(latest)))
    return tally.result(step)


def run_identity(config: object, data_digest: str) -> dict[str, Any]:
    """What must not change between a run and its resume: every config field except
    ``checkpoint_every`` (how often to save does not change the result), and the encoded data
    (``defense.data.digest``)."""
    assert is_dataclass(config) and not isinstance(config, type)
    fields = {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}
    return {**fields, "data": data_digest}


def _metrics_of(path: Path) -> dict[str, float]:
    raw = json.loads((path / "metrics.json").read_text())
    return {str(k): float(v) for k, v in raw.items() if k != "step"}


def move_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}
