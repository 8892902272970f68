"""The official ``openai`` SDK as the client: in-process through TestClient (an httpx.Client), and
once over a real socket against uvicorn on 127.0.0.1."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI
from starlette.types import Message, Receive, Scope, Send

from core.config import Settings
from tests.api.helpers import BASE_MODEL, Keys, chat_jsonl


def sdk(app: Any, key: str, **kwargs: Any) -> OpenAI:
    return OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=TestClient(app), **kwargs
    )


def test_sdk_files_and_jobs(app: FastAPI, keys: Keys) -> None:
    client = sdk(app, keys.a)
    uploaded = client.files.create(
        file=("train.jsonl", io.BytesIO(chat_jsonl(30))), purpose="fine-tune"
    )
    assert uploaded.status == "processed" and uploaded.bytes == len(chat_jsonl(30))
    assert client.files.wait_for_processing(uploaded.id).status == "processed"
    assert uploaded.model_extra and uploaded.model_extra["n_examples"] == 30
    assert client.files.content(uploaded.id).content == chat_jsonl(30)

    job = client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=uploaded.id,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}},
        },
        suffix="sdk",
        metadata={"run": "sdk"},
        seed=3,
    )
    assert job.status == "queued" and job.hyperparameters.n_epochs == 2
    assert job.hyperparameters.batch_size == 8 and job.seed == 3
    assert job.method is not None and job.method.type == "supervised"
    # The defense shows as extension fields the SDK keeps in model_extra.
    assert job.model_extra and job.model_extra["defense"] == "antibody"
    assert job.model_extra["served_model"] == BASE_MODEL
    assert uploaded.model_extra["safety_status"] == "queued"
    assert client.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"run": "sdk"})] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"run": "other"}).data == []
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert events[0].message == f"Created fine-tuning job: {job.id}"
    assert list(client.fine_tuning.jobs.checkpoints.list(job.id)) == []
    assert {m.id for m in client.models.list()} == {BASE_MODEL, "pending-model"}
    assert client.models.retrieve(BASE_MODEL).id == BASE_MODEL

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert client.files.delete(uploaded.id).deleted is True


def test_sdk_auto_pagination(app: FastAPI, keys: Keys) -> None:
    client = sdk(app, keys.a)
    ids = [
        client.files.create(file=(f"f{i}.jsonl", chat_jsonl(10)), purpose="fine-tune").id
        for i in range(5)
    ]
    page = client.files.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]  # iterates every page
    jobs = [
        client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=ids[0], seed=i).id
        for i in range(3)
    ]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == jobs[::-1]


def test_sdk_errors(app: FastAPI, keys: Keys) -> None:
    client = sdk(app, keys.a, max_retries=0)
    file_id = client.files.create(file=("t.jsonl", chat_jsonl(10)), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(
            model=BASE_MODEL, training_file=file_id, hyperparameters={"n_epochs": 100}
        )
    assert bad.value.param == "hyperparameters.n_epochs"
    assert bad.value.code == "invalid_hyperparameter"
    assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as model:
        client.fine_tuning.jobs.create(model="gpt-4o", training_file=file_id)
    assert model.value.code == "model_not_found" and model.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.AuthenticationError) as auth_error:
        sdk(app, "sk-ftaas-wrong", max_retries=0).files.list()
    assert auth_error.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        client.get("http://testserver/admin/jobs", cast_to=dict)


class Flaky:
    """ASGI wrapper: lets ``fail`` requests to ``path`` reach the app, then answers 500 in place
    of the app's response, as if the response had been lost on the way back."""

    def __init__(self, app: Any, path: str, fail: int) -> None:
        self.app, self.path, self.fail = app, path, fail
        self.calls: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        if len(self.calls) < self.fail:
            await self.app(scope, receive, capture)
            self.calls.append(500)
            body = b'{"error": {"message": "lost", "type": "server_error", "param": null, "code": null}}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after-ms", b"1")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.calls.append(message["status"])
            await send(message)

        await self.app(scope, receive, record)


def test_sdk_retry_after_a_lost_response_creates_one_job(app: FastAPI, keys: Keys) -> None:
    flaky = Flaky(app, "/v1/fine_tuning/jobs", fail=2)
    client = sdk(flaky, keys.a, max_retries=2)
    file_id = client.files.create(file=("t.jsonl", chat_jsonl(10)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=file_id)
    assert flaky.calls == [500, 500, 200]  # two lost responses, two SDK retries
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]


def test_sdk_does_not_retry_a_409(app: FastAPI, keys: Keys) -> None:
    counted = Flaky(app, "/never", fail=0)
    calls: list[str] = []

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/cancel"):
            calls.append(scope["path"])
        await counted(scope, receive, send)

    client = sdk(counting, keys.a, max_retries=2)
    file_id = client.files.create(file=("t.jsonl", chat_jsonl(10)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=file_id)
    client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.ConflictError) as conflict:
        client.fine_tuning.jobs.cancel(job.id)
    assert conflict.value.code == "job_not_cancellable"
    assert len(calls) == 2  # the 409 was not retried


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_sdk_against_a_live_server(live_server: str, keys: Keys, settings: Settings) -> None:
    client = OpenAI(base_url=f"{live_server}/v1", api_key=keys.a, max_retries=0)
    uploaded = client.files.create(file=("train.jsonl", chat_jsonl(25)), purpose="fine-tune")
    assert uploaded.status == "processed"
    bad = client.files.create(file=("bad.jsonl", b'{"messages": []}\n' * 3), purpose="fine-tune")
    assert bad.status == "error" and bad.status_details
    job = client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=uploaded.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "queued"
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=bad.id)
    assert refused.value.param == "training_file" and refused.value.code == "invalid_training_file"
    # A large streamed upload over the socket.
    big = chat_jsonl(20_000)
    stored = client.files.create(file=("big.jsonl", big), purpose="fine-tune")
    assert stored.bytes == len(big) and (stored.model_extra or {})["n_examples"] == 20_000
    assert httpx.get(f"{live_server}/healthz").json()["status"] == "ok"
