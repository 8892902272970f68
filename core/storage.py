"""Artifact store: uploaded files, checkpoints and adapters, under one root directory.

Writes are atomic (temporary name, then rename), so a reader never sees half a file. A shared
volume mounted at the same path on the API and the workers is the production layout; an
S3-compatible store would implement the same small interface.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from core.private import DIR_MODE, open_private


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        resolved = (self.root / key).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return resolved

    def write_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        target = self.path(key)
        target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        size = 0
        try:
            with os.fdopen(open_private(tmp), "wb") as fh:  # 0600 whatever the umask
                for chunk in chunks:
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def read_stream(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        with open(self.path(key), "rb") as fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        target = self.path(key)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def file_key(file_id: str) -> str:
    return f"files/{file_id}.jsonl"


def job_dir_key(job_id: str) -> str:
    return f"jobs/{job_id}"
