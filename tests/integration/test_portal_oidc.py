"""Signing in to the portal through a real OpenID provider in Keycloak's URL layout.

The provider is npm's oidc-provider (tests/oidc/server.mjs), started as a subprocess;
python-keycloak talks to it unchanged. Needs ``npm install`` in the repository root; a
missing node or module fails the tests with that hint rather than skipping them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

import dataset_service.app
import portal.app
from dataset_service import datasets as ds
from dataset_service.models import Project, ProjectMember, RevokedUser
from portal.accounts import SignInError
from portal.clients import project_roles
from portal.identity import access_token, identity_of
from portal.identity.keycloak import KeycloakIdentity, groups_of, platform_roles
from portal.models import ProviderSession, Quota, User
from tests.helpers import auth, request_as, serving
from tests.oidc.provider import (
    CLIENT_ID,
    PORTAL_URL,
    USERS,
    OidcProvider,
    portal_path,
    running_provider,
    sign_in_at_provider,
)
from vre.config import Config, ConfigError, load_config
from vre.db import utcnow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with running_provider(tmp_path_factory.mktemp("oidc")) as running:
        yield running


def oidc_config(config: Config, provider: OidcProvider, **extra: Any) -> Config:
    """The test configuration, signing in at the provider and trusting its tokens."""
    values = {**config.model_dump(exclude_none=True), **provider.settings(),
              "portal_url": PORTAL_URL, **extra}
    values.pop("token_issuer", None)
    values.pop("jwks_url", None)
    return load_config(env={}, **values)


@pytest.fixture
def app(config: Config, provider: OidcProvider) -> Iterator[Flask]:
    cfg = oidc_config(config, provider)
    application = portal.app.create_app(cfg)
    application.extensions["vre.db"].migrate(cfg, "portal")
    application.testing = True
    yield application
    application.extensions["vre.db"].engine.dispose()


def start(client: FlaskClient, next_url: str = "/") -> str:
    """Ask the portal to sign in; the provider URL it redirects to."""
    response = client.get("/signin?" + urlencode({"next": next_url}))
    assert response.status_code == 302
    return response.headers["Location"]


def sign_in(client: FlaskClient, username: str = "alice",
            browser: requests.Session | None = None) -> Any:
    """The whole code flow: portal, provider's form, back to the portal's callback."""
    user = USERS[username]
    callback = sign_in_at_provider(start(client), username, user["password"], browser)
    return client.get(portal_path(callback))


def csrf_of(client: FlaskClient) -> str:
    page = client.get("/").get_data(as_text=True)
    return page.split('name="csrf_token" value="')[1].split('"')[0]


def stored_user(app: Flask, username: str) -> User:
    with app.extensions["vre.db"].session() as db:
        return db.scalar(sa.select(User).where(User.username == username))


def test_code_flow_with_pkce_signs_in_and_mirrors_the_account(
        app: Flask, provider: OidcProvider) -> None:
    client = app.test_client()
    location = start(client)
    query = parse_qs(urlsplit(location).query)
    assert location.startswith(provider.issuer + "/protocol/openid-connect/auth?")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["state"][0] and query["nonce"][0] and query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == [PORTAL_URL + "/signin/callback"]

    callback = sign_in_at_provider(location, "alice", USERS["alice"]["password"])
    response = client.get(portal_path(callback))
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert "Signed in as" in client.get("/").get_data(as_text=True)

    user = stored_user(app, "alice")
    alice = USERS["alice"]
    assert user.identity_provider == provider.issuer
    assert user.external_subject == alice["sub"] and user.id == alice["sub"]
    assert user.password_hash is None
    assert user.display_name == "Alice Researcher" and user.email == "alice@example.org"
    # realm role researcher, the portal client's role steward; other clients' roles ignored
    assert user.roles == ["researcher", "steward"]
    assert user.groups == ["/lung-ct", "/lung-ct/annotators"]


def test_access_token_is_the_providers_and_services_accept_it(app: Flask) -> None:
    client = app.test_client()
    sign_in(client)
    with request_as(app, client):
        token = access_token()
        assert access_token() == token  # held, not fetched again
    me = client.get("/api/v1/me", headers=auth(token)).get_json()
    assert me["subject"] == USERS["alice"]["sub"] and me["client"] == CLIENT_ID
    assert "researcher" in me["roles"]


def test_the_portals_own_service_token_comes_from_the_realm(app: Flask) -> None:
    token = app.extensions["portal.service_token"].token()
    assert app.extensions["portal.service_token"].token() == token, "held until near expiry"
    me = app.test_client().get("/api/v1/me", headers=auth(token)).get_json()
    assert "service" in me["roles"] and me["client"] == CLIENT_ID


def test_groups_make_project_memberships_at_the_dataset_service(
        config: Config, provider: OidcProvider) -> None:
    cfg = oidc_config(config, provider)
    datasets = dataset_service.app.create_app(cfg)
    datasets.extensions["vre.db"].migrate(cfg, "dataset_service")
    with datasets.extensions["vre.db"].session() as db:
        db.add(Project(name="lung-ct", title="Lung CT", created_by="admin"))
    with serving(datasets) as url:
        site = portal.app.create_app(cfg.model_copy(update={"dataset_url": url}))
        site.extensions["vre.db"].migrate(cfg, "portal")
        assert sign_in(site.test_client()).status_code == 302
        with datasets.extensions["vre.db"].session() as db:
            members = db.execute(sa.select(ProjectMember.user_id, ProjectMember.role)).all()
        assert members == [(USERS["alice"]["sub"], "researcher")], \
            "/lung-ct makes a researcher; /lung-ct/annotators means nothing to the platform"
        site.extensions["vre.db"].engine.dispose()
    datasets.extensions["vre.db"].engine.dispose()
    assert project_roles(["/a", "/a/stewards", "/b/x", "/c"]) == {"a": "steward",
                                                                   "c": "researcher"}


def test_the_token_stays_server_side_and_encrypted(app: Flask) -> None:
    client = app.test_client()
    sign_in(client)
    with request_as(app, client):
        token = access_token()
    cookie = client.get_cookie("vre_session").value
    assert token not in cookie and len(cookie) < 600
    with app.extensions["vre.db"].session() as db:
        rows = db.scalars(sa.select(ProviderSession)).all()
    # Stored encrypted: no part of the JWT (header, claims, signature) is in it. (Not "eyJ",
    # the start of any JSON object in base64: three letters random ciphertext also holds.)
    assert len(rows) == 1 and not any(part in rows[0].tokens for part in token.split("."))


def test_a_second_sign_in_updates_the_same_account(app: Flask) -> None:
    sign_in(app.test_client())
    with app.extensions["vre.db"].session() as db:
        user = db.scalar(sa.select(User).where(User.username == "alice"))
        user.roles, user.groups = ["admin"], []
    sign_in(app.test_client())
    user = stored_user(app, "alice")
    assert user.roles == ["researcher", "steward"] and user.groups
    with app.extensions["vre.db"].session() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(User)) == 1


def test_next_page_survives_the_round_trip_but_not_an_open_redirect(app: Flask) -> None:
    client = app.test_client()
    callback = sign_in_at_provider(start(client, "/account/password"), "bob",
                                   USERS["bob"]["password"])
    assert client.get(portal_path(callback)).headers["Location"] == "/account/password"
    other = app.test_client()
    callback = sign_in_at_provider(start(other, "//evil.example/x"), "bob",
                                   USERS["bob"]["password"])
    assert other.get(portal_path(callback)).headers["Location"] == "/"


def test_callback_with_a_wrong_state_is_refused(app: Flask) -> None:
    client = app.test_client()
    callback = sign_in_at_provider(start(client), "alice", USERS["alice"]["password"])
    parts = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["state"] = "forged-" + query["state"]
    forged = urlunsplit(parts._replace(query=urlencode(query)))
    response = client.get(portal_path(forged), headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "state_mismatch"
    assert stored_user(app, "alice") is None
    # the genuine answer is no good either now: a sign-in is tried once
    assert client.get(portal_path(callback)).status_code == 400


def test_callback_without_a_sign_in_started_here_is_refused(app: Flask) -> None:
    starter = app.test_client()
    callback = sign_in_at_provider(start(starter), "alice", USERS["alice"]["password"])
    victim = app.test_client()  # login CSRF: someone else's code pushed into this browser
    response = victim.get(portal_path(callback))
    assert response.status_code == 400 and "state_mismatch" in response.get_data(as_text=True)
    assert "Signed in as" not in victim.get("/").get_data(as_text=True)


def test_provider_error_is_shown_not_crashed_on(app: Flask) -> None:
    client = app.test_client()
    state = parse_qs(urlsplit(start(client)).query)["state"][0]
    response = client.get("/signin/callback?" + urlencode(
        {"error": "access_denied", "error_description": "user said no", "state": state}))
    assert response.status_code == 401 and "user said no" in response.get_data(as_text=True)


def _claims(provider: OidcProvider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "s-1", "iat": now,
              "exp": now + 300, "nonce": "the-nonce"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _tamper(token: str) -> str:
    head, body, sig = token.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    return ".".join([head, flipped, sig])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", ["tampered", "expired", "wrong_audience", "wrong_issuer",
                                  "wrong_nonce", "unknown_key", "no_subject", "not_a_jwt",
                                  "alg_none", "other_client_as_azp"])
def test_bad_id_tokens_are_refused(app: Flask, provider: OidcProvider, case: str) -> None:
    identity = identity_of(app)
    assert isinstance(identity, KeycloakIdentity)
    good = provider.sign(_claims(provider))
    assert identity.verify_id_token(good, nonce="the-nonce")["sub"] == "s-1"
    token = {
        "tampered": lambda: _tamper(good),
        "expired": lambda: provider.sign(_claims(provider, exp=int(time.time()) - 3600,
                                                 iat=int(time.time()) - 7200)),
        "wrong_audience": lambda: provider.sign(_claims(provider, aud="another-client")),
        "wrong_issuer": lambda: provider.sign(_claims(provider, iss="http://evil.example")),
        "wrong_nonce": lambda: good,
        "unknown_key": lambda: _foreign_key_token(provider),
        "no_subject": lambda: provider.sign(_claims(provider, sub=None)),
        "not_a_jwt": lambda: "not.a-jwt",
        "alg_none": lambda: _unsigned(provider),
        "other_client_as_azp": lambda: provider.sign(_claims(
            provider, aud=[CLIENT_ID, "another-client"], azp="another-client")),
    }[case]()
    nonce = "another-nonce" if case == "wrong_nonce" else "the-nonce"
    with pytest.raises(SignInError) as refused:
        identity.verify_id_token(token, nonce=nonce)
    assert refused.value.code == "id_token_invalid"


def _foreign_key_token(provider: OidcProvider) -> str:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(_claims(provider), key, algorithm="RS256", headers={"kid": "rogue"})


def _unsigned(provider: OidcProvider) -> str:
    import jwt
    return jwt.encode(_claims(provider), None, algorithm="none",
                      headers={"kid": provider.kid})


def test_refresh_renews_the_token_and_the_roles(app: Flask) -> None:
    client = app.test_client()
    sign_in(client)
    with request_as(app, client):
        first = access_token()
    with app.extensions["vre.db"].session() as db:
        db.execute(sa.update(ProviderSession).values(access_expires_at=utcnow()))
        db.execute(sa.update(User).values(roles=[], groups=[]))
    with request_as(app, client):
        renewed = access_token()
    assert renewed != first
    user = stored_user(app, "alice")
    assert user.roles == ["researcher", "steward"] and user.groups
    with app.extensions["vre.db"].session() as db:
        row = db.scalars(sa.select(ProviderSession)).one()
        assert row.access_expires_at.timestamp() > time.time() + 60
    assert app.test_client().get("/api/v1/me", headers=auth(renewed)).status_code == 200


def test_refresh_on_demand(app: Flask) -> None:
    client = app.test_client()
    sign_in(client)
    with request_as(app, client):
        first = access_token()
        identity_of(app).refresh(stored_user(app, "alice"))
        assert access_token() != first


def test_a_refused_refresh_ends_the_session(app: Flask) -> None:
    client = app.test_client()
    sign_in(client)
    identity = identity_of(app)
    assert isinstance(identity, KeycloakIdentity)
    with app.extensions["vre.db"].session() as db:
        row = db.scalars(sa.select(ProviderSession)).one()
        tokens = identity._open(row.tokens)
        row.tokens = identity._seal({**tokens, "refresh_token": "revoked-at-the-provider"})
        row.access_expires_at = utcnow()
    with request_as(app, client), pytest.raises(SignInError) as ended:
        access_token()
    assert ended.value.code == "session_expired" and ended.value.status == 401
    with app.extensions["vre.db"].session() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(ProviderSession)) == 0


def test_sign_out_ends_the_session_at_the_provider(app: Flask, provider: OidcProvider) -> None:
    browser = requests.Session()
    client = app.test_client()
    sign_in(client, browser=browser)
    identity = identity_of(app)
    assert isinstance(identity, KeycloakIdentity)
    with app.extensions["vre.db"].session() as db:
        id_token = identity._open(db.scalars(sa.select(ProviderSession)).one().tokens)["id_token"]

    response = client.post("/signout", data={"csrf_token": csrf_of(client)})
    assert response.status_code == 302
    origin = provider.server_url
    assert f"form-action 'self' {origin};" in response.headers["Content-Security-Policy"], \
        "browsers hold the form's redirect to the provider to form-action"
    logout = response.headers["Location"]
    assert logout.startswith(provider.issuer + "/protocol/openid-connect/logout?")
    query = parse_qs(urlsplit(logout).query)
    assert query["id_token_hint"] == [id_token]
    assert query["post_logout_redirect_uri"] == [PORTAL_URL + "/"]
    assert "Signed in as" not in client.get("/").get_data(as_text=True)
    with app.extensions["vre.db"].session() as db:
        assert db.scalar(sa.select(sa.func.count()).select_from(ProviderSession)) == 0

    # The provider asks to confirm (a form), then sends the browser back to the portal...
    page = browser.get(logout, timeout=10)
    assert page.status_code == 200
    xsrf = page.text.split('name="xsrf" value="')[1].split('"')[0]
    action = page.text.split('action="')[1].split('"')[0]
    done = browser.post(requests.compat.urljoin(page.url, action), allow_redirects=False,
                        data={"xsrf": xsrf, "logout": "yes"}, timeout=10)
    assert done.is_redirect and done.headers["Location"] == PORTAL_URL + "/"
    # ...and its own session is gone: the next sign-in asks for the password again.
    again = browser.get(start(app.test_client()), timeout=10)
    assert 'id="kc-form-login"' in again.text


def test_accounts_and_passwords_are_the_providers(app: Flask) -> None:
    client = app.test_client()
    sign_in(client)
    page = client.get("/account/password").get_data(as_text=True)
    assert "identity provider" in page and "current_password" not in page
    with request_as(app, client):
        token = access_token()
    created = client.post("/api/v1/users", headers=auth(token),
                          json={"username": "carol", "roles": ["researcher"]})
    assert created.status_code == 403  # alice is no admin at the provider


def test_unreachable_provider_is_a_clear_503(config: Config, provider: OidcProvider) -> None:
    cfg = oidc_config(config, provider, oidc_server_url="http://127.0.0.1:9")
    application = portal.app.create_app(cfg)
    application.extensions["vre.db"].migrate(cfg, "portal")
    try:
        response = application.test_client().get("/signin",
                                                  headers={"Accept": "application/json"})
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "provider_unavailable"
    finally:
        application.extensions["vre.db"].engine.dispose()


@pytest.mark.parametrize("missing", ["oidc_server_url", "oidc_realm", "oidc_client_id"])
def test_oidc_settings_are_required(config: Config, provider: OidcProvider,
                                    missing: str) -> None:
    values = {**config.model_dump(exclude_none=True), **provider.settings()}
    values.pop(missing)
    with pytest.raises(ConfigError) as refused:
        portal.app.create_app(load_config(env={}, **values))
    assert refused.value.key == "VRE_" + missing.upper()


def test_roles_and_groups_are_mapped_from_the_claims() -> None:
    claims = {"realm_access": {"roles": ["vre-researcher", "offline_access"]},
              "resource_access": {"portal": {"roles": ["data-steward"]},
                                  "elsewhere": {"roles": ["vre-admin"]}},
              "groups": ["/b", "/a", "/a", 7]}
    mapping = {"vre-researcher": "researcher", "data-steward": "steward", "vre-admin": "admin"}
    assert platform_roles(claims, "portal", mapping) == ["researcher", "steward"]
    assert platform_roles(claims, "elsewhere", mapping) == ["admin", "researcher"]
    assert platform_roles({}, "portal", mapping) == []
    assert groups_of(claims) == ["/a", "/b"]
    assert groups_of({}, {"groups": ["/x"]}) == ["/x"]


def test_role_map_setting_is_checked() -> None:
    assert load_config(env={"VRE_OIDC_ROLE_MAP": "kc-admin=admin, x=auditor"}).oidc_roles == {
        "kc-admin": "admin", "x": "auditor"}
    with pytest.raises(ConfigError) as refused:
        load_config(env={"VRE_OIDC_ROLE_MAP": "kc-admin=superuser"})
    assert refused.value.key == "VRE_OIDC_ROLE_MAP" and "superuser" in refused.value.message


def test_the_test_provider_has_keycloaks_layout(provider: OidcProvider) -> None:
    found = requests.get(provider.issuer + "/.well-known/openid-configuration", timeout=5).json()
    base = provider.issuer + "/protocol/openid-connect/"
    assert found["issuer"] == provider.server_url + "/realms/vre"
    assert {found[k] for k in ("authorization_endpoint", "token_endpoint", "jwks_uri",
                               "userinfo_endpoint", "end_session_endpoint")} == {
        base + p for p in ("auth", "token", "certs", "userinfo", "logout")}
    assert found["code_challenge_methods_supported"] == ["S256"]


def test_the_test_provider_requires_pkce(provider: OidcProvider) -> None:
    response = requests.get(provider.issuer + "/protocol/openid-connect/auth", params={
        "client_id": CLIENT_ID, "response_type": "code", "scope": "openid", "state": "s",
        "redirect_uri": PORTAL_URL + "/signin/callback"}, allow_redirects=False, timeout=5)
    assert response.is_redirect
    error = parse_qs(urlsplit(response.headers["Location"]).query)
    assert error["error"] == ["invalid_request"] and "PKCE" in error["error_description"][0]


def test_a_mirrored_person_is_one_id_at_every_service(config: Config,
                                                      provider: OidcProvider) -> None:
    """Memberships, revocation and restoring address a person mirrored from the provider by
    their tokens' subject, the id the dataset service sees them by, also where the portal's
    own id of the account differs from it: disabling her takes effect where she is a member."""
    cfg = oidc_config(config, provider)
    datasets = dataset_service.app.create_app(cfg)
    datasets.extensions["vre.db"].migrate(cfg, "dataset_service")
    db = datasets.extensions["vre.db"]
    with db.session() as session:
        session.add_all([Project(name="lung-ct", title="Lung CT", created_by="admin"),
                         Project(name="brain-mri", title="Brain MRI", created_by="admin")])
    carol = USERS["carol"]["sub"]

    def ids(model: Any) -> list[tuple[str, ...]]:
        with db.session() as session:
            if model is RevokedUser:
                return [(r,) for r in session.scalars(sa.select(RevokedUser.user_id))]
            return sorted(session.execute(sa.select(Project.name, ProjectMember.user_id).join(
                Project, Project.id == ProjectMember.project_id)).all())

    with serving(datasets) as url:
        site = portal.app.create_app(cfg.model_copy(update={"dataset_url": url}))
        site.extensions["vre.db"].migrate(cfg, "portal")
        her = site.test_client()
        assert sign_in(her, "carol").status_code == 302
        account = stored_user(site, "carol")
        assert account.id != carol, "the case at hand: her portal id is not her subject"
        with request_as(site, her):
            token = access_token()
        assert her.get(f"/api/v1/users/{account.id}", headers=auth(token)).status_code == 200, \
            "her own record is the one whose tokens she holds"
        assert ids(ProjectMember) == [("lung-ct", carol)], "her group, under her subject"

        admin = site.test_client()
        assert sign_in(admin, "erin").status_code == 302
        csrf = csrf_of(admin)
        added = admin.post("/admin/projects/brain-mri/members",
                           data={"csrf_token": csrf, "user": "carol", "role": "steward"})
        assert added.status_code == 302
        assert ids(ProjectMember) == [("brain-mri", carol), ("lung-ct", carol)]
        assert "carol" in admin.get("/admin/projects/brain-mri").get_data(as_text=True), \
            "a member's name is found from the id the dataset service keeps"

        quota = admin.post("/admin/quotas", data={"csrf_token": csrf, "scope": "user",
                                                  "subject": "carol", "max_desktops": "1"})
        assert quota.status_code == 302, quota.get_data(as_text=True)
        with site.extensions["vre.db"].session() as session:
            assert session.scalars(sa.select(Quota.subject)).all() == [carol], \
                "kept under the id her workloads are owned by"
        disabled = admin.post(f"/admin/users/{account.id}/active",
                              data={"csrf_token": csrf, "active": "0"})
        assert disabled.status_code == 302
        assert ids(RevokedUser) == [(carol,)], "revoked under the id her memberships have"
        with db.session() as session:
            assert ds.actor_for(session, carol, frozenset({"researcher"})).revoked
        enabled = admin.post(f"/admin/users/{account.id}/active",
                             data={"csrf_token": csrf, "active": "1"})
        assert enabled.status_code == 302 and ids(RevokedUser) == []
        site.extensions["vre.db"].engine.dispose()
    db.engine.dispose()
