"""The portal's sign-in, token issuing and page security."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from portal.accounts import create_account, ensure_admin
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


def _sign_in(client, username: str, password: str, address: str = "10.0.0.1") -> tuple:
    """The form's and the token endpoint's answers to one sign-in, from an address."""
    form = client.post("/signin", data={"username": username, "password": password,
                                        "csrf_token": csrf_of(client)},
                       environ_base={"REMOTE_ADDR": address})
    api = client.post("/api/v1/tokens", json={
        "grant_type": "password", "username": username, "password": password},
        environ_base={"REMOTE_ADDR": address})
    message = form.get_data(as_text=True).split('role="alert"')[-1][:200] \
        if form.status_code != 302 else None
    return form.status_code, message, api.status_code, api.get_json()["error"] \
        if api.status_code != 200 else None


def test_sign_in_does_not_tell_unknown_names_wrong_passwords_or_disabled_accounts(
        portal: Flask) -> None:
    with portal.extensions["vre.db"].session() as session:
        user, _ = create_account(session, "gone", password="the-right-password")
        user.active = False
    client = portal.test_client()
    unknown = _sign_in(client, "nobody", "the-right-password")
    wrong = _sign_in(client, "admin", "not-the-password")
    disabled = _sign_in(client, "gone", "the-right-password")
    assert unknown[0] == 401 and unknown[2] == 401
    assert unknown[3]["code"] == "invalid_credentials"
    assert unknown == wrong == disabled


def test_wrong_passwords_never_lock_the_owner_out(portal: Flask) -> None:
    attacker, owner = portal.test_client(), portal.test_client()
    answers = [_sign_in(attacker, "admin", f"guess-{n}", "10.6.6.6")[2] for n in range(8)]
    assert answers[:5] == [401] * 5 and answers[-1] == 429, answers
    assert _sign_in(owner, "admin", "a-good-password", "10.0.0.2")[0] == 302


def test_sign_in_is_throttled_by_address_and_by_address_and_name(portal: Flask) -> None:
    config = portal.extensions["vre.config"]
    client = portal.test_client()

    def grant(username: str, address: str) -> int:
        return client.post("/api/v1/tokens", json={
            "grant_type": "password", "username": username, "password": "wrong-password"},
            environ_base={"REMOTE_ADDR": address}).status_code

    per_name = [grant("admin", "10.1.1.1") for _ in range(config.signin_limit_per_user + 1)]
    assert per_name[-1] == 429 and set(per_name[:-1]) == {401}
    assert grant("someone-else", "10.1.1.1") == 401  # the address is not spent yet
    spent = [grant(f"name-{n}", "10.2.2.2") for n in range(config.signin_limit_per_address + 1)]
    assert spent[-1] == 429 and set(spent[:-1]) == {401}
    throttled = client.post("/api/v1/tokens", json={
        "grant_type": "password", "username": "x-1", "password": "wrong-password"},
        environ_base={"REMOTE_ADDR": "10.2.2.2"})
    assert throttled.get_json()["error"]["code"] == "rate_limited"
    assert int(throttled.headers["Retry-After"]) >= 1


def test_the_client_credentials_grant_is_throttled(portal: Flask) -> None:
    client = portal.test_client()
    limit = portal.extensions["vre.config"].signin_limit_per_user
    answers = [client.post("/api/v1/tokens", json={
        "grant_type": "client_credentials", "client_id": "tracer",
        "client_secret": f"guess-{n}" * 8}).status_code for n in range(limit + 1)]
    assert answers[-1] == 429 and set(answers[:-1]) == {401}


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
