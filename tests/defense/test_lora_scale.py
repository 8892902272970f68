"""Released hyper-parameters carried over to another LoRA shape (LoraSettings.translated_*)."""

from __future__ import annotations

import pytest

from defense.config import LoraSettings


def test_the_authors_adapter_keeps_the_released_values() -> None:
    theirs = LoraSettings(r=32, alpha=4)
    assert theirs.translated_radius(0.1) == pytest.approx(0.1)
    assert theirs.translated_proximal(0.01) == pytest.approx(0.01)


def test_a_16x_larger_scale_shrinks_the_radius_16x_and_grows_the_pull_256x() -> None:
    ours = LoraSettings(r=8, alpha=16)
    assert ours.scale == 2
    assert ours.translated_radius(0.1) == pytest.approx(0.1 / 16)
    assert ours.translated_proximal(0.01) == pytest.approx(0.01 * 256)
