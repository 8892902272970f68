"""defense.modeling: built-in models are built offline, deterministically, atomically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from defense import modeling
from defense.modeling import (
    BUILD_RECORD,
    BUILTIN_MODELS,
    build_tiny_gpt2,
    convert_smollm2,
    gpt2_tokenizer,
    is_complete,
    load_base,
    load_with_adapter,
    prepare_builtin,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


def test_gpt2_tokenizer_matches_tiktoken_ids() -> None:
    tokenizer = gpt2_tokenizer()
    assert len(tokenizer) == 50257
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 50256
    text = "It's 2024: naïve café 🙂"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_tiny_gpt2_build_is_deterministic_by_seed(tmp_path: Path, tiny_dir: Path) -> None:
    again = load_file(build_tiny_gpt2(tmp_path / "again", seed=0) / "model.safetensors")
    other = load_file(build_tiny_gpt2(tmp_path / "other", seed=1) / "model.safetensors")
    first = load_file(tiny_dir / "model.safetensors")

    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["transformer.wte.weight"], other["transformer.wte.weight"])


def test_build_leaves_no_temporary_folders_and_replaces_old_copy(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    build_tiny_gpt2(target, seed=0)
    (target / "stale.txt").write_text("from an older build")
    build_tiny_gpt2(target, seed=0)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert not (target / "stale.txt").exists()
    assert is_complete(target)


def test_tiny_gpt2_reloads_with_pad_token_and_no_chat_template(tiny_dir: Path) -> None:
    model, tokenizer = load_base(tiny_dir)

    assert not model.training
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256
    assert model.config.pad_token_id == 50256
    assert tokenizer.chat_template is None  # defense.data.render_prompt's fallback applies
    with torch.no_grad():
        logits = model(**tokenizer(["Hello world"], return_tensors="pt")).logits
    assert logits.shape == (1, 2, 50257)
    assert torch.isfinite(logits).all()


def test_prepare_builtin_builds_once_and_rebuilds_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def counting_build(out_dir: Path) -> Path:
        calls.append(out_dir)
        return build_tiny_gpt2(out_dir)

    monkeypatch.setitem(BUILTIN_MODELS, "tiny-gpt2", counting_build)

    path = prepare_builtin("tiny-gpt2", tmp_path)
    assert path == tmp_path / "tiny-gpt2" and is_complete(path)
    assert prepare_builtin("tiny-gpt2", tmp_path) == path
    assert len(calls) == 1

    (path / BUILD_RECORD).unlink()  # as if a copy was interrupted
    prepare_builtin("tiny-gpt2", tmp_path)
    assert len(calls) == 2 and is_complete(path)


def test_prepare_builtin_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown built-in model"):
        prepare_builtin("gpt-5", tmp_path)


@pytest.mark.parametrize("trainable", [False, True])
def test_load_with_adapter_round_trips_lora_weights(
    tmp_path: Path, tiny_dir: Path, trainable: bool
) -> None:
    base, _ = load_base(tiny_dir)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True)
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)  # B starts at zero; make the adapter change the output
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    ids = torch.tensor([[15496, 995]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits

    loaded, tokenizer = load_with_adapter(tiny_dir, tmp_path / "adapter", trainable=trainable)

    assert tokenizer.pad_token_id == 50256
    assert not loaded.training
    lora = [p for n, p in loaded.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad is trainable for p in lora)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected)


def test_builtin_names_are_the_worker_contract() -> None:
    assert BUILTIN_MODELS == {
        "tiny-gpt2": build_tiny_gpt2,
        "smollm2-135m-instruct": convert_smollm2,
    }
    assert modeling.package_dir("whisper").is_dir()


@pytest.mark.slow
def test_smollm2_converts_loads_and_chats(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("model-cache")
    steps: list[str] = []
    path = convert_smollm2(cache / "smollm2-135m-instruct", progress=steps.append)
    assert is_complete(path) and steps[-1] == "done"
    assert prepare_builtin("smollm2-135m-instruct", cache) == path  # cached, not rebuilt

    model, tokenizer = load_base(path)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tokenizer.chat_template is not None
    assert tokenizer.pad_token is not None

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)  # type: ignore[operator]
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
