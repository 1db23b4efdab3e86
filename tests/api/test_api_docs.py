"""The API documentation of request bodies: every field says what it is, every model shows an
example request, and every example is one the API accepts (it passes the model's validation).

Built from the app's own OpenAPI document, as /docs and the dashboard's client see it; no
platform is started. A field added without a description, or a model without an example,
fails here with its name.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from training_platform.api.app import create_app
from training_platform.core.settings import Settings

REF = "#/components/schemas/"


def _models_in(annotation: Any, found: dict[str, type[BaseModel]]) -> None:
    """Every pydantic model an annotation names, nested ones included, by class name."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation.__name__ in found:
            return
        found[annotation.__name__] = annotation
        for field in annotation.model_fields.values():
            _models_in(field.annotation, found)
        return
    for argument in typing.get_args(annotation):
        _models_in(argument, found)


def _body_schemas(document: dict[str, Any]) -> dict[str, set[str]]:
    """Each component schema reachable from a JSON request body, with the operations using it."""
    schemas = document["components"]["schemas"]
    used: dict[str, set[str]] = {}

    def walk(node: Any, operation: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(REF):
                name = ref.removeprefix(REF)
                if operation not in used.setdefault(name, set()):
                    used[name].add(operation)
                    walk(schemas[name], operation)
            for value in node.values():
                walk(value, operation)
        elif isinstance(node, list):
            for value in node:
                walk(value, operation)

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            if "application/json" in content:
                walk(content["application/json"]["schema"], f"{method.upper()} {path}")
    return used


def _field_type(model: type[BaseModel], prop: str) -> Any:
    """The annotation of the field a schema property documents, its constraints included."""
    for name, field in model.model_fields.items():
        if prop in (name, field.alias):
            return Annotated[(field.annotation, *field.metadata)]  # type: ignore[misc]
    raise AssertionError(f"{model.__name__} has no field {prop!r}")


def problems(app: FastAPI) -> Iterator[str]:
    """What the request bodies' documentation lacks, or examples the models refuse."""
    document = app.openapi()
    models: dict[str, type[BaseModel]] = {}
    for route in app.routes:
        if isinstance(route, APIRoute) and route.body_field is not None:
            _models_in(route.body_field.field_info.annotation, models)
    schemas = document["components"]["schemas"]
    for name, operations in sorted(_body_schemas(document).items()):
        schema = schemas[name]
        where = f"{name} (in {min(operations)})"
        model = models.get(name.removesuffix("-Input"))
        if model is None:
            yield f"{where}: no request model of that name found to check its examples"
            continue
        for prop, spec in schema.get("properties", {}).items():
            if not str(spec.get("description", "")).strip():
                yield f"{where}: field {prop!r} has no description"
            for example in spec.get("examples", ()):
                try:
                    TypeAdapter(_field_type(model, prop)).validate_python(example)
                except ValidationError as error:
                    yield f"{where}: example {example!r} of {prop!r} is refused: {error}"
        if schema.get("type") == "object" and not schema.get("examples"):
            yield f"{where}: no example (model_config json_schema_extra={{'examples': [...]}})"
        for example in schema.get("examples", ()):
            try:
                model.model_validate(example)
            except ValidationError as error:
                yield f"{where}: example {example!r} is refused: {error}"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    home: Path = tmp_path_factory.mktemp("api-docs") / "home"  # never created: nothing starts
    return create_app(Settings(home=home))


def test_every_request_field_is_described_and_every_request_model_has_valid_examples(
    app: FastAPI,
) -> None:
    found = list(problems(app))
    assert not found, "\n".join(found)
    checked = _body_schemas(app.openapi())
    assert {"JobCreate", "Resources", "EvaluationCreate", "HostCreate", "SweepCreate"} <= set(
        checked
    )
    assert len(checked) >= 40


class Undocumented(BaseModel):
    """A body with a field nobody described and no example."""

    said: int = Field(1, description="Described.")
    unsaid: int = 2


class Refused(BaseModel):
    """A body whose examples its own validation refuses."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"size": 0}]})

    size: int = Field(ge=1, description="At least 1.", examples=[-1])


def test_a_field_without_description_or_a_model_without_example_is_named() -> None:
    toy = FastAPI()

    @toy.post("/undocumented")
    def undocumented(body: Undocumented) -> None:
        """A route whose body lacks documentation."""

    @toy.post("/refused")
    def refused(body: Refused) -> None:
        """A route whose body's examples are invalid."""

    found = "\n".join(problems(toy))
    assert "Undocumented (in POST /undocumented): field 'unsaid' has no description" in found
    assert "field 'said'" not in found
    assert "Undocumented (in POST /undocumented): no example" in found
    assert "Refused (in POST /refused): example {'size': 0} is refused" in found
    assert "Refused (in POST /refused): example -1 of 'size' is refused" in found
