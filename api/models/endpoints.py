"""/v1/models: base and pre-aligned models, and the caller's fine-tuned models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import CurrentKey, SessionDep
from api.errors import responses
from api.models import service
from api.models.schemas import ModelList, ModelRead

router = APIRouter(prefix="/models", tags=["Models"])


@router.get(
    "",
    response_model=ModelList,
    summary="List models",
    description=(
        "Base and pre-aligned models (ready, or still being prepared or aligned) and this "
        "tenant's fine-tuned models."
    ),
    responses=responses(401),
)
def list_models(key: CurrentKey, session: SessionDep) -> ModelList:
    return ModelList(data=service.list_models(session=session, tenant_id=key.tenant_id))


@router.get(
    "/{model_id:path}",
    response_model=ModelRead,
    summary="Retrieve a model",
    responses=responses(401, 404),
)
def get_model(
    model_id: Annotated[
        str, Path(description="A base or aligned model id, or an ft:… model name.")
    ],
    key: CurrentKey,
    session: SessionDep,
) -> ModelRead:
    return service.get_model(session=session, tenant_id=key.tenant_id, model_id=model_id)
