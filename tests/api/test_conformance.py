"""API conformance: schemathesis against the live API (uvicorn on a spare port, SQLite home), once
with a user key and once with an admin key.

Checks: no server error, every status documented, response bodies, headers and content types as
documented, and ``Allow`` on 405 listing every method of the path. Bounded (``MAX_EXAMPLES`` per
operation, a fixed seed) so both runs take well under 90 s. A file, a job and the base model
exist, and their ids are given to schemathesis, so that the success paths are checked too.
``make conformance`` runs only this; ``make test`` includes it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tests.api.helpers import BASE_MODEL, Keys, chat_jsonl

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(300)]

MAX_EXAMPLES = 6
SEED = 13
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live(app: FastAPI) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _objects(base: str, key: str) -> dict[str, str]:
    """A file and a job of the key's tenant: their ids go to schemathesis."""
    auth = {"Authorization": f"Bearer {key}"}
    file = httpx.post(
        f"{base}/v1/files",
        headers=auth,
        files={"file": ("train.jsonl", chat_jsonl(12), "application/jsonl")},
        data={"purpose": "fine-tune"},
    )
    assert file.status_code == 200, file.text
    job = httpx.post(
        f"{base}/v1/fine_tuning/jobs",
        headers=auth,
        json={"model": BASE_MODEL, "training_file": file.json()["id"]},
    )
    assert job.status_code == 200, job.text
    return {"file_id": file.json()["id"], "fine_tuning_job_id": job.json()["id"]}


@pytest.mark.parametrize("backend", ["embedded"])
@pytest.mark.parametrize("who", ["user", "admin"])
def test_schemathesis_finds_nothing(live: str, keys: Keys, tmp_path: Path, who: str) -> None:
    key = keys.a if who == "user" else keys.admin
    ids = _objects(live, key)
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[parameters]\n"
        + "".join(f'"path.{name}" = "{value}"\n' for name, value in ids.items())
        + f'"path.model_id" = "{BASE_MODEL}"\n'
        + '"path.tenant_name" = "alpha"\n'
    )
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    run = subprocess.run(
        [st, "--config-file", str(config), "run", f"{live}/openapi.json"]
        + ["--header", f"Authorization: Bearer {key}"]
        + ["--checks", ",".join(CHECKS), "--max-examples", str(MAX_EXAMPLES)]
        + ["--seed", str(SEED), "--generation-database", "none", "--workers", "1"]
        + ["--phases", "examples,coverage,fuzzing", "--no-color"],
        cwd=tmp_path,  # schemathesis' own caches stay out of the repository
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failures" not in run.stdout.split("SUMMARY")[-1]
