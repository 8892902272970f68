"""FTAAS_HOME is owner-only: 0700 folders and 0600 files, after a real startup and an upload; the
secrets are created with that mode from the first byte."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import get_settings
from core.db import engine_for
from core.private import create_private, write_private


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask, as a provider's shell may have: the code must not rely on it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_secrets_are_created_0600_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "new" / "secret.key"
    assert create_private(path, "first")
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert not create_private(path, "second")  # never replaced: the first writer wins
    assert path.read_text() == "first"
    write_private(path, "rotated")
    assert mode(path) == 0o600 and path.read_text() == "rotated"
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]  # no temporary left


def test_home_is_owner_only_after_startup_and_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's startup (migrate, a key, the first admin key), the API's, and an upload, all
    in this process under a usual shell umask (022) that the code must override."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from cli import main as cli

    home = tmp_path / "home"
    for name in [k for k in os.environ if k.startswith("FTAAS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FTAAS_HOME", str(home))
    monkeypatch.setenv("FTAAS_USE_SHIPPED_ADAPTERS", "false")
    monkeypatch.setenv("FTAAS_MIN_EXAMPLES", "1")
    get_settings.cache_clear()
    old = os.umask(0o022)
    try:
        assert cli.main(["migrate"]) == 0
        assert cli.main(["keys", "create", "--tenant", "acme"]) == 0
        key = capsys.readouterr().out.strip().splitlines()[-1]
        cli._first_admin_key(get_settings())
        os.umask(0o022)  # the API must set its own
        line = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
        with TestClient(create_app(get_settings())) as client:
            response = client.post(
                "/v1/files",
                headers={"Authorization": f"Bearer {key}"},
                files={"file": ("train.jsonl", line * 3, "application/jsonl")},
                data={"purpose": "fine-tune"},
            )
        assert response.status_code == 200, response.text
    finally:
        os.umask(old)
        get_settings.cache_clear()
        engine_for.cache_clear()

    names = {p.relative_to(home).as_posix() for p in home.rglob("*")}
    assert {"ftaas.db", "secret.key", "admin.key"} <= names
    assert any(n.startswith("artifacts/files/") for n in names), names
    assert mode(home) == 0o700
    wrong = {
        p.relative_to(home).as_posix(): oct(mode(p))
        for p in home.rglob("*")
        if not p.is_symlink() and mode(p) != (0o700 if p.is_dir() else 0o600)
    }
    assert wrong == {}, f"not owner-only: {wrong}"
