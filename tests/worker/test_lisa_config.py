"""A user job whose defense is Lisa: its cycle counts and proximal coefficient."""

from __future__ import annotations

import pytest

from core.config import Settings
from defense.config import FinetuneConfig
from worker.finetune import scaled_lisa as _scaled_lisa


def test_lisa_jobs_take_the_providers_proximal_coefficient() -> None:
    config = _scaled_lisa(FinetuneConfig(method="lisa", batch_size=4), 40, rho=0.5)
    # 40 examples / 4 = 10 user steps -> 3 cycles of ceil(10 / 3) = 4 user steps, 1 guide step.
    assert (config.lisa_finetune_steps, config.lisa_align_steps) == (4, 1)
    assert config.lisa_rho == 0.5


def test_the_default_lisa_rho_is_the_released_pull_at_our_lora_scale() -> None:
    # Antibody's re-run: 0.01 at alpha / r = 4 / 32; ours is 16 / 8, 16x, and the pull goes as 1/s^2.
    assert Settings.model_fields["lisa_rho"].default == pytest.approx(0.01 * 16**2)
