"""Every service answers bad input with the one error model and a stable code."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from flask import Flask

from tests.helpers import auth
from vre.tokens import TokenIssuer

# (service, method, path that needs a token, roles that may call it, a valid-shaped body)
PROTECTED = {
    "portal": ("GET", "/api/v1/me", ("researcher",), None),
    "dataset_service": ("POST", "/api/v1/projects", ("steward",),
                        {"name": "lung", "title": "Lung"}),
    "tracer": ("POST", "/api/v1/traces", ("service",),
               {"actor": "u1", "action": "CREATE_DATASET"}),
}
WRONG_TYPE = {
    "portal": ("/api/v1/tokens", {"grant_type": 5}, "grant_type"),
    "dataset_service": ("/api/v1/projects", {"name": 5, "title": "x"}, "name"),
    "tracer": ("/api/v1/traces", {"actor": "u1", "action": "CREATE_DATASET",
                                  "datasets": "not-a-list"}, "datasets"),
}
UNKNOWN_ID = {
    "portal": "/api/v1/users/{id}",
    "dataset_service": "/api/v1/projects/{id}",
    "tracer": "/api/v1/traces/{id}",
}
ADMIN = ("admin", "steward", "researcher", "auditor", "service")
SERVICES = list(PROTECTED)


@pytest.fixture(params=SERVICES)
def service_app(request: pytest.FixtureRequest, make_app: Callable[[str], Flask]) -> Flask:
    app = make_app(request.param)
    app.extensions["test.name"] = request.param
    return app


def call(app: Flask, method: str, path: str, token: str | None = None, **kw: object):
    headers = auth(token) if token else {}
    return app.test_client().open(path, method=method, headers=headers, **kw)


def assert_error(response, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if field is not None:
        assert body["error"]["field"] == field
    assert response.headers["X-Request-ID"]


def test_probes_answer(service_app: Flask) -> None:
    client = service_app.test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["status"] == "ready"
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert spec["paths"], "the OpenAPI document lists the service's endpoints"
    assert "#/components/schemas/Error" in str(spec)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "vre_http_requests_total" in metrics


def test_malformed_json_is_400(service_app: Flask, token: Callable[..., str]) -> None:
    name = service_app.extensions["test.name"]
    path, _, _ = WRONG_TYPE[name]
    response = call(service_app, "POST", path, token("u1", *ADMIN), data=b'{"oops": ',
                    content_type="application/json")
    assert_error(response, 400, "malformed_json")


def test_wrong_type_is_422_naming_the_field(service_app: Flask,
                                            token: Callable[..., str]) -> None:
    name = service_app.extensions["test.name"]
    path, body, field = WRONG_TYPE[name]
    response = call(service_app, "POST", path, token("u1", *ADMIN), json=body)
    assert_error(response, 422, "validation_error", field)


def test_unknown_id_is_404(service_app: Flask, token: Callable[..., str]) -> None:
    name = service_app.extensions["test.name"]
    path = UNKNOWN_ID[name].format(id=uuid.uuid4())
    assert_error(call(service_app, "GET", path, token("u1", *ADMIN)), 404, "not_found")


def test_unknown_route_is_404_json(service_app: Flask) -> None:
    assert_error(call(service_app, "GET", "/api/v1/no-such-thing"), 404, "not_found")


def test_missing_token_is_401(service_app: Flask) -> None:
    method, path, _, body = PROTECTED[service_app.extensions["test.name"]]
    response = call(service_app, method, path, json=body)
    assert_error(response, 401, "token_missing")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_expired_token_is_401(service_app: Flask, issuer: TokenIssuer) -> None:
    method, path, roles, body = PROTECTED[service_app.extensions["test.name"]]
    expired, _ = issuer.issue("u1", list(roles), exp=int(time.time()) - 120)
    assert_error(call(service_app, method, path, expired, json=body), 401, "token_expired")


def test_wrongly_signed_token_is_401(service_app: Flask, rogue_issuer: TokenIssuer) -> None:
    method, path, roles, body = PROTECTED[service_app.extensions["test.name"]]
    forged, _ = rogue_issuer.issue("u1", list(roles))
    assert_error(call(service_app, method, path, forged, json=body), 401, "token_invalid")


def test_tampered_token_is_401(service_app: Flask, token: Callable[..., str]) -> None:
    method, path, roles, body = PROTECTED[service_app.extensions["test.name"]]
    good = token("u1", *roles)
    head, payload, sig = good.split(".")
    tampered = f"{head}.{payload[:-2]}AA.{sig}"
    assert_error(call(service_app, method, path, tampered, json=body), 401, "token_invalid")


def test_wrong_audience_is_401(service_app: Flask, issuer: TokenIssuer) -> None:
    method, path, roles, body = PROTECTED[service_app.extensions["test.name"]]
    other, _ = issuer.issue("u1", list(roles), aud="someone-else")
    assert_error(call(service_app, method, path, other, json=body), 401, "token_invalid")


def test_oversized_body_is_413(service_app: Flask, token: Callable[..., str]) -> None:
    name = service_app.extensions["test.name"]
    path, _, _ = WRONG_TYPE[name]
    limit = service_app.config["MAX_CONTENT_LENGTH"]
    big = b'{"x": "' + b"a" * (limit + 10) + b'"}'
    response = call(service_app, "POST", path, token("u1", *ADMIN), data=big,
                    content_type="application/json")
    assert_error(response, 413, "body_too_large")


def test_wrong_media_type_is_415(service_app: Flask, token: Callable[..., str]) -> None:
    path, _, _ = WRONG_TYPE[service_app.extensions["test.name"]]
    response = call(service_app, "POST", path, token("u1", *ADMIN), data=b"a=b",
                    content_type="application/x-www-form-urlencoded")
    # The portal's token endpoint is JSON too; forms are refused everywhere in the API.
    assert response.status_code in (400, 415)
    assert response.get_json()["error"]["code"] in ("unsupported_media_type", "csrf_failed")


def test_method_not_allowed_is_405(service_app: Flask) -> None:
    assert_error(call(service_app, "DELETE", "/healthz"), 405, "method_not_allowed")


def test_request_id_is_echoed(service_app: Flask) -> None:
    response = service_app.test_client().get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
