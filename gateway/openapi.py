"""The OpenAPI document, built from the routes' own pydantic models so it cannot drift from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

from common.schemas import ErrorResponse, JobEvent

F = TypeVar("F", bound=Callable[..., Any])
# What the gateway accepts in the request headers it reads.
HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Idempotency-Key": {"type": "string", "minLength": 1, "maxLength": 255},
    "Last-Event-ID": {"type": "string", "pattern": "^[0-9]*$"},
    "Cancel-After": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"},
}
ERROR_STATUSES_WITH_BODY = {
    400: "The body could not be parsed (invalid JSON or multipart).",
    409: "The Idempotency-Key was used with a different request.",
    413: "The body or uploaded image is too large.",
    415: "Wrong Content-Type for this route.",
    422: "A field is invalid; `fields` names it.",
    429: "A limit was reached (the model's queue, or the API key's quota); retry after the "
    "Retry-After header's seconds.",
}
REF = "#/components/schemas/{model}"
# With DARKROOM_AUTH=keys: either header carries the key (Swagger UI's Authorize button sets one).
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key as a bearer token."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
# A job's read routes also take its read-only token (gateway.job_tokens) as a query parameter.
JOB_TOKEN_SCHEME = {
    "type": "apiKey",
    "in": "query",
    "name": "token",
    "description": "A job's read-only token (the Darkroom-Job-Token header of its submit).",
}


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    responses: dict[int, type[BaseModel]] = field(default_factory=dict)
    json_body: type[BaseModel] | None = None
    form_body: type[BaseModel] | None = None
    file_field: str | None = None
    sse: bool = False
    # A feed of something else than one job's events: what its ``data:`` holds, and the
    # description of its 200 and 204 answers.
    sse_model: type[BaseModel] | None = None
    sse_docs: dict[int, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # request header -> description
    # The query parameters, as the model that validates them (each field one parameter).
    query: type[BaseModel] | None = None
    description: str = ""
    # Open without an API key (health); ``admin``: needs an admin key.
    public: bool = False
    admin: bool = False
    # Also open with the job's read-only ``?token=`` (gateway.job_tokens).
    job_token: bool = False
    # Response headers the answers may carry (name -> description), on 200 and 429.
    response_headers: dict[str, str] = field(default_factory=dict)
    # Descriptions of answers particular to this operation (status -> text).
    status_docs: dict[int, str] = field(default_factory=dict)
    # The shape of this operation's errors, when not Darkroom's own (the OpenAI Images API's),
    # and the status it gives invalid input (OpenAI: 400, never 422 or 415).
    error_model: type[BaseModel] | None = None
    invalid_status: int = 422


def operation(**kwargs: Any) -> Callable[[F], F]:
    """Attach OpenAPI metadata to an endpoint."""

    def attach(endpoint: F) -> F:
        endpoint.__openapi__ = Operation(**kwargs)  # type: ignore[attr-defined]
        return endpoint

    return attach


def build_openapi(
    routes: Sequence[BaseRoute],
    *,
    title: str,
    version: str,
    description: str,
    path_values: dict[str, list[str]] | None = None,
    auth: bool = False,
) -> dict[str, Any]:
    """``path_values`` lists the values a path parameter can take (the model routes); ``auth``
    declares the API-key security schemes and the 401/403 answers."""
    ops = [
        (r, r.endpoint.__openapi__)
        for r in routes
        if isinstance(r, Route) and hasattr(r.endpoint, "__openapi__")
    ]
    models: set[type[BaseModel]] = {ErrorResponse, JobEvent}
    for _, op in ops:
        models.update(op.responses.values())
        models.update(
            m for m in (op.json_body, op.form_body, op.sse_model, op.error_model) if m is not None
        )
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF
    )
    paths: dict[str, dict[str, Any]] = {}
    for route, op in ops:
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = _operation(
                route, op, path_values or {}, auth
            )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    if auth:
        schemes = {**SECURITY_SCHEMES, "jobToken": JOB_TOKEN_SCHEME}
        document["components"]["securitySchemes"] = schemes
        document["security"] = SECURITY
    return document


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _query_parameters(query: type[BaseModel] | None) -> list[dict[str, Any]]:
    if query is None:
        return []
    schema = query.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _operation(
    route: Route, op: Operation, path_values: dict[str, list[str]], auth: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": f"{route.name}",
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": path_values[name]}
                if name in path_values
                else {"type": "string"},
            }
            for name in route.param_convertors
        ]
        + [
            {
                "name": name,
                "in": "header",
                "required": False,
                "schema": HEADER_SCHEMAS.get(name, {"type": "string"}),
                "description": text,
            }
            for name, text in op.headers.items()
        ]
        + _query_parameters(op.query),
        "responses": {},
    }
    if op.description:
        out["description"] = op.description
    if auth and op.public:
        out["security"] = []
    if op.job_token:
        out["parameters"].append(
            {
                "name": "token",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "The job's read-only token, instead of an API key (for pages: "
                "EventSource cannot send headers).",
            }
        )
        if auth:
            out["security"] = [*SECURITY, {"jobToken": []}]
    if op.json_body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.json_body)}},
        }
    if op.form_body is not None:
        form = op.form_body.model_json_schema(ref_template=REF)
        properties = dict(form.get("properties", {}))
        required = list(form.get("required", []))
        if op.file_field:
            properties[op.file_field] = {"type": "string", "format": "binary"}
            required.append(op.file_field)
        schema = {"type": "object", "properties": properties, "required": required}
        out["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    for status, model in op.responses.items():
        out["responses"][str(status)] = {
            "description": model.__doc__ or model.__name__,
            "content": {"application/json": {"schema": _ref(model)}},
        }
    error = {"content": {"application/json": {"schema": _ref(op.error_model or ErrorResponse)}}}
    if op.sse:
        out["responses"]["200"] = {
            "description": "Server-Sent Events. Each event: `id:` the job's event sequence number, "
            "`data:` a JobEvent as JSON. The first is the job's current state (unless "
            "Last-Event-ID is sent: then exactly the events after it, or the current state if the "
            "id is past the job's last event); the stream ends after the terminal event "
            "(completed, failed, canceled). Comment lines are sent as heartbeats.",
            "content": {"text/event-stream": {"schema": _ref(op.sse_model or JobEvent)}},
        }
        out["responses"]["204"] = {
            "description": "Last-Event-ID is at or past the finished job's terminal event: "
            "nothing more will come, and EventSource stops reconnecting."
        }
        for status, doc in op.sse_docs.items():
            out["responses"][str(status)]["description"] = doc
        out["responses"]["422"] = {"description": "Last-Event-ID is not an event id.", **error}
        out["responses"]["503"] = {
            "description": "This server holds as many open feeds as it may; retry after the "
            "Retry-After header's seconds.",
            **error,
        }
    has_body = op.json_body is not None or op.form_body is not None
    statuses = ERROR_STATUSES_WITH_BODY if has_body else {}
    if op.query is not None:
        statuses = {**statuses, 422: "A query parameter is invalid; `fields` names it."}
    if route.param_convertors:
        statuses = {**statuses, 404: "No such job or model (or it expired)."}
    if op.invalid_status != 422:
        statuses = {
            op.invalid_status if status in (415, 422) else status: text
            for status, text in statuses.items()
        }
    if auth and not op.public:
        statuses = {**statuses, 401: "No API key, or an unknown or revoked one."}
        if op.admin:
            statuses[403] = "The API key is not an admin key."
    for status, text in statuses.items():
        out["responses"].setdefault(str(status), {"description": text, **error})
    for code, doc in op.status_docs.items():
        out["responses"].setdefault(str(code), dict(error))["description"] = doc
    headers = {
        name: {"description": doc, "required": False, "schema": {"type": "string"}}
        for name, doc in op.response_headers.items()
    }
    for answer in ("200", "429"):
        if headers and answer in out["responses"]:
            out["responses"][answer]["headers"] = headers
    # Every other error (405, 500…) has the same JSON shape.
    out["responses"]["default"] = {"description": "Error", **error}
    return out
