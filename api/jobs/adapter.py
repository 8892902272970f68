"""A PEFT adapter directory as a streamed tar archive, with memory bounded by one chunk.

The archive is written by hand from ``tarfile.TarInfo`` headers rather than by ``tarfile`` onto
a buffer, so that nothing is held beyond the chunk being sent and the length is known up front
(``Content-Length`` lets a client notice a cut-off download). Every file is opened before the
response starts: a checkpoint pruned by the worker meanwhile is still sent whole (POSIX keeps
an unlinked open file readable).
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: the archive is padded to a whole record, as tar(1) does
CHUNK = 1 << 16


@dataclass
class _Member:
    header: bytes
    size: int
    fh: BinaryIO


class AdapterArchive:
    """The regular files under ``root`` (symlinks and special files are skipped, so nothing
    outside the directory can be sent), as ustar/PAX members named relative to ``root``."""

    def __init__(self, root: Path, *, mtime: int) -> None:
        self._members: list[_Member] = []
        try:
            for path in _regular_files(root):
                fh = open(path, "rb")  # noqa: SIM115 - closed by close(), after streaming
                size = os.fstat(fh.fileno()).st_size
                info = tarfile.TarInfo(path.relative_to(root).as_posix())
                info.size, info.mtime, info.mode = size, mtime, 0o644
                header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
                self._members.append(_Member(header, size, fh))
        except BaseException:
            self.close()
            raise
        body = sum(len(m.header) + m.size + _padding(m.size, BLOCK) for m in self._members)
        body += 2 * BLOCK  # end-of-archive marker
        self.length = body + _padding(body, RECORD)

    def __iter__(self) -> Iterator[bytes]:
        try:
            sent = 0
            for member in self._members:
                yield member.header
                remaining = member.size
                while remaining > 0:
                    chunk = member.fh.read(min(CHUNK, remaining))
                    if not chunk:
                        raise OSError(f"{member.fh.name} shrank while it was being sent")
                    remaining -= len(chunk)
                    yield chunk
                yield b"\0" * _padding(member.size, BLOCK)
                sent += len(member.header) + member.size + _padding(member.size, BLOCK)
            end = 2 * BLOCK + _padding(sent + 2 * BLOCK, RECORD)
            yield b"\0" * end
        finally:
            self.close()

    def close(self) -> None:
        for member in self._members:
            member.fh.close()


def _padding(size: int, unit: int) -> int:
    return -size % unit


def _regular_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk never follows symlinks
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if stat.S_ISREG(path.lstat().st_mode) and not name.startswith("."):
                found.append(path)
    return found
