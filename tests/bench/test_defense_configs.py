"""bench/defense.py's stage-1 configs: which method gets which perturbation radius."""

from __future__ import annotations

from typing import Any

import pytest

from bench.defense import LORA, AntibodyParams, Sizes, align_config, cell_minutes


def test_the_released_rho_is_translated_to_our_lora_scale() -> None:
    # The authors' rho = 0.1 goes with alpha / r = 4 / 32; ours is 16 / 8: a 16x larger update.
    assert (LORA.r, LORA.alpha) == (8, 16)
    booster = align_config("booster", Sizes(), AntibodyParams())
    assert booster.rho == pytest.approx(0.1 * (4 / 32) / (16 / 8)) == 0.00625


def test_antibody_takes_its_own_rho_and_the_others_the_defaults() -> None:
    antibody = align_config("antibody", Sizes(), AntibodyParams(rho=0.02))
    assert antibody.rho == 0.02
    vaccine = align_config("vaccine", Sizes(), AntibodyParams(rho=0.02))
    assert vaccine.vaccine_rho == 5.0  # a hidden-state radius: no LoRA scale to translate


def test_the_table_cost_counts_each_model_once() -> None:
    rows: list[dict[str, Any]] = [
        {"method": "base", "stage": "base", "train_seconds": None, "eval_seconds": 30},
        {"method": "sft", "stage": "aligned", "train_seconds": 120, "eval_seconds": 60},
        {"method": "lisa", "stage": "aligned", "train_seconds": 120, "eval_seconds": 60},
        {"method": "lisa", "stage": "finetuned", "train_seconds": 50, "eval_seconds": 40},
    ]
    assert cell_minutes(rows) == (30 + 180 + 90) / 60  # Lisa's aligned row is SFT's model
