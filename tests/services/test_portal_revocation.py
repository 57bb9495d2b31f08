"""Revocation across the services, over real HTTP: a token stops working at every service when
its account is disabled, its password changes, it is revoked or its workload stops; a signed-out
session cookie signs in nobody; a person revoked at the dataset service can do nothing at the
portal either; and a feed that cannot be read refuses people once its grace is over."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, session
from flask.testing import FlaskClient

from portal.accounts import create_account
from portal.identity import access_token
from portal.identity.local import TOKEN_KEY
from portal.models import User
from tests.helpers import auth, free_port, request_as, serving
from tests.portal_helpers import PEOPLE, make_portal, post, signed_in
from tests.revocation_helpers import read_feed
from tests.services.test_revocation import route_calls
from tracer.client import TracerClient
from vre.service_auth import StaticToken

PASSWORD = "pats-own-password"


@pytest.fixture
def linked(
    platform: tuple[Flask, TracerClient], config: Any, token: Callable[..., str]
) -> Iterator[dict[str, Any]]:
    """The portal and the dataset service (with the tracer) served over HTTP, each reading the
    other's revocation feed on every request; "pat" is a local account with a password."""
    datasets, auditor = platform
    with serving(datasets) as datasets_url:
        app = make_portal(
            config.model_copy(update={"dataset_url": datasets_url}),
            {**PEOPLE, "admin-2": ["admin"]},
        )
        with app.extensions["vre.db"].session() as db:
            pat = create_account(db, "pat", password=PASSWORD)[0].id
        with serving(app) as portal_url:
            read_feed(
                datasets,
                "portal",
                portal_url,
                StaticToken(token("service:dataset_service", "service")),
            )
            read_feed(app, "dataset_service", datasets_url, app.extensions["portal.service_token"])
            yield {"portal": app, "datasets": datasets, "auditor": auditor, "pat": pat}
        app.extensions["vre.db"].engine.dispose()


def password_token(portal: Flask, password: str = PASSWORD) -> str:
    answer = portal.test_client().post(
        "/api/v1/tokens", json={"grant_type": "password", "username": "pat", "password": password}
    )
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["access_token"]


def answers(linked: dict[str, Any], bearer: str) -> dict[str, tuple[int, str | None]]:
    """What the portal and the dataset service answer a signed-in call with this token."""
    out = {}
    for name, app, path in (
        ("portal", linked["portal"], "/api/v1/me"),
        ("datasets", linked["datasets"], "/api/v1/projects"),
    ):
        response = app.test_client().get(path, headers=auth(bearer))
        body = response.get_json()
        out[name] = (
            response.status_code,
            body["error"]["code"] if response.status_code >= 400 else None,
        )
    return out


ACCEPTED = {"portal": (200, None), "datasets": (200, None)}
REVOKED = {"portal": (401, "token_revoked"), "datasets": (401, "token_revoked")}


def sign_in(client: FlaskClient, password: str = PASSWORD) -> int:
    page = client.get("/signin").get_data(as_text=True)
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    return client.post(
        "/signin", data={"username": "pat", "password": password, "csrf_token": csrf}
    ).status_code


def test_disabling_an_account_refuses_its_tokens_everywhere_and_revokes_it(
    linked: dict[str, Any],
) -> None:
    portal, pat = linked["portal"], linked["pat"]
    before = password_token(portal)
    assert answers(linked, before) == ACCEPTED
    admin = signed_in(portal, "admin-1")
    assert post(admin, f"/admin/users/{pat}/active", active="0").status_code == 302
    assert answers(linked, before) == REVOKED
    revoked = [t for t in linked["auditor"].query(action="USER_REVOKED")]
    assert [(t["actor"], t["details"]["subject_user"]) for t in revoked] == [("admin-1", pat)]
    refused = portal.test_client().post(
        "/api/v1/tokens", json={"grant_type": "password", "username": "pat", "password": PASSWORD}
    )
    assert refused.get_json()["error"]["code"] == "invalid_credentials"

    assert post(admin, f"/admin/users/{pat}/active", active="1").status_code == 302
    assert answers(linked, before) == REVOKED, "enabling does not bring old tokens back"
    assert answers(linked, password_token(portal)) == ACCEPTED
    restored = list(linked["auditor"].query(action="USER_RESTORED"))
    assert [(t["actor"], t["details"]["subject_user"]) for t in restored] == [("admin-1", pat)]


