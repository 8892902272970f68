"""Helpers for the API tests (plain functions; the fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from core.config import Settings
from core.queue import TRAINING_QUEUE

BASE_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Keys:
    a: str  # tenant "alpha", user key
    b: str  # tenant "beta", user key
    admin: str  # tenant "provider", admin key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_line(i: int = 0, **extra: Any) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer {i}."},
            ],
            **extra,
        }
    )


def chat_jsonl(n: int = 12) -> bytes:
    return ("\n".join(chat_line(i) for i in range(n)) + "\n").encode()


def upload(
    client: TestClient, key: str, content: bytes, filename: str = "train.jsonl", **data: str
) -> Any:
    return client.post(
        "/v1/files",
        headers=auth(key),
        files={"file": (filename, content, "application/jsonl")},
        data={"purpose": "fine-tune", **data},
    )


def make_app(settings: Settings, **overrides: Any) -> FastAPI:
    return create_app(settings.model_copy(update=overrides) if overrides else settings)


def create_job(client: TestClient, key: str, training_file: str, **body: Any) -> Any:
    return client.post(
        "/v1/fine_tuning/jobs",
        headers=auth(key),
        json={"model": BASE_MODEL, "training_file": training_file, **body},
    )


@dataclass(frozen=True)
class Task:
    name: str
    args: list[Any]


def queued_tasks(settings: Settings, queue: str = TRAINING_QUEUE) -> list[Task]:
    """The messages waiting on ``queue``, oldest first, read from the broker itself."""
    if settings.resolved_broker_url.startswith("redis"):
        import redis

        raw = redis.Redis.from_url(settings.resolved_broker_url).lrange(queue, 0, -1)
        # kombu LPUSHes: the newest is first.
        payloads = [r if isinstance(r, bytes) else str(r).encode() for r in reversed(raw)]
    else:
        path = settings.resolved_broker_url.removeprefix("sqla+sqlite:///")
        with sqlite3.connect(path) as conn:
            try:
                rows = conn.execute(
                    "SELECT m.payload FROM kombu_message m JOIN kombu_queue q "
                    "ON m.queue_id = q.id WHERE q.name = ? AND m.visible ORDER BY m.id",
                    (queue,),
                ).fetchall()
            except sqlite3.OperationalError:  # nothing was ever sent: no tables yet
                rows = []
        payloads = [r[0].encode() if isinstance(r[0], str) else bytes(r[0]) for r in rows]
    tasks = []
    for payload in payloads:
        message = json.loads(payload)
        body = json.loads(base64.b64decode(message["body"]))
        tasks.append(Task(name=message["headers"]["task"], args=list(body[0])))
    return tasks
