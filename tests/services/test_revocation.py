"""A revoked person may do nothing but read public metadata, on every route of the dataset
service: their token still validates, but every route that acts for a person refuses them, and
public routes answer them as they answer anonymous visitors. An administrator undoes it, and
both steps are traced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.dataset_helpers import create
from tests.helpers import auth
from tracer.client import TracerClient

REVOKED = {"steward": ("steward-1", ("steward", "researcher")), "admin": ("admin-2", ("admin",))}


def route_calls(app: Flask, values: dict[str, str]) -> list[tuple[str, str, bool]]:
    """(method, path, public) for every route of the app, its parameters filled from values."""
    calls = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        operation = getattr(view, "operation", None)
        public = operation is None or operation.roles == "public"
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", values.get(arg, "x-unknown"))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            calls.append((method, path, public))
    return calls


def _status_and_code(response: Any) -> tuple[int, str | None]:
    body = response.get_json(silent=True)
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return response.status_code, code


@pytest.fixture
def revoked_site(
    platform: tuple[Flask, TracerClient], steward: dict[str, str], token: Callable[..., str]
) -> dict[str, Any]:
    """Drafts, released and published data of project lung; then steward-1 and an
    administrator revoked by another administrator."""
    service, _ = platform
    client = service.test_client()
    draft = create(service, steward)
    published = create(service, steward)
    for action in ("release", "publish"):
        assert (
            client.post(f"/api/v1/datasets/{published['id']}/{action}", headers=steward).status_code
            == 200
        )
    requested = client.post(
        f"/api/v1/datasets/{published['id']}/requests",
        headers=auth(token("res-9", "researcher")),
        json={"purpose": "a study of something worth it"},
    ).get_json()
    admin = auth(token("admin-1", "admin"))
    for user_id, _ in REVOKED.values():
        answer = client.put(
            f"/api/v1/revoked-users/{user_id}", headers=admin, json={"reason": "left the hospital"}
        )
        assert answer.status_code == 200, answer.get_json()
    project_id = client.get("/api/v1/projects", headers=admin).get_json()[0]["id"]
    return {
        "service": service,
        "admin": admin,
        "values": {
            "dataset_id": published["id"],
            "project_id": project_id,
            "user_id": "res-1",
            "request_id": requested["id"],
            "grant_id": "x-grant",
            "run_id": "x-run",
            "fmt": "datacite",
        },
        "draft": draft["id"],
        "published": published["id"],
    }


@pytest.mark.parametrize("who", REVOKED)
def test_a_revoked_person_is_refused_on_every_route(
    revoked_site: dict[str, Any], token: Callable[..., str], who: str
) -> None:
    service: Flask = revoked_site["service"]
    client = service.test_client()
    user_id, roles = REVOKED[who]
    revoked = auth(token(user_id, *roles))
    wrong = []
    for method, path, public in route_calls(service, revoked_site["values"]):
        answer = _status_and_code(
            client.open(path, method=method, headers=revoked, json={} if method != "GET" else None)
        )
        if public:
            expected = _status_and_code(
                client.open(path, method=method, json={} if method != "GET" else None)
            )
        else:
            expected = (403, "user_revoked")
        if answer != expected:
            wrong.append(f"{method} {path}: {answer}, expected {expected}")
    assert not wrong, f"revoked {who}: " + "; ".join(wrong)


def test_a_revoked_steward_cannot_curate_their_project(
    revoked_site: dict[str, Any], steward: dict[str, str]
) -> None:
    client = revoked_site["service"].test_client()
    project = revoked_site["values"]["project_id"]
    attempts = {
        "studies with clinical values": client.get(
            f"/api/v1/studies?project={project}", headers=steward
        ),
        "a draft's studies": client.get(
            f"/api/v1/datasets/{revoked_site['draft']}/studies", headers=steward
        ),
        "members": client.put(
            f"/api/v1/projects/{project}/members",
            headers=steward,
            json={"user_id": "friend", "role": "steward"},
        ),
        "ingest": client.post(
            "/api/v1/ingest", headers=steward, json={"project": project, "path": "in"}
        ),
        "a dataset": client.post(
            "/api/v1/datasets",
            headers=steward,
            json={"project": "lung", "name": "Another", "query": {"modality": "CT"}},
        ),
    }
    assert {what: a.status_code for what, a in attempts.items()} == dict.fromkeys(attempts, 403)
    members = client.get(
        f"/api/v1/projects/{project}/members", headers=revoked_site["admin"]
    ).get_json()
    assert "friend" not in {m["user_id"] for m in members}
    # What is public stays readable, as for anyone.
    assert (
        client.get(f"/api/v1/datasets/{revoked_site['published']}", headers=steward).status_code
        == 200
    )
    assert (
        client.get(f"/api/v1/datasets/{revoked_site['draft']}", headers=steward).status_code == 404
    )


def test_a_revoked_administrator_cannot_revoke_others(
    revoked_site: dict[str, Any], token: Callable[..., str]
) -> None:
    client = revoked_site["service"].test_client()
    revoked_admin = auth(token("admin-2", "admin"))
    assert (
        client.put(
            "/api/v1/revoked-users/admin-1", headers=revoked_admin, json={"reason": "coup"}
        ).status_code
        == 403
    )
    assert client.delete("/api/v1/revoked-users/admin-2", headers=revoked_admin).status_code == 403
    assert client.get("/api/v1/projects", headers=revoked_site["admin"]).status_code == 200


def test_an_administrator_restores_a_revoked_person_and_both_are_traced(
    platform: tuple[Flask, TracerClient], revoked_site: dict[str, Any], steward: dict[str, str]
) -> None:
    _, auditor = platform
    client = revoked_site["service"].test_client()
    project = revoked_site["values"]["project_id"]
    assert client.get(f"/api/v1/studies?project={project}", headers=steward).status_code == 403
    restored = client.delete("/api/v1/revoked-users/steward-1", headers=revoked_site["admin"])
    assert restored.status_code == 200, restored.get_json()
    assert client.get(f"/api/v1/studies?project={project}", headers=steward).status_code == 200
    again = client.delete("/api/v1/revoked-users/steward-1", headers=revoked_site["admin"])
    assert (again.status_code, again.get_json()["error"]["code"]) == (404, "not_revoked")
    traces = [
        (t["action"], t["actor"], t["details"])
        for t in auditor.query(actor="admin-1")
        if t["action"].startswith("USER_")
    ]
    assert traces == [
        ("USER_REVOKED", "admin-1", {"subject_user": "steward-1", "reason": "left the hospital"}),
        ("USER_REVOKED", "admin-1", {"subject_user": "admin-2", "reason": "left the hospital"}),
        ("USER_RESTORED", "admin-1", {"subject_user": "steward-1"}),
    ]


def test_revoking_an_id_that_is_no_user_id_is_refused(
    platform: tuple[Flask, TracerClient], token: Callable[..., str]
) -> None:
    service, _ = platform
    answer = service.test_client().put(
        "/api/v1/revoked-users/%20bad%20id", headers=auth(token("admin-1", "admin")), json={}
    )
    assert (answer.status_code, answer.get_json()["error"]["code"]) == (422, "validation_error")
