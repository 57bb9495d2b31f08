"""Requests built to take a worker down or to make it answer 500: each gets a 4xx with a stable
code, and the service goes on answering."""

from __future__ import annotations

import base64
import importlib
import json
import sys
from collections.abc import Callable
from datetime import datetime

import pytest
import sqlalchemy as sa
from flask import Flask

from launcher.serve import app_factory
from tests.helpers import auth
from tests.services.test_error_model import ADMIN, assert_error, call
from vre.db import UtcDateTime
from vre.jsonbody import MAX_DEPTH, nesting_depth
from vre.services import service

DEPTH = 100_000
# A route of each service that parses a JSON body: the portal's is public.
BODY_ROUTES = {
    "portal": "/api/v1/tokens",
    "dataset_service": "/api/v1/projects",
    "tracer": "/api/v1/traces",
}
# Integer query parameters that reach a database query (sequence numbers, tree sizes, offsets).
INTEGER_QUERIES = [
    ("tracer", "/api/v1/traces", "after"),
    ("tracer", "/api/v1/checkpoints", "before"),
    ("tracer", "/api/v1/log/entries", "start"),
    ("tracer", "/api/v1/consistency?to=1", "from"),
]
SERVICES = list(BODY_ROUTES)


@pytest.fixture(params=SERVICES)
def service_app(request: pytest.FixtureRequest, make_app: Callable[[str], Flask]) -> Flask:
    app = make_app(request.param)
    app.extensions["test.name"] = request.param
    return app


def deep(kind: str) -> bytes:
    if kind == "arrays":
        return b"[" * DEPTH + b"]" * DEPTH
    return b'{"a":' * DEPTH + b"1" + b"}" * DEPTH


def test_no_service_leaves_the_recursion_limit_raised(service_app: Flask) -> None:
    # py_ecc, under the chain libraries, raises it to 100,000 when imported; with it raised,
    # a deeply nested document overflows the C stack and kills the process.
    assert sys.getrecursionlimit() < 10_000


@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_deeply_nested_body_is_400_and_the_worker_lives(
    service_app: Flask, token: Callable[..., str], kind: str
) -> None:
    path = BODY_ROUTES[service_app.extensions["test.name"]]
    response = call(
        service_app,
        "POST",
        path,
        token("u1", *ADMIN),
        data=deep(kind),
        content_type="application/json",
    )
    assert_error(response, 400, "json_too_deep")
    assert call(service_app, "GET", "/healthz").status_code == 200


def test_deep_body_to_a_public_route_without_a_token(make_app: Callable[[str], Flask]) -> None:
    portal = make_app("portal")
    response = call(
        portal, "POST", "/api/v1/tokens", data=deep("arrays"), content_type="application/json"
    )
    assert_error(response, 400, "json_too_deep")


def test_brackets_inside_strings_do_not_count(
    service_app: Flask, token: Callable[..., str]
) -> None:
    path = BODY_ROUTES[service_app.extensions["test.name"]]
    text = '"' + "[" * DEPTH + '\\"{' * 10 + '"'
    response = call(
        service_app,
        "POST",
        path,
        token("u1", *ADMIN),
        data='{"title": ' + text + "}",
        content_type="application/json",
    )
    assert response.status_code in (400, 422), response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] != "json_too_deep"


def test_nesting_depth_reads_brackets_outside_strings() -> None:
    assert nesting_depth(b'{"a": [1, {"b": "]]]]"}], "c": "[[\\"[["}') == 3
    assert nesting_depth(b'"[[["') == 0
    assert nesting_depth(json.dumps([[[]] * 3] * 2).encode()) == 3


def test_a_token_whose_header_nests_deep_is_401(service_app: Flask) -> None:
    header = base64.urlsafe_b64encode(deep("arrays")).rstrip(b"=").decode()
    forged = f"{header}.e30.c2ln"
    response = call(service_app, "GET", "/api/v1/no-such-route-needs-no-token", forged)
    assert response.status_code == 404
    path = {
        "portal": "/api/v1/me",
        "dataset_service": "/api/v1/projects",
        "tracer": "/api/v1/log/entries",
    }[service_app.extensions["test.name"]]
    assert_error(call(service_app, "GET", path, forged), 401, "token_invalid")


def test_a_body_at_the_depth_limit_is_parsed(service_app: Flask, token: Callable[..., str]) -> None:
    path = BODY_ROUTES[service_app.extensions["test.name"]]
    at_limit = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    response = call(
        service_app,
        "POST",
        path,
        token("u1", *ADMIN),
        data=at_limit,
        content_type="application/json",
    )
    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize("value", [str(2**64), str(10**30), str(-(2**63) - 1)])
