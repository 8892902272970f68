from __future__ import annotations

from worker.examples import training_set


def test_every_trained_assistant_turn_is_an_example() -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "weight": "0"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    data = training_set([(7, conversation), (8, conversation[:3] + conversation[3:5])])
    assert [e.completion for e in data.examples] == ["4", "6", "4"]
    assert data.line_numbers == [7, 7, 8]
    assert data.examples[1].messages[:-1][-1] == {"role": "user", "content": "3+3?"}
    assert all("weight" not in m for e in data.examples for m in e.messages)
