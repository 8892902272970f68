"""Atomic, resumable checkpoints.

Layout of ``checkpoint_dir/step-000123/``::

    adapter/              PeftModel.save_pretrained (safetensors): PeftModel.from_pretrained(base, it)
    training_state.pt     optimizer, scheduler, step, RNG states, data order, loop state
    metrics.json          the metrics reported with the checkpoint (for people, not for resume)
    COMPLETE              written last

Everything is written into a hidden temporary sibling, flushed to disk, and renamed into place.
The rename is the commit point on a local filesystem; ``COMPLETE`` also marks completeness where
directories are copied non-atomically (object stores, rsync). Readers only trust directories
that hold ``COMPLETE``. A checkpoint written again for the same step replaces the old one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

COMPLETE = "COMPLETE"
ADAPTER_DIR = "adapter"
STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.json"
FORMAT_VERSION = 1

_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    *,
    model: PeftModel,
    state: dict[str, Any],
    metrics: dict[str, float],
) -> Path:
    """Write the checkpoint of the state after ``step`` optimizer steps; returns its directory."""

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp / ADAPTER_DIR))
        torch.save({"format_version": FORMAT_VERSION, "step": step, **state}, tmp / STATE_FILE)
        (tmp / METRICS_FILE).write_text(
            json.dumps({"step": step, **metrics}, indent=2, sort_keys=True)
        )

    return write_directory_atomically(checkpoint_dir / checkpoint_name(step), fill, marker=step)


def write_directory_atomically(
    target: Path, fill: Callable[[Path], None], *, marker: object = ""
) -> Path:
    """The one atomic directory writer (checkpoints here, final adapters in the worker).

    ``fill(tmp)`` writes into a hidden temporary sibling; ``COMPLETE`` is written last, every
    file and directory is fsynced, and the directory is renamed into place (an existing
    ``target`` is swapped out with a second rename), so a reader sees the old directory or the
    new one, never half of one. On any error (a full disk included) the temporary is removed
    and ``target`` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        fill(tmp)
        (tmp / COMPLETE).write_text(f"{marker}\n")
        _fsync_tree(tmp)
        if target.exists():
            trash = target.parent / f".old-{target.name}-{uuid.uuid4().hex}"
            target.rename(trash)
            tmp.rename(target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def latest_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None (missing directory included)."""
    if not checkpoint_dir.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for entry in checkpoint_dir.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_dir() and (entry / COMPLETE).is_file():
            step = int(match.group(1))
            if best is None or step > best[0]:
                best = (step, entry)
    return None if best is None else best[1]


def load_training_state(path: Path) -> dict[str, Any]:
    """The training state of a checkpoint directory (tensors on CPU)."""
    if not (path / COMPLETE).is_file():
        raise ValueError(f"checkpoint {path} is not complete")
    state: dict[str, Any] = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path}: unknown format version {state.get('format_version')!r}"
        )
    return state


def load_adapter_weights(model: PeftModel, path: Path) -> None:
    """Copy the checkpoint's adapter tensors into the live model, bit for bit."""
    weights = load_file(str(path / ADAPTER_DIR / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights, adapter_name=model.active_adapter)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise ValueError(
            f"checkpoint {path}: adapter tensors the model does not have: {unexpected[:5]}"
        )


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(directory))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the data files are synced anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
