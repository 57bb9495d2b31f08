"""Typed JSON endpoints: bodies and queries parsed by pydantic models into objects, the caller's
token checked, responses serialised, and the OpenAPI document built from the same facts."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, jsonify, request
from pydantic import BaseModel, TypeAdapter, ValidationError

from vre import jsonbody
from vre.errors import ApiError, Forbidden
from vre.revocation import RevocationState, person_refusal
from vre.tokens import Principal, bearer_token

PUBLIC = "public"  # no token needed
ANY = "any"  # any valid token
Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class Operation:
    """What the OpenAPI document says about one endpoint."""

    summary: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: Any  # a model, or a type of them such as list[Model] or ModelA | ModelB
    status: int
    roles: tuple[str, ...] | str
    tags: tuple[str, ...]
    scopes: tuple[str, ...] = ()


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


# What a caller sends must be storable on every database: integers fit PostgreSQL's BIGINT,
# and text is UTF-8 without a NUL character (PostgreSQL refuses both); past that the driver fails.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def _unstorable(value: Any, loc: tuple[str, ...] = ()) -> tuple[tuple[str, ...], str] | None:
    """Where, in a parsed body, query or path, the first value no database can store is, and
    what is wrong with it (None: nowhere)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT_MIN <= value <= INT_MAX else (loc, "out_of_range")
    if isinstance(value, str):
        try:
            value.encode()  # a lone surrogate is no UTF-8 text
        except UnicodeEncodeError:
            return loc, "invalid_character"
        return (loc, "invalid_character") if "\x00" in value else None
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        items = [((info.alias or name) if (info := fields.get(name)) else name, item)
                 for name, item in value]
    elif isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
        items += [(str(k), k) for k in value if isinstance(k, str)]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return None
    for key, item in items:
        found = _unstorable(item, loc if key == "root" else (*loc, key))
        if found is not None:
            return found
    return None


_ODD_ESCAPE = re.compile(rb"\\u(0000|[dD][89a-fA-F])")  # a NUL or a surrogate
_LONG_NUMBER = re.compile(rb"[0-9]{19}|[0-9][eE]\+?[0-9]")


def _maybe_unstorable(raw: bytes) -> bool:
    """Whether a JSON text can hold a value check_storable refuses: walking every value costs
    more than parsing, and only an escaped NUL or surrogate, or a number long (or exponent)
    enough to pass 64 bits, can make one."""
    return bool(_ODD_ESCAPE.search(raw)) or bool(
        _LONG_NUMBER.search(jsonbody.outside_strings(raw)))


# The longest text a page's form sends (a dataset's description); longer is no form's.
MAX_FORM_VALUE = 20_000
_UNSTORABLE = {"out_of_range": f"integer out of range [{INT_MIN}, {INT_MAX}]",
               "invalid_character": "text must be UTF-8 without the NUL character",
               "value_too_long": f"longer than {MAX_FORM_VALUE} characters"}


def _refusal(loc: tuple[str, ...], code: str, where: str) -> ApiError:
    field = ".".join(loc) or None
    return ApiError(f"{where} field {field!r}: {_UNSTORABLE[code]}", code=code, field=field,
                    status=422)


def check_storable(parsed: Any, where: str) -> Any:
    """Refuse (422, naming the field) a body, query or path with a value no database stores."""
    found = _unstorable(parsed)
    if found is not None:
        raise _refusal(*found, where)
    return parsed


def validated(model: type[Model], data: Any, where: str = "body") -> Model:
    """`data` checked by the model and then as storable: the one check of what a caller sends,
    whether it came as JSON or as a form; a 422 naming the first wrong field otherwise."""
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, where) from None
    return check_storable(parsed, where)


_NUMERAL = re.compile(r"\s*[+-]?([0-9]+)\s*")


def check_form(fields: Iterable[tuple[str, str]], where: str = "form") -> None:
    """Refuse (422, naming the field) a submitted form or query string that no handler could
    store, by the rules a JSON body is held to: text is UTF-8 without NUL, and a whole
    number is within 64 bits (a form sends numbers as text, so a numeral is taken as one);
    besides, no value is longer than any form field of the platform."""
    for name, value in fields:
        for text in (name, value):
            found = _unstorable(text, (name,))
            if found is not None:
                raise _refusal(*found, where)
        if len(value) > MAX_FORM_VALUE:
            raise _refusal((name,), "value_too_long", where)
        numeral = _NUMERAL.fullmatch(value)
        # past 19 digits it is out of range (and int() of thousands of digits is refused)
        if numeral and (len(numeral.group(1).lstrip("0")) > 19 or
                        not INT_MIN <= int(value) <= INT_MAX):
            raise _refusal((name,), "out_of_range", where)


