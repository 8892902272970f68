"""File objects as OpenAI shows them, plus the validation results as extra fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    safety_status: str | None = Field(
        None,
        description="Upload screening of a processed training file: queued, running, completed "
        "or failed (GET /v1/files/{id}/safety_report); null when not screened.",
    )

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
            safety_status=row.safety_status,
        )


def _document_screening_bounds(schema: dict[str, Any]) -> None:
    # Documented but not declared: a report written before these existed is shown unchanged.
    schema.setdefault("properties", {}).update(
        truncated={
            "type": "boolean",
            "description": "True when the file has more lines than FTAAS_MAX_SCREENING_LINES "
            "(only the first ones were scored).",
        },
        partial={
            "type": "boolean",
            "description": "True when screening hit FTAAS_SCREENING_TIME_LIMIT_S: only the first "
            "`lines` lines were scored.",
        },
    )


class ScreeningSummary(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=_document_screening_bounds)

    lines: int | None = Field(None, description="Examples scored.")
    flagged: int | None = Field(None, description="Examples flagged.")
    mean_score: float | None = Field(None, description="Mean likelihood ratio over the file.")


class FlaggedExample(BaseModel):
    model_config = ConfigDict(extra="allow")

    line: int = Field(description="1-based line number in the uploaded file.")
    score: float | None = Field(
        None, description="Likelihood ratio (completion vs refusal); below the threshold."
    )
    reason: str | None = None


class FileSafetyReport(BaseModel):
    object: Literal["file.safety_report"] = "file.safety_report"
    file_id: str
    status: str | None = Field(
        description="queued, running, completed or failed; null when the file is not screened "
        "(e.g. it failed validation)."
    )
    model: str | None = Field(description="The pre-aligned model that scored the lines.")
    threshold: float | None = Field(description="Lines scoring below this are flagged.")
    summary: ScreeningSummary | None
    flagged: list[FlaggedExample] = Field(description="Every flagged line, in file order.")
    error: str | None = Field(None, description="Why screening failed, when it did.")

    @classmethod
    def from_row(cls, row: File) -> FileSafetyReport:
        report = row.safety_report or {}
        error = report.get("error") or report.get("reason")
        return cls(
            file_id=row.id,
            status=row.safety_status,
            model=report.get("model"),
            threshold=report.get("threshold"),
            summary=report.get("summary"),
            flagged=report.get("flagged") or [],
            error=str(error) if error is not None else None,
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
                # What the API enforces (api/files/service.py): no other field, and an expiry
                # needs both its anchor and its seconds.
                "additionalProperties": False,
                "dependentRequired": {
                    "expires_after[anchor]": ["expires_after[seconds]"],
                    "expires_after[seconds]": ["expires_after[anchor]"],
                },
            }
        }
    },
}
