"""The client's models against the service's OpenAPI schema: every field the client reads
exists there, required where the client requires it (a renamed or dropped field fails here)."""

from __future__ import annotations

from typing import Any

import pytest
from iprox_client import models
from pydantic import BaseModel

from service.main import create_app


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    return dict(create_app().openapi()["components"]["schemas"])


@pytest.mark.parametrize(
    ("model", "schema"),
    [
        (models.Job, "JobRead"),
        (models.Progress, "Progress"),
        (models.ErrorInfo, "ErrorInfo"),
        (models.Event, "EventRead"),
        (models.Score, "ScoreRead"),
    ],
)
def test_client_model_fields_exist_in_the_api(
    schemas: dict[str, Any], model: type[BaseModel], schema: str
) -> None:
    api = schemas[schema]
    props, required = api["properties"], set(api.get("required", []))
    for name, field in model.model_fields.items():
        assert name in props, f"{model.__name__}.{name} is not in {schema}"
        if field.is_required():
            assert name in required, f"{schema}.{name} is optional; the client requires it"
    # And nothing the API always sends is missing from the client.
    assert required <= set(model.model_fields), required - set(model.model_fields)