def parse_body(model: type[BaseModel]) -> BaseModel:
    """Parse the request body as JSON into the model, or raise a stable 4xx."""
    if not request.is_json:
        raise ApiError("request body must be application/json",
                       code="unsupported_media_type", status=415)
    raw = request.get_data(cache=True)
    data = jsonbody.loads(raw)
    # A model may parse its payload itself (e.g. "one item or a list" without union noise).
    parse = getattr(model, "parse_payload", model.model_validate)
    try:
        parsed = parse(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    return check_storable(parsed, "body") if _maybe_unstorable(raw) else parsed


def parse_query(model: type[BaseModel]) -> BaseModel:
    """Validate the query string against the model (repeated keys become lists)."""
    data: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        data[key] = values if len(values) > 1 else values[0]
    return validated(model, data, "query")


def current_principal(required: bool = True) -> Principal | None:
    """The caller, from its bearer token (validated once per request)."""
    if "principal" not in g:
        token = bearer_token(request.headers.get("Authorization"))
        if token is None and not required:
            g.principal = None
        else:
            g.principal = current_app.extensions["vre.validator"].validate(token)
    return g.principal


def revoked_person(principal: Principal | None) -> str | None:
    """Why the person calling may do nothing but read public metadata, or None: the one
    question every route that acts for a person asks (services act for none)."""
    state: RevocationState | None = current_app.extensions.get("vre.revocations")
    if principal is None or principal.is_service or state is None:
        return None
    return person_refusal(principal.subject, state.snapshot())


def out_of_scope(principal: Principal | None, scopes: tuple[str, ...]) -> bool:
    """Whether a token limited to platform scopes (a workload's) may not call this route."""
    return principal is not None and bool(principal.scopes) \
        and not principal.scopes.intersection(scopes)


def authorize(roles: tuple[str, ...] | str, scopes: tuple[str, ...] = ()) -> Principal | None:
    """Check the caller against what the endpoint allows; public endpoints see an optional one
    (a revoked person, or a token scoped to other routes, is seen there as anonymous)."""
    if roles == PUBLIC:
        principal = current_principal(required=False)
        if revoked_person(principal) or out_of_scope(principal, scopes):
            g.principal = None
        return g.principal
    principal = current_principal()
    assert principal is not None
    if out_of_scope(principal, scopes):
        raise Forbidden(f"this token is limited to {', '.join(sorted(principal.scopes))}, "
                        "which this route does not serve", code="token_scope")
    refusal = revoked_person(principal)
    if refusal:
        raise Forbidden(refusal, code="user_revoked")
    if roles != ANY and not principal.has_any(*roles):
        raise Forbidden(f"requires one of the roles: {', '.join(roles)}")
    return principal


def endpoint(
    summary: str, *, body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
    response: Any = None, status: int = 200,
    roles: Iterable[str] | str = ANY, tags: Iterable[str] = (), scopes: Iterable[str] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a JSON endpoint: who may call it, what it takes and what it returns. A token
    limited to platform scopes (a workload's) reaches it only when `scopes` names one of them.

    The view receives `body=` and `query=` as parsed models when declared, and returns a
    model, a dict/list, a (value, status) pair, or a Response it made itself."""
    allowed = roles if isinstance(roles, str) else tuple(roles)
    served = tuple(scopes)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            authorize(allowed, served)
            check_storable(kwargs, "path")
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
            summary, body, query, response, status, allowed, tuple(tags), served)
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


_REF = "#/components/schemas/{model}"


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: one that is sent has a value, so an optional field's null
    arm (and its null default) is not part of it."""
    schema = {k: v for k, v in schema.items() if not (k == "default" and v is None)}
    arms = [arm for arm in schema.get("anyOf", ()) if arm != {"type": "null"}]
    if "anyOf" in schema and len(arms) == 1:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**arms[0], **rest}
    return schema


def _bound_integers(node: Any) -> None:
    """Say in the schema what the parser enforces: every integer fits in 64 bits."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            if "minimum" not in node and "exclusiveMinimum" not in node:
                node["minimum"] = INT_MIN
            if "maximum" not in node and "exclusiveMaximum" not in node:
                node["maximum"] = INT_MAX
        for value in node.values():
            _bound_integers(value)
    elif isinstance(node, list):
        for value in node:
            _bound_integers(value)


def openapi_document(app: Flask, title: str, version: str) -> dict[str, Any]:
    """Build OpenAPI 3.1 from the registered endpoints and their models."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}

    def ref(kind: Any) -> dict[str, Any]:
        """A model by reference to its component schema; any other type (list[Model], a
        union) inline, its models among the components."""
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            schema = kind.model_json_schema(ref_template=_REF)
            schemas.update(schema.pop("$defs", {}))
            schemas[kind.__name__] = schema
            return {"$ref": _REF.format(model=kind.__name__)}
        schema = TypeAdapter(kind).json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        return schema

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
            query_schema = op.query.model_json_schema(ref_template=_REF)
            schemas.update(query_schema.pop("$defs", {}))
            for name, info in op.query.model_fields.items():
                key = info.alias or name
                params.append({"name": key, "in": "query", "required": info.is_required(),
                               "description": info.description or "",
                               "schema": _present(query_schema["properties"][key])})
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
        if op.scopes:
            entry["x-scopes"] = list(op.scopes)
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": ref(op.body)}}}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = entry
    _bound_integers(paths)
    _bound_integers(schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }
