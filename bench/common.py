"""Small helpers shared by the defense benchmarks: timestamped logs, cache keys, atomic writes,
and a description of the machine a result was measured on."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_STARTED = time.monotonic()


def log(message: str) -> None:
    """One progress line: wall-clock time (UTC), minutes since the process started, message."""
    now = datetime.now(UTC).strftime("%H:%M:%S")
    minutes = (time.monotonic() - _STARTED) / 60
    print(f"[{now} +{minutes:5.1f}m] {message}", flush=True)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def command_line() -> str:
    """The command that produced a result, as a user would retype it from the repository root."""
    script = Path(sys.argv[0])
    if script.is_absolute() and script.is_relative_to(REPO):
        script = script.relative_to(REPO)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    import torch

    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs visible (shared with other engineers' jobs), "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}"
    )


def jsonable(value: Any) -> Any:
    """Dataclasses, tuples and paths as plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_key(*parts: Any) -> str:
    """A short, stable digest of configuration values (the name of a cache cell)."""
    text = json.dumps(jsonable(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary sibling and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(jsonable(value), indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
