"""File objects as OpenAI shows them, plus the validation results as extra fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.pagination import ListResponse
from core.models import File

PURPOSE = "fine-tune"


class FileLineError(BaseModel):
    line: int | None = Field(description="1-based line number; null for file-level problems.")
    field: str | None = Field(description="Path into the line's JSON, e.g. messages[1].content.")
    code: str = Field(description="Problem class, e.g. missing_content or invalid_json.")
    message: str


class FileRead(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = Field(
        None, description="Readable summary of the problems when status is error."
    )
    expires_at: int | None = None
    # Extensions.
    format: Literal["chat", "prompt_completion"] | None = Field(
        None, description="Detected training format."
    )
    n_examples: int = Field(description="Lines that passed every check.")
    n_errors: int = Field(description="Problems found in total (errors lists the first ones).")
    errors: list[FileLineError] = Field(description="The first problems, in file order.")
    sha256: str

    @classmethod
    def from_row(cls, row: File) -> FileRead:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            status_details=row.status_details,
            expires_at=row.expires_at,
            format=row.data_format,
            n_examples=row.n_examples,
            n_errors=row.n_errors,
            errors=[FileLineError(**e) for e in row.line_errors or []],
            sha256=row.sha256,
        )


class FileList(ListResponse[FileRead]):
    pass


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# The multipart body, for the OpenAPI document only: the route parses the stream itself.
UPLOAD_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "A JSONL training file: chat or prompt/completion examples.",
                    },
                    "purpose": {"type": "string", "enum": [PURPOSE]},
                    "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                    "expires_after[seconds]": {
                        "type": "integer",
                        "minimum": 3600,
                        "maximum": 2592000,
                    },
                },
            }
        }
    },
}