def test_a_new_password_refuses_the_tokens_issued_before(linked: dict[str, Any]) -> None:
    portal = linked["portal"]
    browser = portal.test_client()
    assert sign_in(browser) == 302
    before = password_token(portal)
    page = browser.get("/account/password").get_data(as_text=True)
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    done = browser.post(
        "/account/password",
        data={
            "current_password": PASSWORD,
            "new_password": "a-brand-new-password",
            "confirm_password": "a-brand-new-password",
            "csrf_token": csrf,
        },
    )
    assert done.status_code == 200, done.get_data(as_text=True)
    assert answers(linked, before) == REVOKED
    assert answers(linked, password_token(portal, "a-brand-new-password")) == ACCEPTED
    with request_as(portal, browser):  # the session that changed it goes on, with a new token
        assert answers(linked, access_token()) == ACCEPTED


def test_a_revoked_token_is_refused_everywhere(linked: dict[str, Any]) -> None:
    portal = linked["portal"]
    kept, dropped = password_token(portal), password_token(portal)
    client = portal.test_client()
    revoked = client.post("/api/v1/tokens/revoke", json={"token": dropped})
    assert revoked.status_code == 200 and revoked.get_json() == {"revoked": True}
    assert answers(linked, dropped) == REVOKED
    assert answers(linked, kept) == ACCEPTED
    assert client.post("/api/v1/tokens/revoke", json={"token": dropped}).status_code == 200
    forged = client.post("/api/v1/tokens/revoke", json={"token": "not.a.token"})
    assert (forged.status_code, forged.get_json()["error"]["code"]) == (401, "token_invalid")


def test_a_stopped_workloads_tokens_are_refused(
    linked: dict[str, Any], token: Callable[..., str]
) -> None:
    portal = linked["portal"]
    desktop = token(linked["pat"], "researcher", wid="desktop-7")
    own = token(linked["pat"], "researcher")
    assert answers(linked, desktop) == ACCEPTED
    client = portal.test_client()
    until = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    assert (
        client.put(
            "/api/v1/revoked-workloads/desktop-7", headers=auth(own), json={"until": until}
        ).status_code
        == 403
    )
    service = auth(token("service:portal", "service"))
    stopped = client.put(
        "/api/v1/revoked-workloads/desktop-7", headers=service, json={"until": until}
    )
    assert stopped.status_code == 200, stopped.get_json()
    assert answers(linked, desktop) == REVOKED
    assert answers(linked, own) == ACCEPTED, "the person's other tokens are not the workload's"
    past = client.put(
        "/api/v1/revoked-workloads/desktop-8",
        headers=service,
        json={"until": "2020-01-01T00:00:00Z"},
    )
    assert (past.status_code, past.get_json()["error"]["field"]) == (422, "until")


def test_signing_out_ends_the_cookie_and_its_token(linked: dict[str, Any]) -> None:
    portal = linked["portal"]
    browser = portal.test_client()
    assert sign_in(browser) == 302
    assert browser.get("/my/datasets").status_code == 200  # asks with the session's token
    with request_as(portal, browser):
        held = session[TOKEN_KEY]["token"]
    cookie = browser.get_cookie(portal.config["SESSION_COOKIE_NAME"]).value
    assert browser.get("/account/password").status_code == 200
    page = browser.get("/").get_data(as_text=True)
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    assert browser.post("/signout", data={"csrf_token": csrf}).status_code == 302
    replayed = portal.test_client()
    replayed.set_cookie(portal.config["SESSION_COOKIE_NAME"], cookie)
    again = replayed.get("/account/password")
    assert again.status_code == 302 and "/signin" in again.headers["Location"]
    assert answers(linked, held) == REVOKED


