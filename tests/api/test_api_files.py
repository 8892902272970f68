"""/v1/files: streamed upload with validation, listing, retrieval, download, deletion, limits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.models import File
from tests.api.helpers import Keys, auth, chat_jsonl, chat_line, create_job, make_app, upload


def test_upload_good_file(client: TestClient, keys: Keys) -> None:
    content = chat_jsonl(12)
    response = upload(client, keys.a, content, filename="../../etc/my data.jsonl")
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(content)
    assert body["filename"] == "my data.jsonl"  # only the last path component is kept
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert body["status_details"] is None
    assert body["format"] == "chat"
    assert body["n_examples"] == 12 and body["n_errors"] == 0 and body["errors"] == []
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert isinstance(body["created_at"], int) and body["expires_at"] is None

    fetched = client.get(f"/v1/files/{body['id']}", headers=auth(keys.a))
    assert fetched.status_code == 200 and fetched.json() == body
    download = client.get(f"/v1/files/{body['id']}/content", headers=auth(keys.a))
    assert download.status_code == 200 and download.content == content
    assert download.headers["content-type"] == "application/octet-stream"


def test_prompt_completion_upload(client: TestClient, keys: Keys) -> None:
    lines = "\n".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) for i in range(10))
    body = upload(client, keys.a, lines.encode()).json()
    assert body["status"] == "processed" and body["format"] == "prompt_completion"


def _bad(*lines: str | bytes) -> bytes:
    return b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n"


GOOD = [chat_line(i) for i in range(10)]
NO_ASSISTANT = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
EMPTY_CONTENT = json.dumps(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}
)

BAD_UPLOADS: dict[str, tuple[bytes, list[tuple[int | None, str | None, str]], str]] = {
    "non_utf8": (
        _bad(*GOOD[:2], b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', *GOOD),
        [(3, None, "invalid_utf8")],
        "line 3: is not valid UTF-8: byte 0xe9 at byte offset",
    ),
    "empty": (b"", [(None, None, "empty_file")], "file: the file has no examples"),
    "json_array": (
        json.dumps([json.loads(x) for x in GOOD], indent=1).encode(),
        [(None, None, "json_array")],
        "the file is a JSON array, not JSONL",
    ),
    "missing_assistant": (
        _bad(*GOOD, NO_ASSISTANT),
        [(11, "messages", "example_missing_assistant_message")],
        "line 11, field messages: needs at least one assistant message",
    ),
    "too_few": (
        _bad(*GOOD[:4]),
        [(None, None, "too_few_examples")],
        "needs at least 10 valid examples; found 4",
    ),
    "mixed_formats": (
        _bad(*GOOD, json.dumps({"prompt": "p", "completion": "c"})),
        [(11, "prompt", "mixed_formats")],
        "line 11, field prompt: is a prompt/completion example but the file's first example is chat",
    ),
    "too_long_line": (
        _bad(*GOOD, chat_line(99, padding="x" * 5000)),
        [(11, None, "line_too_long")],
        "line 11: is 5,",
    ),
    "several": (
        _bad(GOOD[0], EMPTY_CONTENT, "{oops", *GOOD[1:], NO_ASSISTANT),
        [
            (2, "messages[1].content", "missing_content"),
            (3, None, "invalid_json"),
            (13, "messages", "example_missing_assistant_message"),
        ],
        "3 problems found: line 2, field messages[1].content: must be a non-empty string; "
        "line 3: invalid JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_is_stored_with_every_problem(
    case: str, settings: Settings, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    content, expected, details = BAD_UPLOADS[case]
    with TestClient(make_app(settings, max_line_bytes=4096)) as client:
        response = upload(client, keys.a, content)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "error"
        assert [(e["line"], e["field"], e["code"]) for e in body["errors"]] == expected
        assert body["n_errors"] == len(expected)
        assert details in body["status_details"]
        # Nothing accepted is lost: the bytes are stored as sent.
        download = client.get(f"/v1/files/{body['id']}/content", headers=auth(keys.a))
        assert download.content == content


def test_job_with_errored_file_is_refused_quoting_the_errors(
    client: TestClient, keys: Keys
) -> None:
    content, _, _ = BAD_UPLOADS["several"]
    file_id = upload(client, keys.a, content).json()["id"]
    response = create_job(client, keys.a, file_id)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "training_file"
    assert error["code"] == "invalid_training_file"
    assert error["type"] == "invalid_request_error"
    assert "(3 problems)" in error["message"]
    assert "line 2, field messages[1].content: must be a non-empty string" in error["message"]
    assert "line 3: invalid JSON" in error["message"]


def test_reported_errors_are_capped(settings: Settings, keys: Keys) -> None:
    with TestClient(make_app(settings, max_reported_errors=5)) as client:
        body = upload(client, keys.a, _bad(*GOOD, *["{x"] * 30)).json()
    assert body["n_errors"] == 30 and len(body["errors"]) == 5
    assert "… and 25 more" in body["status_details"]


def _stored_files(settings: Settings) -> list[str]:
    root = settings.resolved_artifacts_dir / "files"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _count_files(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(File)) or 0)


def test_413_past_the_size_limit_by_content_length(
    settings: Settings, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    with TestClient(make_app(settings, max_upload_bytes=1000)) as client:
        response = upload(client, keys.a, b"x" * 200_000)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
        # Within the multipart allowance but past the file limit: caught while streaming.
        response = upload(client, keys.a, chat_jsonl(40))
        assert response.status_code == 413
        assert response.json()["error"] == {
            "message": "The file is larger than the limit of 1,000 bytes.",
            "type": "invalid_request_error",
            "param": "file",
            "code": "file_too_large",
        }
        assert upload(client, keys.a, chat_jsonl(5)).status_code == 200  # under the limit
    assert _count_files(session_factory) == 1
    assert len(_stored_files(settings)) == 1  # no partial or temporary files left behind


def _chunked_multipart(payload: bytes, boundary: str = "XyZ") -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    for i in range(0, len(payload), 4096):
        yield payload[i : i + 4096]
    yield f"\r\n--{boundary}--\r\n".encode()


def test_413_while_reading_a_chunked_body(
    settings: Settings, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    with TestClient(make_app(settings, max_upload_bytes=10_000)) as client:
        response = client.post(
            "/v1/files",
            headers={**auth(keys.a), "content-type": "multipart/form-data; boundary=XyZ"},
            content=_chunked_multipart(b"y" * 500_000),
        )
        assert response.status_code == 413
        ok = client.post(
            "/v1/files",
            headers={**auth(keys.a), "content-type": "multipart/form-data; boundary=XyZ"},
            content=_chunked_multipart(chat_jsonl(10)),
        )
        assert ok.status_code == 200 and ok.json()["status"] == "processed"
    assert _count_files(session_factory) == 1
    assert len(_stored_files(settings)) == 1


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        (
            {"data": {}, "files": {"file": ("t.jsonl", b"x")}},
            "purpose",
            "missing_required_parameter",
        ),
        ({"data": {"purpose": "batch"}, "files": {"file": ("t.jsonl", b"x")}}, "purpose", None),
        ({"data": {"purpose": "fine-tune"}, "files": {"other": ("t.jsonl", b"x")}}, "other", None),
        (
            {"data": {"purpose": "fine-tune", "colour": "red"}, "files": {"file": ("t", b"x")}},
            "colour",
            "unknown_parameter",
        ),
        ({"json": {"purpose": "fine-tune"}}, "file", None),
        (
            {
                "data": {
                    "purpose": "fine-tune",
                    "expires_after[anchor]": "created_at",
                    "expires_after[seconds]": "10",
                },
                "files": {"file": ("t", b"x")},
            },
            "expires_after.seconds",
            None,
        ),
    ],
)
def test_bad_upload_requests(
    client: TestClient,
    keys: Keys,
    settings: Settings,
    kwargs: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    response = client.post("/v1/files", headers=auth(keys.a), **kwargs)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if code:
        assert error["code"] == code
    assert _stored_files(settings) == []


def test_upload_without_file_part(client: TestClient, keys: Keys) -> None:
    response = client.post(
        "/v1/files",
        headers={**auth(keys.a), "content-type": "multipart/form-data; boundary=B"},
        content=b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--B--\r\n',
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def test_truncated_multipart_body(client: TestClient, keys: Keys, settings: Settings) -> None:
    response = client.post(
        "/v1/files",
        headers={**auth(keys.a), "content-type": "multipart/form-data; boundary=B"},
        content=b'--B\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n{"x": 1}\n',
    )
    assert response.status_code == 400
    assert "closing boundary" in response.json()["error"]["message"]
    assert _stored_files(settings) == []


def test_expires_after(client: TestClient, keys: Keys) -> None:
    body = upload(
        client,
        keys.a,
        chat_jsonl(10),
        **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    ).json()
    assert body["expires_at"] == body["created_at"] + 3600


def test_expired_file_is_gone(
    client: TestClient, keys: Keys, session_factory: sessionmaker[Session]
) -> None:
    file_id = upload(client, keys.a, chat_jsonl(10)).json()["id"]
    with session_factory() as session:
        session.get_one(File, _seq(session, file_id)).expires_at = 1
        session.commit()
    assert client.get(f"/v1/files/{file_id}", headers=auth(keys.a)).status_code == 404
    assert client.get("/v1/files", headers=auth(keys.a)).json()["data"] == []


def _seq(session: Session, file_id: str) -> int:
    return int(session.scalar(select(File.seq).where(File.id == file_id)) or 0)


def test_list_files_paginates_newest_first(client: TestClient, keys: Keys) -> None:
    ids = [upload(client, keys.a, chat_jsonl(10)).json()["id"] for _ in range(3)]
    first = client.get("/v1/files", params={"limit": 2}, headers=auth(keys.a)).json()
    assert first["object"] == "list"
    assert [f["id"] for f in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    assert first["first_id"] == ids[2] and first["last_id"] == ids[1]
    second = client.get(
        "/v1/files", params={"limit": 2, "after": first["last_id"]}, headers=auth(keys.a)
    ).json()
    assert [f["id"] for f in second["data"]] == [ids[0]]
    assert second["has_more"] is False
    asc = client.get("/v1/files", params={"order": "asc"}, headers=auth(keys.a)).json()
    assert [f["id"] for f in asc["data"]] == ids
    assert (
        client.get("/v1/files", params={"purpose": "batch"}, headers=auth(keys.a)).json()["data"]
        == []
    )
    unknown = client.get("/v1/files", params={"after": "file-nope"}, headers=auth(keys.a))
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "after"


def test_page_size_is_capped_by_the_server(settings: Settings, keys: Keys) -> None:
    with TestClient(make_app(settings, page_limit_max=2)) as client:
        for _ in range(3):
            upload(client, keys.a, chat_jsonl(10))
        page = client.get("/v1/files", params={"limit": 1000}, headers=auth(keys.a)).json()
    assert len(page["data"]) == 2 and page["has_more"] is True


def test_delete_file(client: TestClient, keys: Keys, settings: Settings) -> None:
    file_id = upload(client, keys.a, chat_jsonl(10)).json()["id"]
    response = client.delete(f"/v1/files/{file_id}", headers=auth(keys.a))
    assert response.status_code == 200
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}", headers=auth(keys.a)).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", headers=auth(keys.a)).status_code == 404
    assert _stored_files(settings) == []


def test_delete_file_used_by_a_live_job_is_a_409(
    client: TestClient, keys: Keys, training_file: str, job_id: str
) -> None:
    response = client.delete(f"/v1/files/{training_file}", headers=auth(keys.a))
    assert response.status_code == 409
    assert response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "file_in_use"
    assert job_id in response.json()["error"]["message"]
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth(keys.a))
    assert client.delete(f"/v1/files/{training_file}", headers=auth(keys.a)).status_code == 200
