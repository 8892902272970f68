"""Fixtures for end-to-end runs: a live API server, a real Celery worker process, tiny-gpt2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from core.accounts import create_key
from core.catalog import ensure_builtin_models
from core.config import Settings
from core.db import session_factory, session_scope

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-gpt2 prepared once for the whole session (the real builder, GPT-2 tokenizer)."""
    from defense.modeling import prepare_builtin

    cache = tmp_path_factory.mktemp("models")
    prepare_builtin("tiny-gpt2", cache)
    return cache


@pytest.fixture
def service_settings(settings: Settings, models_dir: Path) -> Settings:
    configured = settings.model_copy(
        update={
            "models_dir": models_dir,
            "base_learning_rate": 4e-3,  # tiny model: learn fast
            "default_model": "tiny-gpt2",
            # Small but real safety evaluations and alignments (tiny-gpt2, 2 CPU cores).
            "safety_eval_harmful": 4,
            "safety_eval_benign": 4,
            "safety_eval_max_new_tokens": 8,
            "alignment_samples": 8,
            "alignment_retain_samples": 4,
            "alignment_batch_size": 4,
            "alignment_learning_rate": 5e-3,
            "max_seq_len": 256,
            # tiny-gpt2 never refuses (harmful score 1.0): these tests are about the plumbing, so
            # the absolute ceiling is lifted; test_release_gate.py checks the default.
            "safety_gate_max_harmful": 1.0,
        }
    )
    with session_scope(session_factory(configured.resolved_database_url)) as session:
        ensure_builtin_models(session, models_dir)
    return configured


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_api(service_settings: Settings) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port; yields the /v1 base URL."""
    from api.main import create_app

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service_settings), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTAAS_")}
    env.update(
        FTAAS_HOME=str(settings.resolved_home),
        FTAAS_DATABASE_URL=settings.resolved_database_url,
        FTAAS_BROKER_URL=settings.resolved_broker_url,
        FTAAS_KEY_SECRET=settings.key_secret or "",
        FTAAS_MODELS_DIR=str(settings.resolved_models_dir),
        FTAAS_HEARTBEAT_INTERVAL_S=str(settings.heartbeat_interval_s),
        FTAAS_CHECKPOINT_EVERY=str(settings.checkpoint_every),
        FTAAS_BASE_LEARNING_RATE=str(settings.base_learning_rate),
        FTAAS_DEFAULT_MODEL=settings.default_model,
        FTAAS_SAFETY_EVAL_HARMFUL=str(settings.safety_eval_harmful),
        FTAAS_SAFETY_EVAL_BENIGN=str(settings.safety_eval_benign),
        FTAAS_SAFETY_EVAL_MAX_NEW_TOKENS=str(settings.safety_eval_max_new_tokens),
        FTAAS_ALIGNMENT_SAMPLES=str(settings.alignment_samples),
        FTAAS_ALIGNMENT_RETAIN_SAMPLES=str(settings.alignment_retain_samples),
        FTAAS_ALIGNMENT_BATCH_SIZE=str(settings.alignment_batch_size),
        FTAAS_ALIGNMENT_LEARNING_RATE=str(settings.alignment_learning_rate),
        FTAAS_ALIGNMENT_STEPS=str(settings.alignment_steps),
        FTAAS_MAX_SEQ_LEN=str(settings.max_seq_len),
        FTAAS_SCREEN_THRESHOLD=str(settings.screen_threshold),
        FTAAS_SAFETY_GATE_MARGIN=str(settings.safety_gate_margin),
        FTAAS_SAFETY_GATE_MAX_HARMFUL=str(settings.safety_gate_max_harmful),
        FTAAS_WORKER_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )
    return env


@pytest.fixture
def worker_process(service_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker (``ftaas worker``) on the test's broker and database."""
    log = service_settings.resolved_home / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker"],
            cwd=REPO,
            env=settings_env(service_settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass(frozen=True)
class Keys:
    user: str
    other: str
    admin: str


@pytest.fixture
def keys(service_settings: Settings) -> Keys:
    secret = service_settings.resolved_key_secret()
    with session_scope(session_factory(service_settings.resolved_database_url)) as session:
        return Keys(
            user=create_key(session, tenant_name="acme", admin=False, secret=secret),
            other=create_key(session, tenant_name="globex", admin=False, secret=secret),
            admin=create_key(session, tenant_name="provider", admin=True, secret=secret),
        )
