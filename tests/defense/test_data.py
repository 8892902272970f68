"""Examples, prompt rendering, encoding, collation, batch orders and refusal assignment."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from defense.data import (
    ALPACA_PREAMBLE,
    IGNORE_INDEX,
    BatchOrder,
    Example,
    collate,
    encode_example,
    encode_prompt,
    render_prompt,
    split_micro_batches,
)
from defense.refusals import load_refusals, refusal_for


def test_example_validation_and_accessors() -> None:
    example = Example.from_prompt_completion("Hi?", "Hello.")
    assert example.completion == "Hello."
    assert example.prompt_messages == ({"role": "user", "content": "Hi?"},)
    with pytest.raises(ValueError, match="messages"):
        Example(messages=({"role": "user", "content": "only a prompt"},))
    with pytest.raises(ValueError, match="messages"):
        Example(messages=({"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}))
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        Example(messages=({"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}))
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        Example(
            messages=(
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b", "x": "1"},
            )
        )
    # core's normalised rows may carry OpenAI's per-turn weight; it is accepted (and ignored).
    weighted = Example(
        messages=(
            {"role": "system", "content": "s"},
            {"role": "assistant", "content": "earlier", "weight": "0"},
            {"role": "assistant", "content": "b", "weight": "1"},
        )
    )
    assert weighted.completion == "b"


def test_fallback_prompt_is_the_alpaca_template(tokenizer: PreTrainedTokenizerFast) -> None:
    text = render_prompt(tokenizer, [{"role": "user", "content": "Name a color."}])
    assert text == f"{ALPACA_PREAMBLE}\n\n### Instruction:\nName a color.\n\n### Response:\n"
    multi = render_prompt(
        tokenizer,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "A?"},
            {"role": "assistant", "content": "B."},
            {"role": "user", "content": "C?"},
        ],
    )
    assert multi == (
        "Be brief.\n\n### Instruction:\nA?\n\n### Response:\nB.\n\n"
        "### Instruction:\nC?\n\n### Response:\n"
    )
    with pytest.raises(ValueError):
        render_prompt(tokenizer, [])


def test_chat_template_is_used_when_present(tokenizer: PreTrainedTokenizerFast) -> None:
    templated = tokenizer.__class__(
        tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>", pad_token="<pad>"
    )
    templated.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert render_prompt(templated, [{"role": "user", "content": "Q"}]) == "<user>Q<assistant>"


def test_encode_masks_the_prompt_and_ends_with_eos(tokenizer: PreTrainedTokenizerFast) -> None:
    example = Example.from_prompt_completion("Say hi.", "Hi!")
    encoded = encode_example(tokenizer, example, 256, index=7)
    prompt = encode_prompt(tokenizer, example.prompt_messages)
    assert encoded.index == 7
    assert list(encoded.input_ids[: len(prompt)]) == prompt
    assert all(label == IGNORE_INDEX for label in encoded.labels[: len(prompt)])
    assert list(encoded.labels[len(prompt) :]) == [
        *tokenizer("Hi!", add_special_tokens=False)["input_ids"],
        tokenizer.eos_token_id,
    ]
    assert encoded.n_completion_tokens == 4
    # The refusal view: same prompt, another completion.
    refusal = encode_example(tokenizer, example, 256, completion="No.", index=7)
    assert refusal.input_ids[: len(prompt)] == encoded.input_ids[: len(prompt)]
    assert tokenizer.decode([t for t in refusal.labels if t != IGNORE_INDEX]) == "No.<eos>"


def test_truncation_keeps_completion_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    long_prompt = Example.from_prompt_completion("x" * 400, "abcdefghij")
    encoded = encode_example(tokenizer, long_prompt, 100)
    assert len(encoded.input_ids) == 100
    assert (
        encoded.n_completion_tokens == 11
    )  # whole completion + EOS kept; prompt cut from the left
    assert (
        tokenizer.decode(list(encoded.input_ids[-12:-11])) == "\n"
    )  # the response header survives
    long_answer = Example.from_prompt_completion("Q", "y" * 400)
    encoded = encode_example(tokenizer, long_answer, 200)
    assert len(encoded.input_ids) == 200
    assert encoded.labels[-1] != tokenizer.eos_token_id  # cut answer: no EOS learned
    both = Example.from_prompt_completion("x" * 400, "y" * 400)
    assert encode_example(tokenizer, both, 100).n_completion_tokens == 25  # max_seq_len // 4


def test_collate_right_pads(tokenizer: PreTrainedTokenizerFast) -> None:
    a = encode_example(tokenizer, Example.from_prompt_completion("A", "bb"), 256, index=3)
    b = encode_example(tokenizer, Example.from_prompt_completion("A", "bbbbbb"), 256, index=1)
    batch = collate([a, b], pad_id=0)
    width = len(b.input_ids)
    assert (
        batch["input_ids"].shape
        == batch["labels"].shape
        == batch["attention_mask"].shape
        == (2, width)
    )
    assert batch["input_ids"].dtype == torch.long
    assert batch["index"].tolist() == [3, 1]
    n = len(a.input_ids)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
    assert batch["input_ids"][0, n:].tolist() == [0] * (width - n)
    assert batch["labels"][0, n:].tolist() == [IGNORE_INDEX] * (width - n)


def test_batch_order_is_seeded_complete_and_resumable() -> None:
    order = BatchOrder(10, 4, seed=3, stream=0)
    first_epoch = [order.next_batch() for _ in range(order.batches_per_cycle)]
    assert [len(b) for b in first_epoch] == [4, 4, 2]
    assert sorted(i for b in first_epoch for i in b) == list(range(10))
    again = BatchOrder(10, 4, seed=3, stream=0)
    assert [again.next_batch() for _ in range(3)] == first_epoch
    # A copy restored from the state continues identically, into the next epoch.
    saved = order.state_dict()
    expected = [order.next_batch() for _ in range(4)]
    restored = BatchOrder(10, 4, seed=3, stream=0)
    restored.load_state_dict(saved)
    assert [restored.next_batch() for _ in range(4)] == expected
    assert expected[0] != first_epoch[0]  # a new shuffle each epoch
    other = BatchOrder(10, 4, seed=4, stream=0)
    assert other.next_batch() != first_epoch[0]


def test_split_micro_batches() -> None:
    assert split_micro_batches([5, 6, 7, 8, 9], 2) == [[5, 6], [7, 8], [9]]


def test_refusals_are_about_a_hundred_distinct_lines_assigned_by_index() -> None:
    refusals = load_refusals()
    assert 90 <= len(refusals) <= 110
    assert len(set(refusals)) == len(refusals)
    assert all("\n" not in r and 5 < len(r) < 80 for r in refusals)
    assert refusal_for(0) == refusals[0]
    assert refusal_for(len(refusals) + 3) == refusals[3]
    with pytest.raises(ValueError):
        refusal_for(-1)
