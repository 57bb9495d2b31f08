"""A desktop's token is the desktop's, not its owner's: every JSON route of every service is
called with a workload token, and only the routes that declare a workload scope answer it.
Everywhere else it is refused before any work (403 token_scope), or, on public routes, seen
as no token at all. A person's own token (no platform scope) keeps every route it had."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from tests.helpers import auth
from vre.api import PUBLIC, Operation
from vre.tokens import WORKLOAD_SCOPE, WORKLOAD_SCOPES

SERVICES = ("portal", "dataset_service", "tracer")
# What code inside a desktop may reach: who it is, the catalogues `vre-job` reads, its
# owner's quota, its own desktop, the jobs it submits and the exports it asks for. Anything
# added here is a deliberate widening of what a sandbox can do.
WORKLOAD_ROUTES = {
    ("portal", "POST", "/api/v1/exports"),
    ("portal", "GET", "/api/v1/exports"),
    ("portal", "GET", "/api/v1/exports/<export_id>"),
    ("portal", "POST", "/api/v1/exports/<export_id>/submit"),
    ("portal", "POST", "/api/v1/exports/<export_id>/withdraw"),
    ("portal", "POST", "/api/v1/jobs"),
    ("portal", "GET", "/api/v1/jobs"),
    ("portal", "GET", "/api/v1/jobs/<job_id>"),
    ("portal", "GET", "/api/v1/jobs/<job_id>/logs"),
    ("portal", "POST", "/api/v1/jobs/<job_id>/cancel"),
    ("portal", "GET", "/api/v1/jobs/<job_id>/outputs"),
    ("portal", "GET", "/api/v1/me"),
    ("portal", "GET", "/api/v1/flavors"),
    ("portal", "GET", "/api/v1/flavors/<name>"),
    ("portal", "GET", "/api/v1/applications"),
    ("portal", "GET", "/api/v1/applications/<app_id>"),
    ("portal", "GET", "/api/v1/quota"),
    ("portal", "GET", "/api/v1/desktops/<desktop_id>"),
}


def routes(app: Flask) -> Iterator[tuple[str, str, Operation]]:
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        operation = getattr(view, "operation", None)
        if operation is None:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, rule.rule, operation


def concrete(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: f"{m.group(1)}-x", rule)


@pytest.fixture
def apps(make_app: Callable[[str], Flask]) -> dict[str, Flask]:
    return {name: make_app(name) for name in SERVICES}


def test_the_workload_routes_are_exactly_those_declared(apps: dict[str, Flask]) -> None:
    declared = {(name, method, rule) for name, app in apps.items()
                for method, rule, op in routes(app) if op.scopes}
    assert declared == WORKLOAD_ROUTES


@pytest.mark.parametrize("service", SERVICES)
def test_a_workload_token_is_refused_on_every_other_route(
        apps: dict[str, Flask], token: Callable[..., str], service: str) -> None:
    app = apps[service]
    workload = auth(token("alice", "researcher", "steward", "admin",
                          scope=" ".join(sorted(WORKLOAD_SCOPES)), wid="d0123456789abcdef"))
    client = app.test_client()
    checked = 0
    for method, rule, op in routes(app):
        if (service, method, rule) in WORKLOAD_ROUTES:
            continue
        answer = client.open(concrete(rule), method=method, headers=workload, json={})
        body: dict[str, Any] = answer.get_json(silent=True) or {}
        code = (body.get("error") or {}).get("code")
        if op.roles == PUBLIC:
            # Seen as anonymous: whatever it answers, it answers as to no token at all.
            anonymous = client.open(concrete(rule), method=method, json={})
            assert answer.status_code == anonymous.status_code, (method, rule, body)
        else:
            assert (answer.status_code, code) == (403, "token_scope"), (method, rule, body)
        checked += 1
    assert checked, "no route was found to check"


def test_a_persons_token_is_not_limited_by_scopes(apps: dict[str, Flask],
                                                   token: Callable[..., str]) -> None:
    client = apps["portal"].test_client()
    for scope in (None, "openid profile email"):  # Keycloak's tokens carry OIDC scopes
        extra = {"scope": scope} if scope else {}
        users = client.get("/api/v1/users", headers=auth(token("admin-1", "admin", **extra)))
        assert users.status_code == 200, users.get_json()


def test_a_workload_token_reaches_what_it_declares(apps: dict[str, Flask],
                                                   token: Callable[..., str]) -> None:
    client = apps["portal"].test_client()
    workload = auth(token("alice", "researcher", scope=" ".join(sorted(WORKLOAD_SCOPES)),
                          wid="d0123456789abcdef"))
    me = client.get("/api/v1/me", headers=workload)
    assert me.status_code == 200 and me.get_json()["subject"] == "alice"
    assert client.get("/api/v1/flavors", headers=workload).status_code == 200
    # Another desktop of the same owner is not this token's.
    other = client.get("/api/v1/desktops/d1111111111111111", headers=workload)
    assert other.status_code == 404, other.get_json()


def test_the_openapi_documents_name_the_scopes(apps: dict[str, Flask]) -> None:
    document = apps["portal"].test_client().get("/api/v1/openapi.json").get_json()
    assert document["paths"]["/api/v1/me"]["get"]["x-scopes"] == [WORKLOAD_SCOPE]
    assert "x-scopes" not in document["paths"]["/api/v1/users"]["get"]
