"""Examples, prompt rendering, tokenisation, collation and seeded batch orders.

One prompt format serves training and evaluation: ``render_prompt`` uses the tokenizer's chat
template when it has one, and otherwise the Stanford-Alpaca template of the released Antibody
code (spec §1.2). Prompt and completion are tokenised separately, so the boundary between them is
exact and generation at evaluation time starts from the very token ids the model trained on.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from defense.seed import permutation

IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt and padding); PyTorch's cross-entropy default."""

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "weight"}
"""A ``weight`` key (OpenAI's per-turn flag, as core normalises it) is accepted and ignored: the
last assistant message is always the trained completion and every earlier turn is context."""

CHARS_PER_TOKEN_BOUND = 32
"""Text is cut to ``max_seq_len * CHARS_PER_TOKEN_BOUND`` characters before it is tokenised, so
tokenising one example costs memory and time bounded by ``max_seq_len`` whatever the length of its
conversation. A token of a byte-level BPE rarely spans more than 32 characters, so the cut text
still fills ``max_seq_len`` tokens and the tokens kept after truncation are (nearly always) the
ones the whole text would give; where a token is longer, the example keeps a shorter context."""

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class Example:
    """One training sample: chat turns whose last message is the assistant completion to learn.

    Only that last message is trained (labels on its tokens); earlier assistant turns are
    context, as in a prompt/completion pair whose prompt is a conversation.
    """

    messages: tuple[dict[str, str], ...]

    def __post_init__(self) -> None:
        if len(self.messages) < 2:
            raise ValueError("messages must hold at least a prompt and an assistant completion")
        for i, message in enumerate(self.messages):
            if (
                not isinstance(message, dict)
                or not {"role", "content"} <= set(message) <= MESSAGE_KEYS
            ):
                raise ValueError(
                    f"messages[{i}] must be a dict with 'role' and 'content' (and optionally 'weight')"
                )
            if message["role"] not in ROLES or not isinstance(message["content"], str):
                raise ValueError(
                    f"messages[{i}] needs a role in {ROLES} and string content, got {message!r}"
                )
        if self.messages[-1]["role"] != "assistant":
            raise ValueError("messages: the last message must be the assistant completion")

    @classmethod
    def from_prompt_completion(cls, prompt: str, completion: str) -> Example:
        return cls(
            messages=(
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": completion},
            )
        )

    @property
    def prompt_messages(self) -> tuple[dict[str, str], ...]:
        return self.messages[:-1]

    @property
    def completion(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + completion, with labels masked (``IGNORE_INDEX``) on the prompt."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    index: int = 0
    """Dataset index of the source example (the line of the training file)."""

    @property
    def n_completion_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> str:
    """The text the model sees before it writes the next assistant message.

    With a chat template: ``apply_chat_template(..., add_generation_prompt=True)``. Without one,
    the Alpaca format: a first system message replaces the Alpaca preamble; a user turn is
    ``### Instruction:\n{text}\n\n``; an earlier assistant turn is ``### Response:\n{text}\n\n``;
    a later system message is a plain ``{text}\n\n`` paragraph; the prompt ends with
    ``### Response:\n``. A single user message gives exactly the released code's no-input Alpaca
    prompt.
    """
    if not messages:
        raise ValueError("render_prompt needs at least one message")
    if getattr(tokenizer, "chat_template", None):
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        return str(tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True))
    turns = list(messages)
    preamble = ALPACA_PREAMBLE
    if turns[0]["role"] == "system":
        preamble = turns.pop(0)["content"]
    parts = [preamble, "\n\n"]
    for message in turns:
        if message["role"] == "user":
            parts.append(f"### Instruction:\n{message['content']}\n\n")
        elif message["role"] == "assistant":
            parts.append(f"### Response:\n{message['content']}\n\n")
        else:
            parts.append(f"{message['content']}\n\n")
    parts.append("### Response:\n")
    return "".join(parts)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, str]],
    max_chars: int | None = None,
) -> list[int]:
    """Token ids of ``render_prompt``: special tokens (e.g. BOS) are added only when there is no
    chat template, because a template writes its own. With ``max_chars``, a longer rendering keeps
    only its last ``max_chars`` characters (and no BOS): truncation keeps a prompt's end."""
    add_special = not getattr(tokenizer, "chat_template", None)
    text = render_prompt(tokenizer, messages)
    if max_chars is not None and len(text) > max_chars:
        text, add_special = text[-max_chars:], False
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    example: Example,
    max_seq_len: int,
    completion: str | None = None,
    *,
    index: int = 0,
) -> EncodedExample:
    """Prompt tokens (label ``IGNORE_INDEX``) then completion tokens + EOS (labelled).

    ``completion`` replaces the example's completion on the same prompt; that is how the refusal
    view of a sample is built. Sequences longer than ``max_seq_len`` keep at least
    ``min(len(completion), max(1, max_seq_len // 4))`` completion tokens: the prompt loses tokens
    from its start (the end holds the question and the response header), and the completion loses
    tokens from its end (then without EOS, so the model does not learn to stop mid-answer).
    Every encoded example therefore has at least one labelled token. Prompt and completion are
    each cut to ``max_seq_len * CHARS_PER_TOKEN_BOUND`` characters before tokenising (bounded
    work per example).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; completions must end with one")
    budget = max_seq_len * CHARS_PER_TOKEN_BOUND  # characters tokenised, at most
    prompt_ids = encode_prompt(tokenizer, example.prompt_messages, max_chars=budget)
    text = example.completion if completion is None else completion
    cut = len(text) > budget
    completion_ids = list(tokenizer(text[:budget], add_special_tokens=False)["input_ids"])
    if not cut:  # a cut answer gets no EOS: the model must not learn to stop mid-answer
        completion_ids.append(int(tokenizer.eos_token_id))
    if len(prompt_ids) + len(completion_ids) > max_seq_len:
        keep = min(
            len(completion_ids), max(max_seq_len - len(prompt_ids), max(1, max_seq_len // 4))
        )
        completion_ids = completion_ids[:keep]
        prompt_ids = prompt_ids[len(prompt_ids) - (max_seq_len - keep) :]
    return EncodedExample(
        input_ids=tuple(prompt_ids + completion_ids),
        labels=tuple([IGNORE_INDEX] * len(prompt_ids) + completion_ids),
        index=index,
    )


def collate(batch: Sequence[EncodedExample], pad_id: int) -> dict[str, Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels ([B, T] long) and index ([B] long)."""
    if not batch:
        raise ValueError("collate needs at least one example")
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    index = torch.tensor([e.index for e in batch], dtype=torch.long)  # [B]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "index": index,
    }


