"""Frozen, validated configurations for the training loops of ``defense``.

Every field is checked in ``__post_init__``; a bad value raises ``ValueError`` whose message
starts with the field's name, so the worker can hand it to the user unchanged. Defaults follow
the released Antibody scripts (docs/antibody.md lists where the spec leaves a choice open).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinetuneMethod = Literal["sft", "antibody", "lisa"]
AlignMethod = Literal["sft", "antibody", "booster", "vaccine"]
LambdaForm = Literal["cosine", "projection"]
LrSchedule = Literal["constant", "linear", "cosine"]

_FINETUNE_METHODS = ("sft", "antibody", "lisa")
_ALIGN_METHODS = ("sft", "antibody", "booster", "vaccine")
_LAMBDA_FORMS = ("cosine", "projection")
_LR_SCHEDULES = ("constant", "linear", "cosine")


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _non_negative_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


RELEASED_LORA_SCALE = 4 / 32
"""The authors' adapter (r = 32, alpha = 4): the scale their released hyper-parameters go with."""


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter that carries every trainable parameter.

    ``target_modules=None`` picks by architecture (``defense.lora.default_target_modules``):
    GPT-2 ``c_attn``, Llama-like models ``q_proj, k_proj, v_proj`` (the released Antibody code).
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _positive_int("r", self.r)
        _positive("alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None:
            if not self.target_modules or not all(
                isinstance(m, str) and m for m in self.target_modules
            ):
                raise ValueError(
                    f"target_modules must be None or a non-empty tuple of module names, "
                    f"got {self.target_modules!r}"
                )

    @property
    def scale(self) -> float:
        """``alpha / r``: the factor on the adapter's update ``B A``."""
        return self.alpha / self.r

    def translated_radius(self, released: float) -> float:
        """A released perturbation radius (Antibody's and Booster's rho) on this adapter: a step
        of length rho moves the layer's weights by about ``scale * rho``, so that product is kept
        (docs/antibody.md, item 2)."""
        return released * RELEASED_LORA_SCALE / self.scale

    def translated_proximal(self, released: float) -> float:
        """A released proximal coefficient (Lisa's rho) on this adapter: the pull's share of the
        gradient goes as ``rho / scale**2``, so that ratio is kept (docs/antibody.md, item 16)."""
        return released * (self.scale / RELEASED_LORA_SCALE) ** 2


@dataclass(frozen=True)
class FinetuneConfig:
    """Stage 2: a user's fine-tuning job (Antibody weighting, plain SFT, or Lisa).

    Batching follows the Hugging Face convention: ``batch_size`` examples per forward pass
    (micro-batch), ``grad_accum`` micro-batches per optimizer step, so one step sees
    ``batch_size * grad_accum`` examples. For ``antibody`` the softmax of the sample weights runs
    over all of them (see ``defense.finetune.train_step``), which makes ``grad_accum`` a pure
    memory knob: 2 micro-batches of 2 give the same step as 1 of 4.
    """

    method: FinetuneMethod = "antibody"
    n_epochs: int = 1
    batch_size: int = 4
    learning_rate: float = 1e-4
    seed: int = 0
    max_seq_len: int = 256
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    """Clip the global gradient norm (of the LoRA tensors) to this; 0 disables clipping."""
    weight_decay: float = 0.0
    lr_schedule: LrSchedule = "constant"
    warmup_steps: int = 0
    checkpoint_every: int = 0
    """Write a checkpoint every this many optimizer steps; 0 = only the final one."""
    tau: float = 1.0
    """Softmax temperature of the Antibody sample weights (spec §2.1)."""
    lisa_align_steps: int = 100
    """Lisa: guide-data steps per cycle (the alignment state)."""
    lisa_finetune_steps: int = 900
    """Lisa: user-data steps per cycle (the fine-tuning state)."""
    lisa_rho: float = 0.01
    """Lisa: proximal coefficient, loss += rho/2 * ||w - anchor||^2 (Antibody's re-run: 0.01)."""
    lisa_proximal_after: float = 0.1
    """Lisa: the proximal term is active only after this fraction of all steps (Lisa code)."""

    def __post_init__(self) -> None:
        _choice("method", self.method, _FINETUNE_METHODS)
        _positive_int("n_epochs", self.n_epochs)
        _positive_int("batch_size", self.batch_size)
        _positive("learning_rate", self.learning_rate)
        _non_negative_int("seed", self.seed)
        _positive_int("max_seq_len", self.max_seq_len)
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {self.max_seq_len!r}")
        _positive_int("grad_accum", self.grad_accum)
        _non_negative("max_grad_norm", self.max_grad_norm)
        _non_negative("weight_decay", self.weight_decay)
        _choice("lr_schedule", self.lr_schedule, _LR_SCHEDULES)
        _non_negative_int("warmup_steps", self.warmup_steps)
        _non_negative_int("checkpoint_every", self.checkpoint_every)
        _positive("tau", self.tau)
        _non_negative_int("lisa_align_steps", self.lisa_align_steps)
        _positive_int("lisa_finetune_steps", self.lisa_finetune_steps)
        _non_negative("lisa_rho", self.lisa_rho)
        if not 0.0 <= self.lisa_proximal_after <= 1.0:
            raise ValueError(
                f"lisa_proximal_after must be in [0, 1], got {self.lisa_proximal_after!r}"
            )


@dataclass(frozen=True)
class AlignConfig:
    """Stage 1: the provider's alignment of a base model (Antibody, Booster, Vaccine or SFT).

    One epoch is one pass over the safe (alignment) data; the harmful data is drawn by its own
    shuffled stream, as in the released code. ``max_steps`` (if set) replaces the epoch count.
    Batching is as in ``FinetuneConfig``: ``batch_size`` per micro-batch, ``grad_accum``
    micro-batches per step, and every gradient of the step is taken over the whole step batch.
    """

    method: AlignMethod = "antibody"
    n_epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.1
    seed: int = 0
    max_seq_len: int = 256
    max_grad_norm: float = 1.0
    lr_schedule: LrSchedule = "constant"
    warmup_steps: int = 0
    checkpoint_every: int = 0
    rho: float = 0.1
    """Radius of the simulated harmful step theta' = theta - rho * g_h / ||g_h|| (Antibody, Booster)."""
    eta: float = 5.0
    """Antibody: threshold of the adaptive lambda_t (released ``--eta_lbd``)."""
    ema: float = 0.99
    """Antibody: EMA momentum of lambda_t; 0 uses the raw value every step."""
    lambda_form: LambdaForm = "cosine"
    """Antibody: ``cosine`` max(0, eta - cos(g_a, d)) as released, or ``projection``
    max(0, eta - <g_a, d> / ||d||^2) (the paper form read by the third-party re-implementation)."""
    lambda_refusal: float = 0.05
    """Antibody: weight of the refusal loss at the perturbed point (released ``--lambda2``)."""
    perturbed_retain: int = 0
    """Antibody, a project option (0 = the released refusal term): benign retain examples (the
    ``retain`` argument of ``defense.align.align``) added to the refusal view at theta' each step,
    so the simulated harmful step is asked to keep answering benign requests as well as to keep
    refusing harmful ones. g_r becomes grad [L_refusal(theta') + L_retain(theta')], each a token
    mean over its own examples, and both carry lambda_refusal (docs/antibody.md)."""
    booster_lambda: float = 5.0
    """Booster: the constant lambda."""
    vaccine_rho: float = 5.0
    """Vaccine: hidden-state perturbation radius (Antibody's re-run uses 5; Vaccine's README 2)."""

    def __post_init__(self) -> None:
        _choice("method", self.method, _ALIGN_METHODS)
        _positive_int("n_epochs", self.n_epochs)
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        _positive_int("batch_size", self.batch_size)
        _positive_int("grad_accum", self.grad_accum)
        _positive("learning_rate", self.learning_rate)
        _non_negative("weight_decay", self.weight_decay)
        _non_negative_int("seed", self.seed)
        _positive_int("max_seq_len", self.max_seq_len)
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {self.max_seq_len!r}")
        _non_negative("max_grad_norm", self.max_grad_norm)
        _choice("lr_schedule", self.lr_schedule, _LR_SCHEDULES)
        _non_negative_int("warmup_steps", self.warmup_steps)
        _non_negative_int("checkpoint_every", self.checkpoint_every)
        _non_negative("rho", self.rho)
        _non_negative("eta", self.eta)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema!r}")
        _choice("lambda_form", self.lambda_form, _LAMBDA_FORMS)
        _non_negative("lambda_refusal", self.lambda_refusal)
        _non_negative_int("perturbed_retain", self.perturbed_retain)
        _non_negative("booster_lambda", self.booster_lambda)
        _non_negative("vaccine_rho", self.vaccine_rho)

    @property
    def uses_harmful_data(self) -> bool:
        """Antibody and Booster need harmful (prompt, harmful answer) pairs; SFT and Vaccine do not."""
        return self.method in ("antibody", "booster")

    @property
    def uses_refusal_term(self) -> bool:
        """Antibody with lambda_refusal > 0: the refusal pass at theta' runs."""
        return self.method == "antibody" and self.lambda_refusal > 0

    @property
    def uses_perturbed_retain(self) -> bool:
        """The refusal pass also takes ``perturbed_retain`` benign retain examples."""
        return self.uses_refusal_term and self.perturbed_retain > 0
