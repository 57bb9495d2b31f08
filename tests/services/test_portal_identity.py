"""Local accounts in the portal: argon2 hashes, password change, accounts made by
administrators, sign-in rate limits (and no lock-out), session cookies and the token for
services."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

import portal.app
from portal.accounts import (
    SignInError,
    authenticate,
    ensure_admin,
    verify_password,
)
from portal.identity import Identity, access_token, identity_of
from portal.identity.local import LocalIdentity
from portal.models import User
from portal.ratelimit import SlidingWindow
from tests.helpers import auth, request_as
from vre.config import Config
from vre.errors import ApiError

PASSWORD = "a-good-password"


@pytest.fixture
def app(make_app: Callable[[str], Flask]) -> Flask:
    application = make_app("portal")
    with application.extensions["vre.db"].session() as db:
        ensure_admin(db, "admin", PASSWORD)
    return application


@pytest.fixture
def limited(config: Config) -> Iterator[Callable[..., Flask]]:
    """A portal with tighter sign-in limits."""
    made: list[Flask] = []

    def make(**limits: int) -> Flask:
        cfg = config.model_copy(update=limits)
        application = portal.app.create_app(cfg)
        application.extensions["vre.db"].migrate(cfg, "portal")
        application.testing = True
        with application.extensions["vre.db"].session() as db:
            ensure_admin(db, "admin", PASSWORD)
        made.append(application)
        return application

    yield make
    for application in made:
        application.extensions["vre.db"].engine.dispose()


def csrf_of(client: FlaskClient, path: str = "/signin") -> str:
    page = client.get(path).get_data(as_text=True)
    return page.split('name="csrf_token" value="')[1].split('"')[0]


def sign_in(client: FlaskClient, username: str = "admin", password: str = PASSWORD) -> int:
    return client.post("/signin", data={"username": username, "password": password,
                                        "csrf_token": csrf_of(client)}).status_code


def user_named(app: Flask, username: str) -> User:
    with app.extensions["vre.db"].session() as db:
        return db.scalar(sa.select(User).where(User.username == username))


def test_local_identity_is_the_default(app: Flask) -> None:
    identity = identity_of(app)
    assert isinstance(identity, LocalIdentity) and isinstance(identity, Identity)
    assert identity.manages_passwords


def test_passwords_are_stored_as_argon2id(app: Flask) -> None:
    stored = user_named(app, "admin").password_hash
    assert stored is not None and stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert verify_password(stored, PASSWORD) and not verify_password(stored, "wrong")


def test_an_old_werkzeug_hash_still_signs_in_and_is_rehashed(app: Flask) -> None:
    with app.extensions["vre.db"].session() as db:
        db.execute(sa.update(User).values(
            password_hash=generate_password_hash("an-older-password")))
    assert not user_named(app, "admin").password_hash.startswith("$argon2")
    client = app.test_client()
    assert sign_in(client, password="wrong-password") == 401
    assert not user_named(app, "admin").password_hash.startswith("$argon2")
    assert sign_in(client, password="an-older-password") == 302
    upgraded = user_named(app, "admin").password_hash
    assert upgraded.startswith("$argon2id$") and verify_password(upgraded, "an-older-password")


def test_failures_elsewhere_never_lock_the_account(app: Flask) -> None:
    attacker = app.test_client()
    for _ in range(12):
        attacker.post("/api/v1/tokens", environ_base={"REMOTE_ADDR": "10.6.6.6"}, json={
            "grant_type": "password", "username": "admin", "password": "wrong-password"})
    assert sign_in(app.test_client()) == 302


def test_unknown_user_and_wrong_password_read_the_same(app: Flask) -> None:
    client = app.test_client()
    token = csrf_of(client)
    unknown = client.post("/signin", data={"username": "nobody", "password": "x" * 12,
                                           "csrf_token": token})
    wrong = client.post("/signin", data={"username": "admin", "password": "x" * 12,
                                         "csrf_token": token})
    assert unknown.status_code == wrong.status_code == 401
    assert "wrong user name or password" in unknown.get_data(as_text=True)
    assert "wrong user name or password" in wrong.get_data(as_text=True)


def test_sign_in_attempts_per_address_and_name_are_rate_limited(
        limited: Callable[..., Flask]) -> None:
    app = limited(signin_limit_per_user=3)
    client = app.test_client()
    token = csrf_of(client)
    for _ in range(3):
        assert client.post("/signin", data={"username": "Nobody", "password": "wrong-pw",
                                             "csrf_token": token}).status_code == 401
    page = client.post("/signin", data={"username": "nobody", "password": "wrong-pw",
                                        "csrf_token": token})
    assert page.status_code == 429 and int(page.headers["Retry-After"]) >= 1
    assert "rate_limited" in page.get_data(as_text=True)
    api = client.post("/api/v1/tokens", json={
        "grant_type": "password", "username": "nobody", "password": "wrong-pw"})
    assert api.status_code == 429 and api.headers["Retry-After"]
    assert api.get_json()["error"]["code"] == "rate_limited"
    # other names from the same address, and the same name from elsewhere, are still served
    assert sign_in(client) == 302
    elsewhere = app.test_client()
    assert elsewhere.post("/signin", environ_base={"REMOTE_ADDR": "10.0.0.9"}, data={
        "username": "nobody", "password": "wrong-pw",
        "csrf_token": csrf_of(elsewhere)}).status_code == 401


def test_sign_in_attempts_per_address_are_rate_limited(limited: Callable[..., Flask]) -> None:
    app = limited(signin_limit_per_address=2)
    client = app.test_client()
    token = csrf_of(client)
    for name in ("a1", "a2"):
        assert client.post("/signin", data={"username": name, "password": "wrong-pw",
                                            "csrf_token": token}).status_code == 401
    blocked = client.post("/signin", data={"username": "admin", "password": PASSWORD,
                                           "csrf_token": token})
    assert blocked.status_code == 429
    elsewhere = client.post("/signin", environ_base={"REMOTE_ADDR": "10.0.0.9"},
                            data={"username": "admin", "password": PASSWORD,
                                  "csrf_token": token})
    assert elsewhere.status_code == 302


def test_sliding_window_forgets_old_attempts() -> None:
    now = [0.0]
    window = SlidingWindow(2, window=60, clock=lambda: now[0])
    assert window.hit("k") == 0 and window.hit("k") == 0
    assert window.hit("k") == pytest.approx(60)
    now[0] = 30.0
    assert window.hit("k") == pytest.approx(30) and window.hit("other") == 0
    now[0] = 60.0
    assert window.hit("k") == 0


def test_password_change_needs_the_current_password(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/account/password").status_code == 302  # sign in first
    assert sign_in(client) == 302
    token = csrf_of(client, "/account/password")

    def change(current: str, new: str, confirm: str | None = None, **extra: str) -> object:
        return client.post("/account/password", data={
            "current_password": current, "new_password": new,
            "confirm_password": new if confirm is None else confirm, "csrf_token": token,
            **extra})

    wrong = change("not-my-password", "a-brand-new-password")
    assert wrong.status_code == 401 and "current password is wrong" in wrong.get_data(
        as_text=True)
    assert change(PASSWORD, "short").status_code == 422
    assert change(PASSWORD, "a-brand-new-password", "something-else").status_code == 422
    assert change(PASSWORD, PASSWORD).status_code == 422
    done = change(PASSWORD, "a-brand-new-password")
    assert done.status_code == 200 and "was changed" in done.get_data(as_text=True)

    fresh = app.test_client()
    assert sign_in(fresh) == 401
    assert sign_in(fresh, password="a-brand-new-password") == 302


def test_a_new_password_ends_every_other_session(app: Flask) -> None:
    here, elsewhere = app.test_client(), app.test_client()
    assert sign_in(here) == 302 and sign_in(elsewhere) == 302
    assert elsewhere.get("/account/password").status_code == 200
    done = here.post("/account/password", data={
        "current_password": PASSWORD, "new_password": "a-brand-new-password",
        "confirm_password": "a-brand-new-password",
        "csrf_token": csrf_of(here, "/account/password")})
    assert done.status_code == 200 and "was changed" in done.get_data(as_text=True)
    assert here.get("/account/password").status_code == 200, "this session goes on"
    ended = elsewhere.get("/account/password")
    assert ended.status_code == 302 and "/signin" in ended.headers["Location"]
    assert sign_in(elsewhere, password="a-brand-new-password") == 302
    assert elsewhere.get("/account/password").status_code == 200


def test_password_change_without_csrf_token_is_refused(app: Flask) -> None:
    client = app.test_client()
    assert sign_in(client) == 302
    response = client.post("/account/password", data={
        "current_password": PASSWORD, "new_password": "a-brand-new-password",
        "confirm_password": "a-brand-new-password"})
    assert response.status_code == 400 and "csrf_failed" in response.get_data(as_text=True)
    assert verify_password(user_named(app, "admin").password_hash, PASSWORD)


def admin_token(client: FlaskClient) -> str:
    return client.post("/api/v1/tokens", json={
        "grant_type": "password", "username": "admin", "password": PASSWORD,
    }).get_json()["access_token"]


def test_administrator_creates_an_account(app: Flask, token: Callable[..., str]) -> None:
    client = app.test_client()
    admin = admin_token(client)
    created = client.post("/api/v1/users", headers=auth(admin), json={
        "username": "carol", "display_name": "Carol", "email": "carol@example.org",
        "roles": ["researcher", "steward"]})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["username"] == "carol" and body["roles"] == ["researcher", "steward"]
    assert body["identity_provider"] == "local" and body["groups"] == []
    generated = body["initial_password"]
    assert generated and len(generated) >= 16
    assert user_named(app, "carol").password_hash.startswith("$argon2id$")
    assert sign_in(app.test_client(), "carol", generated) == 302

    given = client.post("/api/v1/users", headers=auth(admin), json={
        "username": "dave", "password": "daves-own-password"})
    assert given.status_code == 201 and given.get_json()["initial_password"] is None
    assert given.get_json()["roles"] == ["researcher"]


@pytest.mark.parametrize("body,status,code,field", [
    ({"username": "admin"}, 409, "username_taken", "username"),
    ({"username": "Bad Name"}, 422, "validation_error", "username"),
    ({"username": "erin", "roles": ["root"]}, 422, "validation_error", "roles.0"),
    ({"username": "erin", "password": "short"}, 422, "weak_password", "password"),
    ({"username": "erin", "is_admin": True}, 422, "unknown_field", "is_admin"),
])
def test_account_creation_refuses_bad_requests(app: Flask, body: dict, status: int,
                                               code: str, field: str) -> None:
    client = app.test_client()
    response = client.post("/api/v1/users", headers=auth(admin_token(client)), json=body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]["code"] == code
    assert response.get_json()["error"]["field"] == field


def test_only_administrators_create_accounts(app: Flask, token: Callable[..., str]) -> None:
    client = app.test_client()
    response = client.post("/api/v1/users", headers=auth(token("u2", "researcher", "steward")),
                           json={"username": "mallory"})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    assert client.post("/api/v1/users", json={"username": "mallory"}).status_code == 401
    assert user_named(app, "mallory") is None


def test_access_token_for_the_signed_in_user(app: Flask) -> None:
    client = app.test_client()
    assert sign_in(client) == 302
    with request_as(app, client):
        first = access_token()
        # held in the session, not signed again on every call
        assert access_token() == first
    me = client.get("/api/v1/me", headers=auth(first)).get_json()
    admin = user_named(app, "admin")
    assert me["subject"] == admin.id and me["client"] == "vre-portal"
    assert set(me["roles"]) == {"admin", "steward", "researcher", "auditor"}


def test_access_token_needs_a_signed_in_user(app: Flask) -> None:
    with app.test_request_context("/"), pytest.raises(ApiError) as refused:
        access_token()
    assert refused.value.code == "not_signed_in" and refused.value.status == 401


def test_session_cookie_flags(config: Config) -> None:
    cfg = config.model_copy(update={"portal_url": "https://vre.example"})
    app = portal.app.create_app(cfg)
    app.extensions["vre.db"].migrate(cfg, "portal")
    try:
        client = app.test_client()
        response = client.get("/signin", base_url="https://vre.example")  # sets a CSRF token
        cookie = response.headers["Set-Cookie"]
        assert "vre_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert "Secure" in cookie
    finally:
        app.extensions["vre.db"].engine.dispose()


def test_authenticate_ignores_accounts_of_the_provider(app: Flask) -> None:
    with app.extensions["vre.db"].session() as db:
        db.add(User(username="ext", identity_provider="http://kc/realms/vre",
                    external_subject="s", password_hash=None, roles=["admin"]))
    with app.extensions["vre.db"].session() as db, pytest.raises(SignInError) as refused:
        authenticate(db, "ext", "")
    assert refused.value.code == "invalid_credentials"