def digest(*datasets: Sequence[EncodedExample]) -> str:
    """A fingerprint of encoded datasets (token ids, labels, indices), so that a resume can tell
    that it sees the very data of the interrupted run."""
    h = hashlib.sha256()
    for examples in datasets:
        h.update(f"[{len(examples)}]".encode())
        for e in examples:
            h.update(repr((e.index, e.input_ids, e.labels)).encode())
    return h.hexdigest()


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id (EOS when the tokenizer has no pad token: the attention mask hides padding)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    return int(pad)


def split_micro_batches(indices: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Split one step's indices into contiguous micro-batches of ``micro_batch_size`` (the last
    one may be smaller)."""
    size = micro_batch_size
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


class BatchOrder:
    """Seeded batches of dataset indices, one shuffled pass (cycle) after another.

    The order of cycle ``c`` is ``permutation(n, seed, stream, c)``; the last batch of a cycle may
    be smaller (nothing is dropped, and a batch never spans two cycles). The state (cycle,
    position, and the current order itself) goes into every checkpoint.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, stream: int) -> None:
        if n < 1:
            raise ValueError("BatchOrder needs at least one example")
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self.cycle = 0
        self.position = 0
        self.order = permutation(n, seed=seed, stream=stream, cycle=0)

    @property
    def batches_per_cycle(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def next_batch(self) -> list[int]:
        if self.position >= self.n:
            self.cycle += 1
            self.position = 0
            self.order = permutation(self.n, seed=self.seed, stream=self.stream, cycle=self.cycle)
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += len(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "position": self.position, "order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        order = [int(i) for i in state["order"]]
        if sorted(order) != list(range(self.n)):
            raise ValueError("checkpoint data order does not match the size of this dataset")
        self.cycle, self.position, self.order = int(state["cycle"]), int(state["position"]), order
