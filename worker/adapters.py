"""Final adapters (a fine-tuning job's, an aligned model's) go through the same atomic writer as
checkpoints (``defense.checkpoint.write_directory_atomically``): temporary sibling, ``COMPLETE``
marker, fsync, rename. A reader (the served-model loader, a later job) sees the old adapter or
the new one, never half of one; a full disk leaves the old one in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_adapter(model: Any, tokenizer: Any, target: Path) -> Path:
    """A PEFT directory (``PeftModel.from_pretrained`` loads it) plus the tokenizer."""
    from defense.checkpoint import write_directory_atomically

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(tmp)

    return write_directory_atomically(target, fill)
