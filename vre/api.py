"""Typed JSON endpoints: bodies and queries parsed by pydantic models into objects, the caller's
token checked, responses serialised, and the OpenAPI document built from the same facts."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from vre.errors import ApiError, Forbidden
from vre.tokens import Principal, bearer_token

PUBLIC = "public"  # no token needed
ANY = "any"  # any valid token


@dataclass(frozen=True)
class Operation:
    """What the OpenAPI document says about one endpoint."""

    summary: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    roles: tuple[str, ...] | str
    tags: tuple[str, ...]


def _field_of(error: dict[str, Any]) -> str | None:
    loc = [str(part) for part in error.get("loc", ())]
    return ".".join(loc) or None


def validation_error(exc: ValidationError, where: str = "body") -> ApiError:
    """Turn pydantic's report into our 422 naming the first wrong field."""
    first = exc.errors()[0]
    field = _field_of(first)
    kind = first.get("type", "")
    code = {"missing": "missing_field", "extra_forbidden": "unknown_field"}.get(
        kind, "validation_error")
    message = f"{where} field {field!r}: {first['msg']}" if field else first["msg"]
    return ApiError(message, code=code, field=field, status=422)


def parse_body(model: type[BaseModel]) -> BaseModel:
    """Parse the request body as JSON into the model, or raise a stable 4xx."""
    if not request.is_json:
        raise ApiError("request body must be application/json",
                       code="unsupported_media_type", status=415)
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"request body is not valid JSON: {exc}", code="malformed_json") from exc
    # A model may parse its payload itself (e.g. "one item or a list" without union noise).
    parse = getattr(model, "parse_payload", model.model_validate)
    try:
        return parse(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def parse_query(model: type[BaseModel]) -> BaseModel:
    """Validate the query string against the model (repeated keys become lists)."""
    data: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        data[key] = values if len(values) > 1 else values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, where="query") from None


def current_principal(required: bool = True) -> Principal | None:
    """The caller, from its bearer token (validated once per request)."""
    if "principal" not in g:
        token = bearer_token(request.headers.get("Authorization"))
        if token is None and not required:
            g.principal = None
        else:
            g.principal = current_app.extensions["vre.validator"].validate(token)
    return g.principal


def authorize(roles: tuple[str, ...] | str) -> Principal | None:
    """Check the caller against what the endpoint allows; public endpoints see an optional one."""
    if roles == PUBLIC:
        return current_principal(required=False)
    principal = current_principal()
    assert principal is not None
    if roles != ANY and not principal.has_any(*roles):
        raise Forbidden(f"requires one of the roles: {', '.join(roles)}")
    return principal


def endpoint(
    summary: str, *, body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None, status: int = 200,
    roles: Iterable[str] | str = ANY, tags: Iterable[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a JSON endpoint: who may call it, what it takes and what it returns.

    The view receives `body=` and `query=` as parsed models when declared, and returns a
    model, a dict/list, a (value, status) pair, or a Response it made itself."""
    allowed = roles if isinstance(roles, str) else tuple(roles)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            authorize(allowed)
            if body is not None:
                kwargs["body"] = parse_body(body)
            if query is not None:
                kwargs["query"] = parse_query(query)
            result = view(*args, **kwargs)
            if isinstance(result, Response):
                return result  # made by the view, with its own status (a 304, say)
            code = status
            if isinstance(result, tuple):
                result, code = result
            return to_json(result), code

        wrapper.operation = Operation(  # type: ignore[attr-defined]
            summary, body, query, response, status, allowed, tuple(tags))
        return wrapper

    return decorate


def to_json(value: Any) -> Any:
    if isinstance(value, Response):
        return value
    if isinstance(value, BaseModel):
        return jsonify(value.model_dump(mode="json"))
    if isinstance(value, list):
        return jsonify([v.model_dump(mode="json") if isinstance(v, BaseModel) else v
                        for v in value])
    return jsonify(value)


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "field": {"type": ["string", "null"]}}}},
}


def openapi_document(app: Flask, title: str, version: str) -> dict[str, Any]:
    """Build OpenAPI 3.1 from the registered endpoints and their models."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        op: Operation | None = getattr(view, "operation", None)
        if op is None:
            continue
        path = rule.rule
        params = []
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", f"{{{arg}}}")
            for conv in ("int", "string", "uuid", "path"):
                path = path.replace(f"<{conv}:{arg}>", f"{{{arg}}}")
            params.append({"name": arg, "in": "path", "required": True,
                           "schema": {"type": "string"}})
        if op.query is not None:
            for name, info in op.query.model_fields.items():
                params.append({"name": info.alias or name, "in": "query",
                               "required": info.is_required(),
                               "description": info.description or "",
                               "schema": {"type": "string"}})
        responses: dict[str, Any] = {
            str(op.status): {"description": "success", **(
                {"content": {"application/json": {"schema": ref(op.response)}}}
                if op.response else {})},
            "default": {"description": "error",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}}}},
        }
        entry: dict[str, Any] = {"summary": op.summary, "operationId": rule.endpoint,
                                 "parameters": params, "responses": responses}
        if op.tags:
            entry["tags"] = list(op.tags)
        if op.roles != PUBLIC:
            entry["security"] = [{"bearer": []}]
            if op.roles != ANY:
                entry["x-roles"] = list(op.roles)
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": ref(op.body)}}}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }
