"""Every portal page and route against anonymous, an outside researcher, a project member, the
project's steward and an administrator, on a draft, a released and a published dataset. The
portal decides nothing itself: each answer is the dataset service's policy, seen through the
page. No page that shows a dataset's internals answers to someone without access."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from tests.dataset_helpers import create
from tests.helpers import auth
from tests.portal_helpers import post, signed_in

ROLES = {"anonymous": None, "outsider": "someone", "member": "res-1",
         "steward": "steward-1", "admin": "admin-1"}
ORDER = tuple(ROLES)
SIGN_IN = 302  # anonymous visitors of signed-in pages are sent to the sign-in page


def row(*statuses: int) -> dict[str, int]:
    return dict(zip(ORDER, statuses, strict=True))


# (path with {D}raft / {R}eleased / {P}ublished, expected status per role)
PAGES: list[tuple[str, dict[str, int]]] = [
    ("/", row(200, 200, 200, 200, 200)),
    ("/catalogue", row(200, 200, 200, 200, 200)),
    ("/signin", row(200, 200, 200, 200, 200)),
    ("/pid/{P}", row(303, 303, 303, 303, 303)),
    # landing pages: drafts only for their author's stewards; released data for the registered
    ("/datasets/{D}", row(404, 404, 404, 200, 200)),
    ("/datasets/{R}", row(404, 200, 200, 200, 200)),
    ("/datasets/{P}", row(200, 200, 200, 200, 200)),
    ("/datasets/{R}/export/datacite", row(404, 200, 200, 200, 200)),
    ("/datasets/{P}/export/dcat-ttl", row(200, 200, 200, 200, 200)),
    # the explorer: users of the data (members), and a draft's stewards; roles never grant use
    ("/datasets/{D}/explore", row(SIGN_IN, 404, 404, 200, 403)),
    ("/datasets/{R}/explore", row(SIGN_IN, 403, 200, 200, 403)),
    ("/datasets/{P}/explore", row(SIGN_IN, 403, 200, 200, 403)),
    # histories: public once published; before that for stewards, admins and auditors
    ("/datasets/{D}/history", row(404, 404, 404, 200, 200)),
    ("/datasets/{R}/history", row(404, 403, 403, 200, 200)),
    ("/datasets/{P}/history", row(200, 200, 200, 200, 200)),
    ("/datasets/{R}/access-log", row(SIGN_IN, 403, 403, 200, 200)),
    ("/datasets/{D}/manage", row(SIGN_IN, 404, 404, 200, 200)),
    ("/datasets/{R}/manage", row(SIGN_IN, 403, 403, 200, 200)),
    ("/datasets/{P}/manage", row(SIGN_IN, 403, 403, 200, 200)),
    ("/my/datasets", row(SIGN_IN, 200, 200, 200, 200)),
    ("/requests", row(SIGN_IN, 200, 200, 200, 200)),
    ("/datasets/new", row(SIGN_IN, 200, 200, 200, 200)),
    ("/account/password", row(SIGN_IN, 200, 200, 200, 200)),
    ("/datasets/no-such-dataset", row(404, 404, 404, 404, 404)),
    # desktops: one's own only (test_portal_desktop_pages has a desktop of each person's)
    ("/desktops", row(SIGN_IN, 200, 200, 200, 200)),
    ("/desktops/new", row(SIGN_IN, 200, 200, 200, 200)),
    ("/desktops/no-such-desktop", row(SIGN_IN, 404, 404, 404, 404)),
    ("/desktops/no-such-desktop/state", row(SIGN_IN, 404, 404, 404, 404)),
    # jobs: one's own, and any for an administrator (test_portal_job_pages has jobs to see)
    ("/jobs", row(SIGN_IN, 200, 200, 200, 200)),
    ("/jobs/no-such-job", row(SIGN_IN, 404, 404, 404, 404)),
    ("/jobs/no-such-job/log", row(SIGN_IN, 404, 404, 404, 404)),
]
# Routes answered by other tests: sign-in and its callback (test_portal_identity,
# test_portal_oidc), admin pages (test_admin), the JSON API below, a desktop's actions and
# noVNC's files (test_portal_desktop_pages), cancelling a job (test_portal_job_pages).
COVERED_ELSEWHERE = {"/signin/callback", "/signout", "/datasets/<dataset_id>/<action>",
                     "/datasets/<dataset_id>/access", "/datasets/<dataset_id>/edit",
                     "/datasets/<dataset_id>/request-access", "/requests/<request_id>/decide",
                     "/desktops/<desktop_id>/ticket", "/desktops/<desktop_id>/extend",
                     "/desktops/<desktop_id>/stop", "/novnc/<path:filename>",
                     "/jobs/<job_id>/cancel"}


@pytest.fixture
def datasets(site: dict[str, Any], steward: dict[str, str]) -> dict[str, str]:
    """A draft, a released and a published dataset of project lung, by steward-1."""
    ids = {"D": create(site["datasets"], steward)["id"]}
    client = signed_in(site["portal"], "steward-1")
    for name, actions in (("R", ("release",)), ("P", ("release", "publish"))):
        ids[name] = create(site["datasets"], steward)["id"]
        for action in actions:
            assert post(client, f"/datasets/{ids[name]}/{action}").status_code == 302
    return ids


def _pattern(path: str) -> str:
    for name in ("D", "R", "P"):
        path = path.replace("{" + name + "}", "<dataset_id>")
    path = path.replace("/desktops/no-such-desktop", "/desktops/<desktop_id>")
    path = path.replace("/jobs/no-such-job", "/jobs/<job_id>")
    return path.replace("/datacite", "/<fmt>").replace("/dcat-ttl", "/<fmt>")


def test_every_page_is_in_the_table(site: dict[str, Any]) -> None:
    app: Flask = site["portal"]
    pages = {rule.rule for rule in app.url_map.iter_rules()
             if rule.endpoint.split(".")[0] in ("pages", "catalogue", "datasets", "desktops",
                                                   "jobs")}
    tabled = {_pattern(path) for path, _ in PAGES} - {"/datasets/no-such-dataset"}
    assert pages - COVERED_ELSEWHERE == tabled


@pytest.mark.parametrize("role", ORDER)
def test_pages_answer_each_role(site: dict[str, Any], datasets: dict[str, str],
                                role: str) -> None:
    client = signed_in(site["portal"], ROLES[role])
    wrong = []
    for path, expected in PAGES:
        url = path.format(**datasets)
        response = client.get(url)
        if response.status_code != expected[role]:
            wrong.append(f"{url}: {response.status_code}, expected {expected[role]}")
        if response.status_code == SIGN_IN and expected[role] == SIGN_IN:
            assert "/signin" in response.headers["Location"]
    assert not wrong, f"as {role}: " + "; ".join(wrong)


@pytest.mark.parametrize("role", ORDER)
def test_only_stewards_change_a_dataset(site: dict[str, Any], datasets: dict[str, str],
                                        role: str, token) -> None:
    client = signed_in(site["portal"], ROLES[role])
    post(client, f"/datasets/{datasets['R']}/publish")
    post(client, f"/datasets/{datasets['R']}/access", user_id="intruder")
    post(client, f"/datasets/{datasets['P']}/edit", name="Renamed by someone")
    reader = site["datasets"].test_client()
    admin = auth(token("admin-1", "admin"))
    released = reader.get(f"/api/v1/datasets/{datasets['R']}", headers=admin).get_json()
    access = reader.get(f"/api/v1/datasets/{datasets['R']}/access", headers=admin).get_json()
    edited = reader.get(f"/api/v1/datasets/{datasets['P']}", headers=admin).get_json()
    stewarding = role in ("steward", "admin")
    assert (released["state"] == "published") is stewarding
    assert ([a["user_id"] for a in access] == ["intruder"]) is stewarding
    assert (edited["name"] == "Renamed by someone") is stewarding


API: list[tuple[str, str, dict[str, int]]] = [
    ("GET", "/api/v1/me", row(401, 200, 200, 200, 200)),
    ("GET", "/api/v1/users", row(401, 403, 403, 403, 200)),
    ("GET", "/api/v1/users/res-1", row(401, 403, 200, 403, 200)),
    ("POST", "/api/v1/users", row(401, 403, 403, 403, 422)),
    ("GET", "/.well-known/jwks.json", row(200, 200, 200, 200, 200)),
    ("GET", "/.well-known/openid-configuration", row(200, 200, 200, 200, 200)),
]
PLATFORM_ROLES = {"outsider": ["researcher"], "member": ["researcher"],
                  "steward": ["steward", "researcher"], "admin": ["admin"]}


@pytest.mark.parametrize("role", ORDER)
def test_portal_api_answers_each_role(site: dict[str, Any], role: str, token) -> None:
    client = site["portal"].test_client()
    headers = auth(token(ROLES[role], *PLATFORM_ROLES[role])) if ROLES[role] else {}
    for method, path, expected in API:
        response = client.open(path, method=method, headers=headers,
                               json={} if method == "POST" else None)
        assert response.status_code == expected[role], (method, path, response.get_json())