@pytest.mark.parametrize("name,path,param", INTEGER_QUERIES)
def test_integers_beyond_64_bits_in_queries_are_422(
    make_app: Callable[[str], Flask],
    token: Callable[..., str],
    name: str,
    path: str,
    param: str,
    value: str,
) -> None:
    app = make_app(name)
    joiner = "&" if "?" in path else "?"
    response = call(app, "GET", f"{path}{joiner}{param}={value}", token("u1", *ADMIN))
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] in ("out_of_range", "validation_error")
    assert response.get_json()["error"]["field"] == param


@pytest.mark.parametrize("value", ["1e26", "-1e26", "1.5", "-5"])
def test_float_and_negative_sequence_numbers_are_422(
    make_app: Callable[[str], Flask], value: str
) -> None:
    response = call(make_app("tracer"), "GET", f"/api/v1/checkpoints?before={value}")
    assert_error(response, 422, "validation_error", "before")


def test_nul_characters_are_422_before_any_database_sees_them(
    service_app: Flask, token: Callable[..., str]
) -> None:
    name = service_app.extensions["test.name"]
    bodies = {
        "portal": {"grant_type": "password", "username": "a\x00b", "password": "x"},
        "dataset_service": {"name": "lung", "title": "Lu\x00ng"},
    }
    if name == "tracer":  # its bodies are patterns throughout; its queries are free text
        response = call(service_app, "GET", "/api/v1/traces?actor=u%001", token("u1", *ADMIN))
        assert_error(response, 422, "invalid_character", "actor")
    else:
        field = {"portal": "username", "dataset_service": "title"}[name]
        response = call(
            service_app, "POST", BODY_ROUTES[name], token("u1", *ADMIN), json=bodies[name]
        )
        assert_error(response, 422, "invalid_character", field)
    unknown = {
        "portal": "/api/v1/users/a%00b",
        "dataset_service": "/api/v1/projects/a%00b",
        "tracer": "/api/v1/traces/a%00b",
    }[name]
    assert call(service_app, "GET", unknown, token("u1", *ADMIN)).status_code in (404, 422)


def test_openapi_bounds_every_integer(service_app: Flask) -> None:
    spec = call(service_app, "GET", "/api/v1/openapi.json").get_json()
    unbounded: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer" and not (
                {"minimum", "exclusiveMinimum"} & set(node)
                and {"maximum", "exclusiveMaximum"} & set(node)
            ):
                unbounded.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(spec, "")
    assert not unbounded
    params = [
        p
        for op in spec["paths"].values()
        for entry in op.values()
        for p in entry.get("parameters", ())
    ]
    typed = {p["name"]: p["schema"] for p in params if p["in"] == "query"}
    if service_app.extensions["test.name"] == "tracer":
        assert typed["after"]["type"] == "integer", "query parameters carry their real types"


def test_list_endpoints_are_declared_as_arrays(
    service_app: Flask, token: Callable[..., str]
) -> None:
    path = {"portal": "/api/v1/users", "dataset_service": "/api/v1/projects", "tracer": None}[
        service_app.extensions["test.name"]
    ]
    if path is None:
        pytest.skip("the tracer's lists are objects with a next page")
    spec = call(service_app, "GET", "/api/v1/openapi.json").get_json()
    schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
    assert schema["schema"]["type"] == "array"
    assert isinstance(call(service_app, "GET", path, token("u1", *ADMIN)).get_json(), list)


def test_timestamps_read_back_in_utc_with_their_offset(
    make_app: Callable[[str], Flask], token: Callable[..., str]
) -> None:
    app = make_app("dataset_service")
    steward = auth(token("steward-1", "steward"))
    created = app.test_client().post(
        "/api/v1/projects", headers=steward, json={"name": "lung", "title": "Lung"}
    )
    assert created.status_code == 201, created.get_json()
    again = (
        app.test_client()
        .get(f"/api/v1/projects/{created.get_json()['id']}", headers=steward)
        .get_json()
    )
    when = datetime.fromisoformat(again["created_at"])
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0
    assert again["created_at"] == created.get_json()["created_at"]


def test_every_timestamp_column_is_utc_on_every_database() -> None:
    naive = []
    for name in SERVICES:
        app_factory(service(name))  # every model of the service, registered on its Base
        models = importlib.import_module(f"{name}.models")
        for table in models.Base.metadata.tables.values():
            for column in table.columns:
                if isinstance(column.type, sa.DateTime) or (
                    isinstance(column.type, sa.types.TypeDecorator)
                    and not isinstance(column.type, UtcDateTime)
                    and isinstance(column.type.impl, sa.DateTime)
                ):
                    naive.append(f"{name}: {table.name}.{column.name}")
    assert not naive, "timestamp columns use vre.db.UtcDateTime"


def test_a_lone_surrogate_is_422(
    make_app: Callable[[str], Flask], token: Callable[..., str]
) -> None:
    app = make_app("dataset_service")
    body = b'{"name": "lung", "title": "Lu\\ud800ng"}'
    response = call(
        app,
        "POST",
        "/api/v1/projects",
        token("u1", *ADMIN),
        data=body,
        content_type="application/json",
    )
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["error"]["field"] == "title"