def _revoke_at_the_dataset_service(
    linked: dict[str, Any], token: Callable[..., str], *user_ids: str
) -> None:
    client = linked["datasets"].test_client()
    for user_id in user_ids:
        assert (
            client.put(
                f"/api/v1/revoked-users/{user_id}",
                headers=auth(token("admin-1", "admin")),
                json={"reason": "audit finding"},
            ).status_code
            == 200
        )


def test_a_revoked_administrator_can_do_nothing_at_the_portal(
    linked: dict[str, Any], token: Callable[..., str]
) -> None:
    portal = linked["portal"]
    _revoke_at_the_dataset_service(linked, token, "admin-2")
    revoked = auth(token("admin-2", "admin"))
    client = portal.test_client()
    created = client.post(
        "/api/v1/users",
        headers=revoked,
        json={"username": "mallory", "roles": ["admin"], "password": "mallorys-password"},
    )
    assert (created.status_code, created.get_json()["error"]["code"]) == (403, "user_revoked")
    assert client.get("/api/v1/users", headers=revoked).status_code == 403
    pages = signed_in(portal, "admin-2")
    assert pages.get("/admin/users").status_code == 403
    assert post(pages, f"/admin/users/{linked['pat']}/active", active="0").status_code == 403
    assert post(pages, "/admin/users", username="mallory2", roles="admin").status_code == 403
    with portal.extensions["vre.db"].session() as db:
        assert db.scalar(sa.select(User.active).where(User.id == linked["pat"])) is True
        assert (
            db.scalar(
                sa.select(sa.func.count()).select_from(User).where(User.username.like("mallory%"))
            )
            == 0
        )


@pytest.mark.parametrize(
    "who",
    [("steward-1", ("steward", "researcher")), ("admin-2", ("admin",))],
    ids=["steward", "admin"],
)
def test_a_revoked_person_is_refused_on_every_portal_api_route(
    linked: dict[str, Any], token: Callable[..., str], who: tuple
) -> None:
    portal = linked["portal"]
    user_id, roles = who
    _revoke_at_the_dataset_service(linked, token, user_id)
    revoked = auth(token(user_id, *roles))
    client = portal.test_client()
    api = [
        (m, p, public)
        for m, p, public in route_calls(portal, {"user_id": linked["pat"]})
        if p.startswith("/api/")
    ]
    assert len(api) > 20, "every API route of the portal is asked"
    wrong = []
    for method, path, public in api:
        body = {} if method != "GET" else None
        answer = client.open(path, method=method, headers=revoked, json=body)
        expected = client.open(path, method=method, json=body).status_code if public else 403
        code = (answer.get_json(silent=True) or {}).get("error", {}).get("code")
        if answer.status_code != expected or (not public and code != "user_revoked"):
            wrong.append(f"{method} {path}: {answer.status_code} {code}, expected {expected}")
    assert not wrong, "; ".join(wrong)


def test_an_unreachable_feed_refuses_people_once_its_grace_is_over(
    platform: tuple[Flask, TracerClient], token: Callable[..., str]
) -> None:
    datasets, _ = platform
    read_feed(
        datasets,
        "portal",
        f"http://127.0.0.1:{free_port()}",
        StaticToken(token("service:dataset_service", "service")),
        grace=0,
    )
    client = datasets.test_client()
    person = client.get("/api/v1/projects", headers=auth(token("res-1", "researcher")))
    assert (person.status_code, person.get_json()["error"]["code"]) == (
        503,
        "revocations_unavailable",
    )
    service = client.get("/api/v1/projects", headers=auth(token("service:portal", "service")))
    assert service.status_code == 200, "services are not people: they go on"
    assert client.get("/api/v1/catalogue").status_code == 200, "anonymous reads go on"
