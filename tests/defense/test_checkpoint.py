"""Checkpoints: atomic layout, loadable adapters, cancellation, and bit-for-bit resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import torch
from peft import PeftModel
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from defense.align import align
from defense.callbacks import CheckpointInfo, FitResult, TrainingStopped
from defense.checkpoint import (
    COMPLETE,
    latest_complete_checkpoint,
    load_training_state,
    save_checkpoint,
)
from defense.config import AlignConfig, FinetuneConfig, LoraSettings
from defense.data import Example
from defense.finetune import fit


def _lora(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_latest_complete_checkpoint_ignores_partial_ones(tmp_path: Path, gpt2: PeftModel) -> None:
    assert latest_complete_checkpoint(tmp_path / "missing") is None
    save_checkpoint(tmp_path, 2, model=gpt2, state={"x": 1}, metrics={"train_loss": 1.0})
    save_checkpoint(tmp_path, 10, model=gpt2, state={"x": 2}, metrics={})
    (tmp_path / "step-000020").mkdir()  # a copy that never finished: no COMPLETE marker
    (tmp_path / ".tmp-step-000030-abc").mkdir()
    latest = latest_complete_checkpoint(tmp_path)
    assert latest == tmp_path / "step-000010"
    assert (latest / COMPLETE).is_file()
    assert load_training_state(latest)["x"] == 2
    with pytest.raises(ValueError):
        load_training_state(tmp_path / "step-000020")
    # Written again for the same step: replaced, and no temporary directory is left behind.
    save_checkpoint(tmp_path, 10, model=gpt2, state={"x": 3}, metrics={})
    assert load_training_state(tmp_path / "step-000010")["x"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".tmp-step-000030-abc",
        "step-000002",
        "step-000010",
        "step-000020",
    ]


def test_checkpoint_adapter_loads_with_peft(
    tmp_path: Path,
    gpt2: PeftModel,
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
) -> None:
    infos: list[CheckpointInfo] = []
    config = FinetuneConfig(batch_size=4, checkpoint_every=1, learning_rate=1e-2)
    fit(gpt2, tokenizer, user_examples, config, checkpoint_dir=tmp_path, on_checkpoint=infos.append)
    assert [i.step for i in infos] == [1, 2]
    assert infos[-1].path == tmp_path / "step-000002"
    assert {"train_loss", "epoch", "trained_tokens"} <= infos[-1].metrics.keys()
    base = GPT2LMHeadModel(cast(GPT2Config, gpt2.get_base_model().config))
    loaded = PeftModel.from_pretrained(base, str(infos[-1].path / "adapter"))
    trained = _lora(gpt2)
    for name, tensor in _lora(loaded).items():
        assert torch.equal(tensor, trained[name]), name


def _scrambled(model: PeftModel) -> PeftModel:
    """A fresh process's model: same base weights, different adapter values."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(1.0)
    return model


def _stop_after(n: int) -> Callable[[], bool]:
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] > n

    return should_stop


@pytest.mark.parametrize("method", ["antibody", "lisa"])
def test_finetune_resume_is_bit_for_bit(
    tmp_path: Path,
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
    safe_examples: list[Example],
    method: str,
) -> None:
    # LoRA dropout draws random numbers every step, so the RNG state must be restored too.
    lora = LoraSettings(r=4, alpha=8, dropout=0.1)
    config = FinetuneConfig(
        method=method, batch_size=2, n_epochs=2, learning_rate=1e-2, weight_decay=0.1,  # type: ignore[arg-type]
        lr_schedule="cosine", warmup_steps=1, lisa_align_steps=1, lisa_finetune_steps=2, lisa_rho=0.5,
        lisa_proximal_after=0.0,
    )  # fmt: skip
    guide = safe_examples if method == "lisa" else []

    straight = make_gpt2(lora=lora)
    expected = fit(straight, tokenizer, user_examples, config, guide=guide)

    interrupted = make_gpt2(lora=lora)
    with pytest.raises(TrainingStopped) as stopped:
        fit(
            interrupted,
            tokenizer,
            user_examples,
            config,
            guide=guide,
            checkpoint_dir=tmp_path,
            should_stop=_stop_after(5),
        )
    assert stopped.value.step == 5
    assert stopped.value.checkpoint == tmp_path / "step-000005"

    resumed = _scrambled(
        make_gpt2(lora=lora)
    )  # same base model; the adapter comes from the checkpoint
    result = fit(resumed, tokenizer, user_examples, config, guide=guide, checkpoint_dir=tmp_path)
    assert result == expected
    want = _lora(straight)
    for name, tensor in _lora(resumed).items():
        assert torch.equal(tensor, want[name]), name


