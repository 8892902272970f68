"""What a training loop tells its caller: per-step records, checkpoints, results, cancellation.

The loops call plain functions (``on_step``, ``on_checkpoint``, ``should_stop``) and know nothing
about who listens; the worker's reporter turns these records into database rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step.

    ``epoch`` is fractional progress through the training data (HF Trainer's convention);
    ``tokens`` counts the non-padding tokens of the sequences this step trained on (the ones
    that carry the gradient; the refusal views scored without gradient are not counted);
    ``sample_weights`` maps a dataset index (the line in the training data) to its Antibody
    weight in this step (the weights of a step sum to 1); it is empty for other methods.
    """

    step: int
    total_steps: int
    epoch: float
    loss: float
    tokens: int
    tokens_per_second: float
    learning_rate: float
    sample_weights: dict[int, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint that is complete on disk (``path/COMPLETE`` exists, ``path/adapter`` loads)."""

    step: int
    path: Path
    metrics: dict[str, float]


@dataclass(frozen=True)
class FitResult:
    """The end of a run.

    ``sample_weights`` is the mean raw weight of each dataset index over the steps that saw it;
    ``relative_weights`` is the mean of ``weight * step batch size`` (1.0 = the batch average),
    which stays comparable when the last batch of an epoch is smaller. Both are empty for
    methods without sample weights. ``trained_tokens`` sums ``StepMetrics.tokens``: every
    sequence trained on, Lisa's guide data and stage 1's harmful and refusal views included.
    """

    step: int
    loss: float
    sample_weights: dict[int, float]
    relative_weights: dict[int, float]
    trained_tokens: int
    extra: dict[str, float] = field(default_factory=dict)


class TrainingStopped(Exception):
    """``should_stop()`` returned True; a checkpoint of the state after ``step`` steps was written
    first (when the loop was given a ``checkpoint_dir``)."""

    def __init__(self, step: int, checkpoint: Path | None = None) -> None:
        super().__init__(f"training stopped at step {step}")
        self.step = step
        self.checkpoint = checkpoint


OnStep = Callable[[StepMetrics], None]
OnCheckpoint = Callable[[CheckpointInfo], None]
ShouldStop = Callable[[], bool]
