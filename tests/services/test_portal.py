"""The portal's sign-in, token issuing and page security."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from portal.accounts import MAX_FAILED_LOGINS, ensure_admin
from tests.helpers import auth
from vre.services import derive_service_secret


@pytest.fixture
def portal(make_app: Callable[[str], Flask]) -> Flask:
    app = make_app("portal")
    with app.extensions["vre.db"].session() as session:
        ensure_admin(session, "admin", "a-good-password")
    return app


def csrf_of(client) -> str:
    page = client.get("/signin").get_data(as_text=True)
    return page.split('name="csrf_token" value="')[1].split('"')[0]


def test_home_page_renders_with_security_headers(portal: Flask) -> None:
    response = portal.test_client().get("/")
    assert response.status_code == 200
    assert "In-situ VRE" in response.get_data(as_text=True)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"


def test_sign_in_with_a_local_account(portal: Flask) -> None:
    client = portal.test_client()
    response = client.post("/signin", data={"username": "admin", "password": "a-good-password",
                                            "csrf_token": csrf_of(client)})
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Signed in as" in client.get("/").get_data(as_text=True)


def test_sign_in_without_csrf_token_is_refused(portal: Flask) -> None:
    client = portal.test_client()
    client.get("/signin")
    response = client.post("/signin", data={"username": "admin",
                                            "password": "a-good-password"})
    assert response.status_code == 400
    assert "csrf_failed" in response.get_data(as_text=True)


def test_repeated_failures_lock_the_account(portal: Flask) -> None:
    client = portal.test_client()
    token = csrf_of(client)
    for _ in range(MAX_FAILED_LOGINS):
        bad = client.post("/signin", data={"username": "admin", "password": "wrong",
                                           "csrf_token": token})
        assert bad.status_code == 401
    locked = client.post("/signin", data={"username": "admin", "password": "a-good-password",
                                          "csrf_token": token})
    assert locked.status_code == 401
    assert "locked" in locked.get_data(as_text=True)


def test_open_redirects_are_not_followed(portal: Flask) -> None:
    client = portal.test_client()
    response = client.post("/signin?next=//evil.example/x", data={
        "username": "admin", "password": "a-good-password", "csrf_token": csrf_of(client)})
    assert response.headers["Location"] == "/"


def test_service_gets_a_token_with_its_derived_secret(portal: Flask) -> None:
    secret = derive_service_secret(portal.extensions["vre.config"].secret_key, "tracer")
    client = portal.test_client()
    response = client.post("/api/v1/tokens", json={
        "grant_type": "client_credentials", "client_id": "tracer", "client_secret": secret})
    assert response.status_code == 200, response.get_json()
    token = response.get_json()["access_token"]
    me = client.get("/api/v1/me", headers=auth(token)).get_json()
    assert me == {"subject": "service:tracer", "roles": ["service"], "client": "tracer"}
    wrong = client.post("/api/v1/tokens", json={
        "grant_type": "client_credentials", "client_id": "tracer", "client_secret": "x" * 64})
    assert wrong.status_code == 401
    assert wrong.get_json()["error"]["code"] == "invalid_client"


def test_password_grant_and_admin_only_user_list(portal: Flask,
                                                 token: Callable[..., str]) -> None:
    client = portal.test_client()
    response = client.post("/api/v1/tokens", json={
        "grant_type": "password", "username": "admin", "password": "a-good-password"})
    admin = response.get_json()["access_token"]
    users = client.get("/api/v1/users", headers=auth(admin))
    assert [u["username"] for u in users.get_json()] == ["admin"]
    researcher = client.get("/api/v1/users", headers=auth(token("u2", "researcher")))
    assert researcher.status_code == 403
    assert researcher.get_json()["error"]["code"] == "forbidden"


def test_jwks_is_public(portal: Flask) -> None:
    keys = portal.test_client().get("/.well-known/jwks.json").get_json()["keys"]
    assert keys[0]["kty"] == "RSA" and keys[0]["kid"]
