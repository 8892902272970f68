"""Helpers for the API tests (plain functions; the fixtures live in conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from core.config import Settings

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
