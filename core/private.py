"""Owner-only files: ``FTAAS_HOME`` and everything under it is 0700 (folders) and 0600 (files).

The home holds the embedded database, uploaded training data, checkpoints and two secrets
(``secret.key``, the HMAC key of every API-key hash, and ``admin.key``). Two layers:

* every process (API, worker, CLI) sets its umask to 077 at startup (``restrict_umask``), so
  whatever a library creates there (SQLite's WAL files, the broker's database, a model cache)
  is owner-only too;
* what this project creates itself is created with the mode from the first byte, never chmod-ed
  afterwards (there would be a moment when it is readable): ``os.open(O_CREAT | O_EXCL, 0o600)``
  on a temporary name, then an atomic rename (``write_private``) or link (``create_private``,
  which never replaces an existing file: two processes generating the same secret agree on it).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077


def restrict_umask() -> None:
    os.umask(UMASK)


def private_dir(path: Path) -> Path:
    """``path`` and its missing parents created 0700; an existing ``path`` we own is made 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # a folder of someone else's (e.g. /tmp)
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o777 != DIR_MODE:
            path.chmod(DIR_MODE)
    return path


def open_private(path: Path) -> int:
    """A new file created 0600 whatever the umask (fails if it exists)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def _write_tmp(path: Path, data: bytes) -> Path:
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = open_private(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``path`` atomically, mode 0600 from the start (replacing any old file)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = _write_tmp(path, raw)
    try:
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def create_private(path: Path, data: bytes | str) -> bool:
    """Create ``path`` (0600, atomically) unless it exists; False when another writer won."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = _write_tmp(path, raw)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def private_sqlite_file(database: str | None) -> None:
    """Create an SQLite database file 0600 (and its folder 0700) before SQLite does: SQLite
    creates it, and its -wal and -shm files, with the mode of an existing file."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        os.close(open_private(path))
    except FileExistsError:
        pass
