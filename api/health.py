"""/healthz: no auth; 200 when the database answers."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import SessionDep
from api.errors import ServiceUnavailable, responses

router = APIRouter(tags=["Health"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: Literal["ok"] = "ok"


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness and database reachability",
    responses=responses(503),
)
def healthz(session: SessionDep) -> Health:
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise ServiceUnavailable("The database is unreachable.") from exc
    return Health()