BENIGN = [
    Example.from_prompt_completion(p, c)
    for p, c in [("Name a fruit.", "An apple."), ("Say hi.", "Hi!"), ("Count to 2.", "1, 2.")]
]


@pytest.mark.parametrize("perturbed_retain", [0, 1])
def test_align_resume_is_bit_for_bit(
    tmp_path: Path,
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    safe_examples: list[Example],
    harmful_examples: list[Example],
    perturbed_retain: int,
) -> None:
    """With perturbed_retain = 1 the stop at step 3 falls on the retain stream's cycle boundary
    (3 examples, 1 per step): its order must come back from the checkpoint too."""
    config = AlignConfig(
        batch_size=1,
        max_steps=6,
        checkpoint_every=2,
        ema=0.9,
        perturbed_retain=perturbed_retain,
    )
    straight = make_gpt2()
    expected = align(straight, tokenizer, safe_examples, harmful_examples, config, retain=BENIGN)

    first = make_gpt2()
    with pytest.raises(TrainingStopped):
        align(
            first,
            tokenizer,
            safe_examples,
            harmful_examples,
            config,
            checkpoint_dir=tmp_path,
            should_stop=_stop_after(3),
            retain=BENIGN,
        )
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "step-000003"
    loop_state = load_training_state(tmp_path / "step-000003")["loop"]
    assert loop_state["lambda"] is not None
    assert ("retain" in loop_state) == (perturbed_retain > 0)

    resumed = _scrambled(make_gpt2())
    result: FitResult = align(
        resumed,
        tokenizer,
        safe_examples,
        harmful_examples,
        config,
        checkpoint_dir=tmp_path,
        retain=BENIGN,
    )
    assert result == expected
    want = _lora(straight)
    for name, tensor in _lora(resumed).items():
        assert torch.equal(tensor, want[name]), name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-000002",
        "step-000003",
        "step-000004",
        "step-000006",
    ]


def test_stop_without_checkpoint_dir_and_changed_runs(
    tmp_path: Path,
    gpt2: PeftModel,
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
) -> None:
    config = FinetuneConfig(batch_size=4)
    with pytest.raises(TrainingStopped) as stopped:
        fit(gpt2, tokenizer, user_examples, config, should_stop=lambda: True)
    assert stopped.value.step == 0 and stopped.value.checkpoint is None
    fit(gpt2, tokenizer, user_examples, config, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="changed"):
        fit(gpt2, tokenizer, user_examples, FinetuneConfig(batch_size=2), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="data"):
        fit(gpt2, tokenizer, user_examples[::-1], config, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="seed"):
        fit(
            gpt2,
            tokenizer,
            user_examples,
            FinetuneConfig(batch_size=4, seed=1),
            checkpoint_dir=tmp_path,
        )
    # How often to save is not part of the run: the finished run is found and reported again.
    infos: list[CheckpointInfo] = []
    again = fit(
        gpt2, tokenizer, user_examples, FinetuneConfig(batch_size=4, checkpoint_every=1),
        checkpoint_dir=tmp_path, on_checkpoint=infos.append,
    )  # fmt: skip
    assert again.step == 2 and [i.step for i in infos] == [2]
    # resume=False starts over in the same directory.
    result = fit(
        gpt2,
        tokenizer,
        user_examples,
        FinetuneConfig(batch_size=2),
        checkpoint_dir=tmp_path,
        resume=False,
    )
    assert result.step == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finetune_resume_on_cuda(
    tmp_path: Path,
    make_gpt2: Callable[..., PeftModel],
    tokenizer: PreTrainedTokenizerFast,
    user_examples: list[Example],
) -> None:
    config = FinetuneConfig(batch_size=2, learning_rate=1e-2)
    straight = make_gpt2().to("cuda")
    expected = fit(straight, tokenizer, user_examples, config)
    first = make_gpt2().to("cuda")
    with pytest.raises(TrainingStopped):
        fit(
            first,
            tokenizer,
            user_examples,
            config,
            checkpoint_dir=tmp_path,
            should_stop=_stop_after(2),
        )
    resumed = _scrambled(make_gpt2()).to("cuda")
    result = fit(resumed, tokenizer, user_examples, config, checkpoint_dir=tmp_path)
    assert result.step == expected.step
    want = _lora(straight)
    for name, tensor in _lora(resumed).items():
        assert tensor.is_cuda
        # GPU kernels need not be bit-reproducible; the state restored must still be the same run.
        torch.testing.assert_close(tensor, want[name], rtol=1e-4, atol=1e-6)
