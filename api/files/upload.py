"""Streaming upload: the multipart body goes from the socket through the validator and a SHA-256
into the artifact store in one pass, with memory bounded by a few chunks and one JSONL line.

Starlette's ``request.form()`` would first spool the whole file to a temporary file before the
route could look at it; here nothing is buffered beyond the chunk in hand. The event loop only
moves raw chunks into a small bounded channel; a worker thread parses the multipart envelope,
hashes, validates and writes, so a 500 MB upload never blocks other requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from api.errors import BadRequest, PayloadTooLarge
from core.datasets import DatasetLimits, DatasetValidator, ValidationReport
from core.storage import ArtifactStore

R = TypeVar("R")

FILE_FIELD = "file"
MAX_FIELDS = 8
MAX_FIELD_BYTES = 1024
MAX_HEADER_BYTES = 8 * 1024
CHANNEL_CHUNKS = 8


class FileTooLarge(PayloadTooLarge):
    default_code = "file_too_large"


@dataclass
class ReceivedUpload:
    """What arrived: the form fields, and the file as stored (or not, if no file part came)."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    has_file: bool = False
    size: int = 0
    sha256: str = ""
    report: ValidationReport = field(default_factory=ValidationReport)


def clean_filename(raw: bytes) -> str:
    """A display name only (the stored name is generated): last path component, printable
    characters, at most 255 of them."""
    name = raw.decode("utf-8", errors="replace").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:255] or "upload.jsonl"


class MultipartFileReader:
    """Incremental multipart/form-data parser that hands back the ``file`` part's bytes as they
    come and keeps the (small) other fields."""

    def __init__(self, content_type: str | None, *, max_file_bytes: int) -> None:
        ctype, params = parse_options_header(content_type or "")
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise BadRequest(
                "Uploads must be multipart/form-data with a 'file' part and a 'purpose' field.",
                param=FILE_FIELD,
            )
        self.max_file_bytes = max_file_bytes
        self.upload = ReceivedUpload()
        self._out: list[bytes] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._header_bytes = 0
        self._in_file = False
        self._field_name: str | None = None
        self._field_value = bytearray()
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
        )

    def write(self, chunk: bytes) -> list[bytes]:
        """Parse ``chunk``; returns the file bytes it contained."""
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BadRequest(f"Malformed multipart body: {exc}", param=FILE_FIELD) from exc
        out, self._out = self._out, []
        return out

    def finish(self) -> None:
        if not self._ended:
            raise BadRequest(
                "The multipart body ended before its closing boundary.", param=FILE_FIELD
            )

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._header_bytes = 0
        self._in_file = False
        self._field_name = None
        self._field_value.clear()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise BadRequest("A multipart part has oversized headers.", param=FILE_FIELD)

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if not name:
            raise BadRequest("A multipart part has no name.", param=FILE_FIELD)
        if name == FILE_FIELD:
            if self.upload.has_file:
                raise BadRequest("Send exactly one 'file' part.", param=FILE_FIELD)
            self.upload.has_file = True
            self.upload.filename = clean_filename(options.get(b"filename", b""))
            self._in_file = True
            return
        if b"filename" in options:
            raise BadRequest(f"Unexpected file part {name!r}; send one 'file' part.", param=name)
        if len(self.upload.fields) >= MAX_FIELDS:
            raise BadRequest("Too many form fields.", param=name)
        self._field_name = name

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.upload.size += end - start
            if self.upload.size > self.max_file_bytes:
                raise FileTooLarge(
                    f"The file is larger than the limit of {self.max_file_bytes:,} bytes.",
                    param=FILE_FIELD,
                )
            self._out.append(data[start:end])
        else:
            self._field_value += data[start:end]
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise BadRequest(
                    f"The form field {self._field_name!r} is too long.", param=self._field_name
                )

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
        elif self._field_name is not None:
            value = bytes(self._field_value).decode("utf-8", errors="replace")
            self.upload.fields[self._field_name] = value

    def _on_end(self) -> None:
        self._ended = True


def receive_into_store(
    body: Iterator[bytes],
    *,
    content_type: str | None,
    store: ArtifactStore,
    key: str,
    limits: DatasetLimits,
    max_file_bytes: int,
) -> ReceivedUpload:
    """Blocking: parse ``body``, storing the file part under ``key`` while hashing and validating
    it. Nothing is left in the store if this raises."""
    reader = MultipartFileReader(content_type, max_file_bytes=max_file_bytes)
    validator = DatasetValidator(limits)
    digest = hashlib.sha256()

    def file_bytes() -> Iterator[bytes]:
        for raw in body:
            for piece in reader.write(raw):
                digest.update(piece)
                validator.feed(piece)
                yield piece
        reader.finish()

    store.write_stream(key, file_bytes())
    upload = reader.upload
    upload.sha256 = digest.hexdigest()
    upload.report = validator.finish()
    return upload


async def run_with_body(stream: AsyncIterator[bytes], consume: Callable[[Iterator[bytes]], R]) -> R:
    """Run blocking ``consume`` in a worker thread over the chunks of ``stream``, which is read on
    the event loop into a channel of ``CHANNEL_CHUNKS`` chunks (back-pressure, bounded memory).

    A failure on the reading side (body over the size cap, client gone) wins over whatever the
    consumer made of the truncated body."""
    send, receive = anyio.create_memory_object_stream[bytes](max_buffer_size=CHANNEL_CHUNKS)
    read_error: list[Exception] = []

    async def pump() -> None:
        try:
            async with send:
                async for chunk in stream:
                    if chunk:
                        await send.send(chunk)
        except anyio.BrokenResourceError:
            pass  # the consumer stopped early; its own error explains why
        except ClientDisconnect:
            read_error.append(BadRequest("The client disconnected during the upload."))
        except Exception as exc:  # BodyTooLarge and the like
            read_error.append(exc)

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                yield anyio.from_thread.run(receive.receive)
            except anyio.EndOfStream:
                return

    def run() -> R | BaseException:
        try:
            return consume(chunks())
        except Exception as exc:  # re-raised on the event loop, outside the task group
            return exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        outcome = await anyio.to_thread.run_sync(run)
        await receive.aclose()
        tg.cancel_scope.cancel()  # stop reading a body we no longer want (e.g. a 413)
    if read_error:
        raise read_error[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
