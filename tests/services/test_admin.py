"""Administration: who may reach each admin page and catalogue API route (a table of routes
against anonymous, researcher, steward and administrator), the account, project, application,
flavor and quota flows, the error codes of bad input, and the first-start catalogues."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

import portal.app
from dataset_service.models import Project, ProjectMember
from launcher.local import first_start
from portal.catalogues import DEFAULT_APPLICATIONS, DEFAULT_FLAVORS, seed_defaults
from portal.clients import datasets_as_portal
from portal.compute.tokens import WORKLOAD_TOKEN_SCOPE
from portal.jobs import JobRequest, Submission, submit_all
from portal.models import EVERYONE, Application, Flavor, Quota, User, Workload, trace_outbox
from portal.quotas import HostCapacity
from tests.helpers import auth, serving
from tests.portal_helpers import AS_ROLE, add_people, make_portal, post, signed_in
from vre.config import Config
from vre.db import utcnow
from vre.errors import ApiError
from vre.outbox import outbox_of
from vre.tokens import Principal

ROLES = ("anonymous", "researcher", "steward", "admin")
HOST = {"host_cpus": 16, "host_memory_mib": 65536, "host_gpus": 0}


def _portal(config: Config) -> Flask:
    app = make_portal(config.model_copy(update=HOST))
    with app.extensions["vre.db"].session() as session:
        seed_defaults(session)
    return app


@pytest.fixture
def admin_portal(config: Config) -> Iterator[Flask]:
    """A portal with one person per role and the default catalogues; no other service."""
    app = _portal(config)
    yield app
    app.extensions["vre.db"].engine.dispose()


@pytest.fixture
def admin_site(make_app: Callable[[str], Flask], config: Config) -> Iterator[dict[str, Any]]:
    """The portal wired to the real dataset service over HTTP, which has project "lung"
    (steward-1 stewards it, res-1 is a researcher in it)."""
    datasets = make_app("dataset_service")
    with datasets.extensions["vre.db"].session() as session:
        lung = Project(name="lung", title="Lung", created_by="steward-1")
        session.add(lung)
        session.flush()
        session.add_all([ProjectMember(project_id=lung.id, user_id="steward-1", role="steward"),
                         ProjectMember(project_id=lung.id, user_id="res-1", role="researcher")])
    with serving(datasets) as url:
        app = _portal(config.model_copy(update={"dataset_url": url}))
        yield {"portal": app, "datasets": datasets}
        app.extensions["vre.db"].engine.dispose()


def default_quota_id(app: Flask) -> str:
    with app.extensions["vre.db"].session() as session:
        return session.scalar(sa.select(Quota.id).where(Quota.subject == EVERYONE))


def members_of(datasets: Flask, token: Callable[..., str], project: str) -> dict[str, str]:
    response = datasets.test_client().get(f"/api/v1/projects/{project}/members",
                                          headers=auth(token("admin-1", "admin")))
    return {m["user_id"]: m["role"] for m in response.get_json()}


def text(response: Any) -> str:
    return response.get_data(as_text=True)


# -- authorisation: the catalogue API -----------------------------------------------------

FLAVOR = {"name": "big", "cpus": 8, "memory_mib": 32768, "max_runtime_minutes": 60}
APPLICATION = {"id": "rstudio", "name": "RStudio", "kind": "desktop", "image": "vre/rstudio:1"}
QUOTA = {"scope": "project", "subject": "lung", "max_jobs": 4}

# (method, rule, concrete path, body, status for anonymous, researcher, steward, admin).
# Run in this order on one fresh portal per role: the deletion comes last.
API_ROUTES = [
    ("GET", "/api/v1/flavors", "/api/v1/flavors", None, (401, 200, 200, 200)),
    ("GET", "/api/v1/flavors/<name>", "/api/v1/flavors/no-gpu", None, (401, 200, 200, 200)),
    ("POST", "/api/v1/flavors", "/api/v1/flavors", FLAVOR, (401, 403, 403, 201)),
    ("PATCH", "/api/v1/flavors/<name>", "/api/v1/flavors/no-gpu", {"description": "2 CPUs"},
     (401, 403, 403, 200)),
    ("GET", "/api/v1/applications", "/api/v1/applications", None, (401, 200, 200, 200)),
    ("GET", "/api/v1/applications/<app_id>", "/api/v1/applications/desktop", None,
     (401, 200, 200, 200)),
    ("POST", "/api/v1/applications", "/api/v1/applications", APPLICATION,
     (401, 403, 403, 201)),
    ("PATCH", "/api/v1/applications/<app_id>", "/api/v1/applications/desktop",
     {"description": "A desktop"}, (401, 403, 403, 200)),
    ("GET", "/api/v1/quota", "/api/v1/quota", None, (401, 200, 200, 200)),
    ("GET", "/api/v1/quotas", "/api/v1/quotas", None, (401, 200, 200, 200)),
    ("POST", "/api/v1/quotas", "/api/v1/quotas", QUOTA, (401, 403, 403, 201)),
    ("GET", "/api/v1/quotas/<quota_id>", "/api/v1/quotas/{quota}", None,
     (401, 403, 403, 200)),
    ("PATCH", "/api/v1/quotas/<quota_id>", "/api/v1/quotas/{quota}", {"max_jobs": 3},
     (401, 403, 403, 200)),
    ("DELETE", "/api/v1/quotas/<quota_id>", "/api/v1/quotas/{quota}", None,
     (401, 403, 403, 200)),
]


def _rules(app: Flask, blueprint: str) -> set[tuple[str, str]]:
    return {(method, rule.rule) for rule in app.url_map.iter_rules()
            if rule.endpoint.startswith(blueprint + ".")
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_every_catalogue_api_route_is_in_the_table(admin_portal: Flask) -> None:
    assert _rules(admin_portal, "portal_admin_api") == {(m, r) for m, r, *_ in API_ROUTES}


@pytest.mark.parametrize("role", ROLES)
def test_catalogue_api_answers_each_role(admin_portal: Flask, token: Callable[..., str],
                                         role: str) -> None:
    headers = {} if role == "anonymous" else auth(token(AS_ROLE[role], role))
    quota = default_quota_id(admin_portal)
    client = admin_portal.test_client()
    wrong = []
    for method, _, path, body, statuses in API_ROUTES:
        response = client.open(path.format(quota=quota), method=method, headers=headers,
                               json=body)
        expected = statuses[ROLES.index(role)]
        if response.status_code != expected:
            wrong.append(f"{method} {path}: {response.status_code} != {expected} "
                         f"{response.get_json()}")
        if response.status_code >= 400:
            assert response.get_json()["error"]["code"], "the one error model"
    assert wrong == []


# -- authorisation: the admin pages -------------------------------------------------------

# (method, rule, concrete path, form, status for the administrator). Others: anonymous
# visitors are sent to sign in, researchers and stewards get 403.
PAGES = [
    ("GET", "/admin/", "/admin/", None, 200),
    ("GET", "/admin/users", "/admin/users", None, 200),
    ("GET", "/admin/users/<user_id>", "/admin/users/res-1", None, 200),
    ("GET", "/admin/projects", "/admin/projects", None, 200),
    ("GET", "/admin/projects/<name>", "/admin/projects/lung", None, 200),
    ("GET", "/admin/applications", "/admin/applications", None, 200),
    ("GET", "/admin/applications/<app_id>", "/admin/applications/desktop", None, 200),
    ("GET", "/admin/flavors", "/admin/flavors", None, 200),
    ("GET", "/admin/flavors/<name>", "/admin/flavors/no-gpu", None, 200),
    ("GET", "/admin/quotas", "/admin/quotas", None, 200),
    ("GET", "/admin/quotas/<quota_id>", "/admin/quotas/{quota}", None, 200),
    ("POST", "/admin/users", "/admin/users", {}, 422),
    ("POST", "/admin/users/<user_id>/roles", "/admin/users/res-1/roles",
     {"roles": "researcher"}, 302),
    ("POST", "/admin/users/<user_id>/active", "/admin/users/res-1/active", {"active": "1"},
     302),
    ("POST", "/admin/projects", "/admin/projects", {}, 422),
    ("POST", "/admin/projects/<name>/members", "/admin/projects/lung/members",
     {"user": "someone", "role": "researcher"}, 302),
    ("POST", "/admin/projects/<name>/members/<user_id>/remove",
     "/admin/projects/lung/members/someone/remove", {}, 302),
    ("POST", "/admin/applications", "/admin/applications", {}, 422),
    ("POST", "/admin/applications/<app_id>", "/admin/applications/desktop", {}, 422),
    ("POST", "/admin/applications/<app_id>/enabled", "/admin/applications/desktop/enabled",
     {"enabled": "1"}, 302),
    ("POST", "/admin/flavors", "/admin/flavors", {}, 422),
    ("POST", "/admin/flavors/<name>", "/admin/flavors/no-gpu", {}, 422),
    ("POST", "/admin/flavors/<name>/enabled", "/admin/flavors/no-gpu/enabled",
     {"enabled": "1"}, 302),
    ("POST", "/admin/quotas", "/admin/quotas", {}, 422),
    ("POST", "/admin/quotas/<quota_id>", "/admin/quotas/{quota}", {"max_jobs": "7"}, 302),
    ("POST", "/admin/quotas/<quota_id>/delete", "/admin/quotas/{quota}/delete", {}, 302),
    ("GET", "/admin/workloads", "/admin/workloads", None, 200),
    ("POST", "/admin/workloads/<workload_id>/stop", "/admin/workloads/no-such/stop", {}, 404),
]


def test_every_admin_page_is_in_the_table(admin_portal: Flask) -> None:
    assert _rules(admin_portal, "admin") == {(m, r) for m, r, *_ in PAGES}


@pytest.mark.parametrize("role", ROLES)
def test_admin_pages_answer_each_role(admin_site: dict[str, Any], role: str) -> None:
    app = admin_site["portal"]
    client = signed_in(app, None if role == "anonymous" else AS_ROLE[role])
    quota = default_quota_id(app)
    wrong = []
    for method, _, path, form, admin_status in PAGES:
        path = path.format(quota=quota)
        response = client.get(path) if method == "GET" else post(client, path, form)
        if role == "anonymous":
            ok = response.status_code == 302 and \
                response.headers["Location"].startswith("/signin?next=")
        elif role == "admin":
            ok = response.status_code == admin_status
        else:
            ok = response.status_code == 403 and "not_an_admin" in text(response)
        if not ok:
            wrong.append(f"{method} {path}: {response.status_code}")
    assert wrong == []


@pytest.mark.parametrize("role", ROLES)
def test_the_admin_link_is_shown_to_administrators_only(admin_portal: Flask,
                                                        role: str) -> None:
    page = signed_in(admin_portal, None if role == "anonymous" else AS_ROLE[role]).get("/")
    assert ('href="/admin/"' in text(page)) is (role == "admin")


def test_admin_forms_need_the_csrf_token(admin_portal: Flask) -> None:
    client = signed_in(admin_portal, "admin-1")
    response = client.post("/admin/flavors/no-gpu/enabled", data={"enabled": "0"})
    assert response.status_code == 400 and "csrf_failed" in text(response)
    assert client.get("/api/v1/flavors") is not None
    with admin_portal.extensions["vre.db"].session() as session:
        assert session.get(Flavor, "no-gpu").enabled


# -- the catalogue API --------------------------------------------------------------------

def test_researchers_see_only_the_flavors_they_may_use(admin_portal: Flask,
                                                       token: Callable[..., str]) -> None:
    admin = auth(token("admin-1", "admin"))
    client = admin_portal.test_client()
    for body in ({"name": "curate", "cpus": 2, "memory_mib": 4096, "max_runtime_minutes": 60,
                  "allowed_roles": ["steward"]},
                 {"name": "lung-big", "cpus": 8, "memory_mib": 32768,
                  "max_runtime_minutes": 60, "allowed_projects": ["lung"]},
                 {"name": "retired", "cpus": 1, "memory_mib": 1024, "max_runtime_minutes": 60,
                  "enabled": False}):
        assert client.post("/api/v1/flavors", headers=admin, json=body).status_code == 201

    researcher = client.get("/api/v1/flavors", headers=auth(token("res-1", "researcher")))
    seen = {f["name"]: f for f in researcher.get_json()}
    assert set(seen) == {"no-gpu", "shared-gpu", "small-gpu", "medium-gpu", "large-gpu",
                         "desktop"}
    assert seen["no-gpu"]["usable"] and seen["no-gpu"]["refusal"] is None
    assert not seen["small-gpu"]["usable"], "this host has no GPU"
    assert seen["small-gpu"]["refusal"] == "exceeds_host" and "GPUs" in \
        seen["small-gpu"]["reason"]
    steward = client.get("/api/v1/flavors", headers=auth(token("steward-1", "steward")))
    assert "curate" in {f["name"] for f in steward.get_json()}
    assert client.get("/api/v1/flavors/retired", headers=auth(
        token("res-1", "researcher"))).status_code == 404

    everything = {f["name"]: f for f in client.get("/api/v1/flavors",
                                                   headers=admin).get_json()}
    assert set(everything) == {"no-gpu", "shared-gpu", "small-gpu", "medium-gpu",
                               "large-gpu", "desktop", "curate", "lung-big", "retired"}
    assert everything["retired"]["refusal"] == "flavor_disabled"
    assert everything["curate"]["refusal"] == "flavor_not_allowed"
    assert list(everything) == ["retired", "curate", "desktop", "no-gpu", "lung-big",
                                "shared-gpu", "small-gpu", "medium-gpu", "large-gpu"], \
        "smallest first"
    assert everything["shared-gpu"]["gpu_share"] == 4 and everything["small-gpu"]["gpu_share"] \
        == 1


def test_flavors_reserved_for_a_project_need_its_membership(admin_site: dict[str, Any],
                                                            token: Callable[..., str]) -> None:
    client = admin_site["portal"].test_client()
    admin = auth(token("admin-1", "admin"))
    assert client.post("/api/v1/flavors", headers=admin, json={
        "name": "lung-big", "cpus": 8, "memory_mib": 32768, "max_runtime_minutes": 60,
        "allowed_projects": ["lung"]}).status_code == 201
    member = auth(token("res-1", "researcher"))
    names = {f["name"] for f in client.get("/api/v1/flavors", headers=member).get_json()}
    assert "lung-big" not in names, "not offered unless the project is named"
    found = client.get("/api/v1/flavors?project=lung", headers=member)
    assert found.status_code == 200 and "lung-big" in {f["name"] for f in found.get_json()}
    outsider = client.get("/api/v1/flavors?project=lung",
                          headers=auth(token("someone", "researcher")))
    unknown = client.get("/api/v1/flavors?project=nope", headers=member)
    assert unknown.status_code == 404 and unknown.get_json()["error"]["field"] == "project"
    # A project the caller is not in answers as one that does not exist: names don't leak.
    assert outsider.status_code == 404
    assert outsider.get_json()["error"]["code"] == unknown.get_json()["error"]["code"]


def test_naming_a_project_to_start_on_its_flavor_is_checked(admin_site: dict[str, Any],
                                                           token: Callable[..., str]) -> None:
    """A project opens the flavors reserved for it, so a job or desktop that names one is
    refused unless the caller is a member, just as the listing is: an outsider cannot claim
    a project to get its machines."""
    client = admin_site["portal"].test_client()
    assert client.post("/api/v1/flavors", headers=auth(token("admin-1", "admin")), json={
        "name": "lung-big", "cpus": 1, "memory_mib": 512, "max_runtime_minutes": 60,
        "allowed_projects": ["lung"]}).status_code == 201
    job = {"command": ["true"], "flavor": "lung-big", "project": ["lung"], "dry_run": True}
    member = client.post("/api/v1/jobs", headers=auth(token("res-1", "researcher")), json=job)
    assert member.status_code == 200, member.get_json()
    unknown = client.post("/api/v1/jobs", headers=auth(token("res-1", "researcher")),
                          json={**job, "project": ["nope"]})
    for path, body in (("/api/v1/jobs", job), ("/api/v1/desktops", {
            "application": "desktop", "flavor": "lung-big", "datasets": ["ds-1"],
            "project": ["lung"]})):
        outsider = client.post(path, headers=auth(token("someone", "researcher")), json=body)
        assert outsider.status_code == unknown.status_code == 404, outsider.get_json()
        assert outsider.get_json()["error"]["code"] == unknown.get_json()["error"]["code"]
        assert outsider.get_json()["error"]["field"] == "project"
    with admin_site["portal"].extensions["vre.db"].session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Workload)) == 0


def test_a_job_started_for_a_project_counts_against_its_quota(admin_site: dict[str, Any],
                                                             token: Callable[..., str]) -> None:
    """A project's quota counts the jobs started for it, whoever started them; a job for no
    project counts against its owner's quota alone."""
    client = admin_site["portal"].test_client()
    assert client.post("/api/v1/quotas", headers=auth(token("admin-1", "admin")), json={
        "scope": "project", "subject": "lung", "max_jobs": 1}).status_code == 201
    member = auth(token("res-1", "researcher"))
    for_lung = {"command": ["true"], "project": ["lung"]}
    first = client.post("/api/v1/jobs", headers=member, json=for_lung)
    assert first.status_code == 201, first.get_json()
    second = client.post("/api/v1/jobs", headers=member, json=for_lung)
    error = second.get_json()["error"]
    assert second.status_code == 409 and error["code"] == "quota_jobs", error
    assert "project 'lung'" in error["message"]
    alone = client.post("/api/v1/jobs", headers=member, json={"command": ["true"]})
    assert alone.status_code == 201, alone.get_json()
    with admin_site["portal"].extensions["vre.db"].session() as session:
        charged = {w.id: w.projects for w in session.scalars(sa.select(Workload))}
    assert charged == {first.get_json()["id"]: ["lung"], alone.get_json()["id"]: []}


def test_submissions_at_the_same_instant_never_overrun_a_quota(admin_site: dict[str, Any],
                                                                token: Callable[..., str]
                                                                ) -> None:
    """Many submissions at once against a quota of three jobs, for the user and for the
    project: three are queued, every other one is refused, however they interleave."""
    portal = admin_site["portal"]
    admin = auth(token("admin-1", "admin"))
    for scope, subject in (("user", "res-1"), ("project", "lung")):
        assert portal.test_client().post("/api/v1/quotas", headers=admin, json={
            "scope": scope, "subject": subject, "max_jobs": 3}).status_code == 201
    member = auth(token("res-1", "researcher"))
    for body in ({"command": ["true"]}, {"command": ["true"], "project": ["lung"]}):
        ready = threading.Barrier(12)

        def submit(body: dict[str, Any] = body, ready: threading.Barrier = ready) -> int:
            client = portal.test_client()
            ready.wait()
            return client.post("/api/v1/jobs", headers=member, json=body).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = sorted(pool.map(lambda _: submit(), range(12)))
        assert codes == [201] * 3 + [409] * 9, codes
        with portal.extensions["vre.db"].session() as session:
            session.execute(sa.update(Workload).values(state="cancelled"))


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "field"), [
    ("POST", "/api/v1/flavors", {"name": "no-gpu", "cpus": 1, "memory_mib": 512,
                                 "max_runtime_minutes": 10}, 409, "flavor_exists", "name"),
    ("POST", "/api/v1/flavors", {**FLAVOR, "cpus": 0}, 422, "validation_error", "cpus"),
    ("POST", "/api/v1/flavors", {**FLAVOR, "cpus": "many"}, 422, "validation_error", "cpus"),
    ("POST", "/api/v1/flavors", {**FLAVOR, "name": "Big One"}, 422, "validation_error",
     "name"),
    ("POST", "/api/v1/flavors", {**FLAVOR, "gpus": 2, "gpu_share": 4}, 422,
     "validation_error", None),
    ("POST", "/api/v1/flavors", {**FLAVOR, "gpus": 1, "gpu_share": 0}, 422,
     "validation_error", "gpu_share"),
    ("POST", "/api/v1/flavors", {**FLAVOR, "gpu_model": "A100"}, 422, "validation_error",
     None),
    ("POST", "/api/v1/flavors", {**FLAVOR, "allowed_roles": ["wizard"]}, 422,
     "validation_error", "allowed_roles.0"),
    ("POST", "/api/v1/flavors", {**FLAVOR, "allowed_projects": ["Not A Project"]}, 422,
     "validation_error", None),
    ("POST", "/api/v1/flavors", {**FLAVOR, "colour": "blue"}, 422, "unknown_field", "colour"),
    ("POST", "/api/v1/flavors", {"name": "big"}, 422, "missing_field", "cpus"),
    ("PATCH", "/api/v1/flavors/nope", {"cpus": 2}, 404, "not_found", "name"),
    ("PATCH", "/api/v1/flavors/no-gpu", {"cpus": -1}, 422, "validation_error", "cpus"),
    ("PATCH", "/api/v1/flavors/no-gpu", {"name": "other"}, 422, "unknown_field", "name"),
    ("GET", "/api/v1/flavors/nope", None, 404, "not_found", "name"),
    ("POST", "/api/v1/applications", {**APPLICATION, "id": "desktop"}, 409,
     "application_exists", "id"),
    ("POST", "/api/v1/applications", {**APPLICATION, "kind": "game"}, 422,
     "validation_error", "kind"),
    ("POST", "/api/v1/applications", {**APPLICATION, "image_digest": "md5:00"}, 422,
     "validation_error", "image_digest"),
    ("POST", "/api/v1/applications", {**APPLICATION, "image": "bad image"}, 422,
     "validation_error", "image"),
    ("POST", "/api/v1/applications", {**APPLICATION, "command": "python"}, 422,
     "validation_error", "command"),
    ("PATCH", "/api/v1/applications/nope", {"name": "x"}, 404, "not_found", "id"),
    ("GET", "/api/v1/applications/nope", None, 404, "not_found", "id"),
    ("POST", "/api/v1/quotas", {"scope": "user", "subject": "*", "max_jobs": 1}, 409,
     "quota_exists", "subject"),
    ("POST", "/api/v1/quotas", {"scope": "user", "subject": "ghost", "max_jobs": 1}, 422,
     "unknown_user", "subject"),
    ("POST", "/api/v1/quotas", {"scope": "team", "subject": "x"}, 422, "validation_error",
     "scope"),
    ("POST", "/api/v1/quotas", {"scope": "project", "subject": "Lung!"}, 422,
     "validation_error", None),
    ("POST", "/api/v1/quotas", {"scope": "user", "subject": "res-1", "max_jobs": -1}, 422,
     "validation_error", "max_jobs"),
    ("PATCH", "/api/v1/quotas/nope", {"max_jobs": 1}, 404, "not_found", "quota_id"),
    ("DELETE", "/api/v1/quotas/nope", None, 404, "not_found", "quota_id"),
    ("GET", "/api/v1/applications?kind=game", None, 422, "validation_error", "kind"),
])
def test_bad_requests_get_stable_codes(admin_portal: Flask, token: Callable[..., str],
                                       method: str, path: str, body: Any, status: int,
                                       code: str, field: str | None) -> None:
    response = admin_portal.test_client().open(path, method=method, json=body,
                                               headers=auth(token("admin-1", "admin")))
    error = response.get_json()["error"]
    assert (response.status_code, error["code"]) == (status, code), error
    if field is not None:
        assert error["field"] == field
    with admin_portal.extensions["vre.db"].session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Flavor)) == \
            len(DEFAULT_FLAVORS)
        assert session.scalar(sa.select(sa.func.count()).select_from(Application)) == 3
        assert session.scalar(sa.select(sa.func.count()).select_from(Quota)) == 1


def test_malformed_json_is_refused(admin_portal: Flask, token: Callable[..., str]) -> None:
    response = admin_portal.test_client().post(
        "/api/v1/flavors", data="{", content_type="application/json",
        headers=auth(token("admin-1", "admin")))
    assert response.status_code == 400 and response.get_json()["error"]["code"] == \
        "malformed_json"


def test_a_change_is_checked_against_the_whole_flavor(admin_portal: Flask,
                                                      token: Callable[..., str]) -> None:
    client = admin_portal.test_client()
    admin = auth(token("admin-1", "admin"))
    set_model = client.patch("/api/v1/flavors/small-gpu", headers=admin,
                             json={"gpu_model": "A100"})
    assert set_model.status_code == 200 and set_model.get_json()["gpu_model"] == "A100"
    no_gpus = client.patch("/api/v1/flavors/small-gpu", headers=admin, json={"gpus": 0})
    assert no_gpus.status_code == 422, "a GPU model without GPUs"
    both = client.patch("/api/v1/flavors/small-gpu", headers=admin,
                        json={"gpus": 0, "gpu_model": None})
    assert both.status_code == 200 and both.get_json()["gpu_model"] is None
    disabled = client.patch("/api/v1/flavors/no-gpu", headers=admin, json={"enabled": False})
    assert disabled.get_json()["enabled"] is False
    researcher = auth(token("res-1", "researcher"))
    assert "no-gpu" not in {f["name"] for f in client.get("/api/v1/flavors",
                                                          headers=researcher).get_json()}


def test_disabled_applications_are_hidden_from_researchers(admin_portal: Flask,
                                                           token: Callable[..., str]) -> None:
    client = admin_portal.test_client()
    admin, researcher = auth(token("admin-1", "admin")), auth(token("res-1", "researcher"))
    assert client.patch("/api/v1/applications/spark", headers=admin,
                        json={"enabled": False}).status_code == 200
    batch = client.get("/api/v1/applications?kind=batch", headers=researcher).get_json()
    assert [a["id"] for a in batch] == ["pytorch"]
    assert client.get("/api/v1/applications/spark", headers=researcher).status_code == 404
    assert client.get("/api/v1/applications/spark", headers=admin).status_code == 200
    every = client.get("/api/v1/applications", headers=admin).get_json()
    assert [a["id"] for a in every] == ["desktop", "pytorch", "spark"], "desktops first"
    pinned = client.post("/api/v1/applications", headers=admin, json={
        **APPLICATION, "image_digest": "sha256:" + "a" * 64,
        "command": ["rstudio-server", "--www-port", "8787"]})
    assert pinned.status_code == 201 and pinned.get_json()["command"][0] == "rstudio-server"


def test_a_user_reads_their_own_quota_and_no_other(admin_portal: Flask,
                                                   token: Callable[..., str]) -> None:
    client = admin_portal.test_client()
    admin, researcher = auth(token("admin-1", "admin")), auth(token("res-1", "researcher"))
    default = client.get("/api/v1/quotas", headers=researcher).get_json()
    assert [(q["subject"], q["max_desktops"]) for q in default] == [("*", 2)]
    own = client.post("/api/v1/quotas", headers=admin, json={
        "scope": "user", "subject": "res-1", "max_desktops": 1, "gpu_hours_per_month": 20})
    assert own.status_code == 201
    mine = client.get("/api/v1/quotas", headers=researcher).get_json()
    assert [(q["subject"], q["max_desktops"]) for q in mine] == [("res-1", 1)]
    assert client.get("/api/v1/quotas?subject=res-1", headers=researcher).status_code == 200
    for query in ("?subject=steward-1", "?scope=project"):
        assert client.get("/api/v1/quotas" + query, headers=researcher).status_code == 403
    assert client.get("/api/v1/quotas?scope=user&subject=res-1", headers=admin).get_json()[0][
        "gpu_hours_per_month"] == 20
    removed = client.delete(f"/api/v1/quotas/{own.get_json()['id']}", headers=admin)
    assert removed.status_code == 200
    again = client.get("/api/v1/quotas", headers=researcher).get_json()
    assert [q["subject"] for q in again] == ["*"], "back to the default"


def test_the_catalogue_is_in_the_openapi_document(admin_portal: Flask) -> None:
    paths = admin_portal.test_client().get("/api/v1/openapi.json").get_json()["paths"]
    assert paths["/api/v1/flavors"]["post"]["x-roles"] == ["admin"]
    assert "x-roles" not in paths["/api/v1/flavors"]["get"]
    assert "/api/v1/quotas/{quota_id}" in paths


# -- the pages: users ---------------------------------------------------------------------

def test_an_administrator_creates_an_account_that_signs_in(admin_portal: Flask) -> None:
    admin = signed_in(admin_portal, "admin-1")
    assert "No accounts yet" not in text(admin.get("/admin/users"))
    created = post(admin, "/admin/users", {"username": "newbie", "display_name": "New Bie",
                                           "email": "newbie@hospital.example",
                                           "roles": ["researcher", "steward"]})
    page = text(created)
    assert created.status_code == 201 and "Account newbie created" in page
    assert created.headers["Cache-Control"] == "no-store"
    password = re.search(r'<code class="secret">([^<]+)</code>', page).group(1)
    with admin_portal.extensions["vre.db"].session() as session:
        user = session.scalar(sa.select(User).where(User.username == "newbie"))
        assert sorted(user.roles) == ["researcher", "steward"]
        assert password not in (user.password_hash or "")
    browser = signed_in(admin_portal, None)
    assert post(browser, "/signin", username="newbie", password=password).status_code == 302
    assert "Signed in as" in text(browser.get("/"))
    again = text(admin.get("/admin/users"))
    assert password not in again, "shown once"


@pytest.mark.parametrize(("form", "status", "code"), [
    ({"username": "res-1", "roles": "researcher"}, 409, "username_taken"),
    ({"username": "Bad Name", "roles": "researcher"}, 422, "validation_error"),
    ({"username": "shorty", "password": "tiny-pw", "roles": "researcher"}, 422,
     "weak_password"),
    ({"username": "wizard", "roles": "wizard"}, 422, "validation_error"),
])
def test_account_form_errors_are_shown_on_the_form(admin_portal: Flask, form: dict,
                                                   status: int, code: str) -> None:
    response = post(signed_in(admin_portal, "admin-1"), "/admin/users", form)
    page = text(response)
    assert response.status_code == status and code in page
    assert "password" not in form or form["password"] not in page, "never sent back"


def test_roles_disable_and_enable(admin_portal: Flask) -> None:
    admin = signed_in(admin_portal, "admin-1")
    assert post(admin, "/admin/users/res-1/roles",
                {"roles": ["researcher", "auditor"]}).status_code == 302
    assert "auditor" in text(admin.get("/admin/users/res-1"))
    post(admin, "/admin/users/res-1/active", active="0")
    db = admin_portal.extensions["vre.db"]
    with db.session() as session:
        user = session.get(User, "res-1")
        assert sorted(user.roles) == ["auditor", "researcher"] and not user.active
    page = text(admin.get("/admin/users/res-1"))
    assert "Enable account" in page
    assert "could not be told" in page, "no dataset service here: the page says so"
    post(admin, "/admin/users/res-1/active", active="1")
    with db.session() as session:
        assert session.get(User, "res-1").active
    assert admin.get("/admin/users/nobody").status_code == 404


def test_administrators_cannot_lock_themselves_out(admin_portal: Flask) -> None:
    admin = signed_in(admin_portal, "admin-1")
    demote = post(admin, "/admin/users/admin-1/roles", roles="researcher")
    assert "cannot_demote_self" in text(admin.get(demote.headers["Location"]))
    disable = post(admin, "/admin/users/admin-1/active", active="0")
    assert "cannot_disable_self" in text(admin.get(disable.headers["Location"]))
    with admin_portal.extensions["vre.db"].session() as session:
        me = session.get(User, "admin-1")
        assert me.roles == ["admin"] and me.active


def test_roles_of_provider_accounts_are_not_edited_here(admin_portal: Flask) -> None:
    with admin_portal.extensions["vre.db"].session() as session:
        session.add(User(id="kc-1", username="kc-user", roles=["researcher"],
                         identity_provider="https://kc.example/realms/vre",
                         external_subject="kc-1"))
    admin = signed_in(admin_portal, "admin-1")
    assert "come from the identity provider" in text(admin.get("/admin/users/kc-1"))
    refused = post(admin, "/admin/users/kc-1/roles", roles="admin")
    assert "roles_managed_externally" in text(admin.get(refused.headers["Location"]))


# -- the pages: projects through the dataset service --------------------------------------

def test_projects_and_members_round_trip(admin_site: dict[str, Any],
                                         token: Callable[..., str]) -> None:
    admin = signed_in(admin_site["portal"], "admin-1")
    listing = text(admin.get("/admin/projects"))
    assert "lung" in listing and "steward-1" in listing
    created = post(admin, "/admin/projects", name="brain-mri", title="Brain MRI",
                   description="Glioma follow-up")
    assert created.status_code == 302 and created.headers["Location"] == \
        "/admin/projects/brain-mri"
    assert "Project brain-mri created" in text(admin.get(created.headers["Location"]))
    assert members_of(admin_site["datasets"], token, "brain-mri") == {"admin-1": "steward"}

    assert post(admin, "/admin/projects/brain-mri/members", user="res-1",
                role="researcher").status_code == 302
    post(admin, "/admin/projects/brain-mri/members", user="steward-1", role="researcher")
    post(admin, "/admin/projects/brain-mri/members", user="steward-1", role="steward")
    assert members_of(admin_site["datasets"], token, "brain-mri") == {
        "admin-1": "steward", "res-1": "researcher", "steward-1": "steward"}
    page = text(admin.get("/admin/projects/brain-mri"))
    assert "remove<span class=\"sr-only\"> res-1" in page
    post(admin, "/admin/projects/brain-mri/members/res-1/remove")
    assert "res-1" not in members_of(admin_site["datasets"], token, "brain-mri")

    duplicate = post(admin, "/admin/projects", name="lung", title="Again")
    assert duplicate.status_code == 409 and "project_exists" in text(duplicate)
    bad = post(admin, "/admin/projects", name="X", title="")
    assert bad.status_code == 422 and 'value="X"' in text(bad), "the form keeps its values"
    ghost = post(admin, "/admin/projects/brain-mri/members", user="ghost", role="steward")
    assert "unknown_user" in text(admin.get(ghost.headers["Location"]))
    wrong_role = post(admin, "/admin/projects/brain-mri/members", user="res-1", role="owner")
    assert "validation_error" in text(admin.get(wrong_role.headers["Location"]))
    assert admin.get("/admin/projects/nope").status_code == 404


def test_the_projects_page_says_when_there_are_none(admin_site: dict[str, Any]) -> None:
    with admin_site["datasets"].extensions["vre.db"].session() as session:
        session.execute(sa.delete(ProjectMember))
        session.execute(sa.delete(Project))
    page = text(signed_in(admin_site["portal"], "admin-1").get("/admin/projects"))
    assert "No projects yet" in page


# -- the pages: catalogues and quotas -----------------------------------------------------

def test_flavor_forms(admin_portal: Flask, token: Callable[..., str]) -> None:
    admin = signed_in(admin_portal, "admin-1")
    listing = text(admin.get("/admin/flavors"))
    assert "small-gpu" in listing and "too large for this host" in listing
    created = post(admin, "/admin/flavors", {
        "name": "large", "description": "Big", "cpus": "8", "memory_gib": "31.5",
        "gpus": "0", "max_runtime_hours": "1.5", "allowed_roles": ["steward", "researcher"],
        "allowed_projects": "lung, brain", "enabled": "on"})
    assert created.status_code == 302
    api = admin_portal.test_client().get("/api/v1/flavors/large",
                                         headers=auth(token("admin-1", "admin"))).get_json()
    assert (api["memory_mib"], api["max_runtime_minutes"]) == (32256, 90)
    assert api["allowed_roles"] == ["researcher", "steward"]
    assert api["allowed_projects"] == ["brain", "lung"]

    duplicate = post(admin, "/admin/flavors", name="large", cpus="1", memory_gib="1",
                     max_runtime_hours="1")
    assert duplicate.status_code == 409 and "flavor_exists" in text(duplicate)
    not_a_number = post(admin, "/admin/flavors", name="odd", cpus="lots", memory_gib="1",
                        max_runtime_hours="1")
    assert not_a_number.status_code == 422 and "cpus" in text(not_a_number)
    assert 'value="odd"' in text(not_a_number), "the form keeps its values"

    edit = text(admin.get("/admin/flavors/large"))
    assert 'value="31.5"' in edit and 'value="1.5"' in edit and 'value="lung brain"' \
        not in edit and 'value="brain lung"' in edit
    saved = post(admin, "/admin/flavors/large", {
        "description": "Bigger", "cpus": "12", "memory_gib": "48", "gpus": "0",
        "max_runtime_hours": "2", "enabled": "on"})
    assert saved.status_code == 302
    bad = post(admin, "/admin/flavors/large", {"cpus": "-2", "memory_gib": "1",
                                               "max_runtime_hours": "1"})
    assert bad.status_code == 422 and "validation_error" in text(bad)
    post(admin, "/admin/flavors/large/enabled", enabled="0")
    with admin_portal.extensions["vre.db"].session() as session:
        row = session.get(Flavor, "large")
        assert (row.cpus, row.memory_mib, row.allowed_projects, row.enabled) == \
            (12, 49152, [], False)
    assert admin.get("/admin/flavors/nope").status_code == 404
    assert post(admin, "/admin/flavors/nope/enabled", enabled="1").status_code == 404


def test_application_forms(admin_portal: Flask) -> None:
    admin = signed_in(admin_portal, "admin-1")
    created = post(admin, "/admin/applications", {
        "id": "jupyter", "name": "JupyterLab", "kind": "desktop",
        "image": "vre/jupyter:1.0", "image_digest": "sha256:" + "b" * 64,
        "command": "jupyter lab --ip '0.0.0.0'", "local_command": "session:desktop",
        "enabled": "on"})
    assert created.status_code == 302
    with admin_portal.extensions["vre.db"].session() as session:
        row = session.get(Application, "jupyter")
        assert row.command == ["jupyter", "lab", "--ip", "0.0.0.0"] and row.enabled
        assert row.local_command == ["session:desktop"]
    bad_session = post(admin, "/admin/applications", id="odd", name="O", kind="desktop",
                       image="x/y:1", local_command="session:../../bin/sh")
    assert bad_session.status_code == 422 and "local_command" in text(bad_session)
    assert "jupyter lab --ip 0.0.0.0" in text(admin.get("/admin/applications/jupyter"))
    duplicate = post(admin, "/admin/applications", id="jupyter", name="J", kind="batch",
                     image="x/y:1")
    assert duplicate.status_code == 409 and "application_exists" in text(duplicate)
    unbalanced = post(admin, "/admin/applications", id="broken", name="B", kind="batch",
                      image="x/y:1", command="python 'oops")
    assert unbalanced.status_code == 422 and "command" in text(unbalanced)
    saved = post(admin, "/admin/applications/jupyter", name="JupyterLab 4", kind="desktop",
                 image="vre/jupyter:4.0", command="")
    assert saved.status_code == 302
    with admin_portal.extensions["vre.db"].session() as session:
        row = session.get(Application, "jupyter")
        assert (row.name, row.command, row.image_digest, row.enabled) == \
            ("JupyterLab 4", [], None, False)
    post(admin, "/admin/applications/jupyter/enabled", enabled="1")
    with admin_portal.extensions["vre.db"].session() as session:
        assert session.get(Application, "jupyter").enabled


def test_quota_forms(admin_portal: Flask) -> None:
    admin = signed_in(admin_portal, "admin-1")
    assert "every user" in text(admin.get("/admin/quotas"))
    by_name = post(admin, "/admin/quotas", scope="user", subject="res-1", max_desktops="1",
                   cpu_hours_per_month="250.5")
    assert by_name.status_code == 302
    project = post(admin, "/admin/quotas", scope="project", subject="lung", max_gpus="4")
    assert project.status_code == 302
    duplicate = post(admin, "/admin/quotas", scope="user", subject="res-1", max_jobs="1")
    assert duplicate.status_code == 409 and "quota_exists" in text(duplicate)
    ghost = post(admin, "/admin/quotas", scope="user", subject="ghost")
    assert ghost.status_code == 422 and "unknown_user" in text(ghost)
    fraction = post(admin, "/admin/quotas", scope="user", subject="steward-1",
                    max_jobs="1.5")
    assert fraction.status_code == 422 and "max_jobs" in text(fraction)
    with admin_portal.extensions["vre.db"].session() as session:
        own = session.scalar(sa.select(Quota).where(Quota.subject == "res-1"))
        assert (own.max_desktops, own.cpu_hours_per_month, own.max_jobs) == (1, 250.5, None)
        own_id = own.id
    assert "Their own quota" in text(admin.get("/admin/users/res-1"))
    assert "The default for every user" in text(admin.get("/admin/users/steward-1"))
    edited = post(admin, f"/admin/quotas/{own_id}", max_desktops="3", max_jobs="")
    assert edited.status_code == 302
    negative = post(admin, f"/admin/quotas/{own_id}", max_desktops="-1")
    assert negative.status_code == 422
    with admin_portal.extensions["vre.db"].session() as session:
        assert session.get(Quota, own_id).max_desktops == 3
    post(admin, f"/admin/quotas/{own_id}/delete")
    with admin_portal.extensions["vre.db"].session() as session:
        assert session.get(Quota, own_id) is None
    assert admin.get(f"/admin/quotas/{own_id}").status_code == 404


def test_empty_catalogues_say_so(config: Config) -> None:
    app = portal.app.create_app(config)
    app.extensions["vre.db"].migrate(config, "portal")
    app.testing = True
    add_people(app)
    try:
        admin = signed_in(app, "admin-1")
        assert "No flavors yet" in text(admin.get("/admin/flavors"))
        assert "No applications yet" in text(admin.get("/admin/applications"))
        assert "No quotas" in text(admin.get("/admin/quotas"))
        assert admin.get("/admin/").status_code == 200
    finally:
        app.extensions["vre.db"].engine.dispose()


# -- first start --------------------------------------------------------------------------

def test_first_start_seeds_the_catalogues_once(make_app: Callable[[str], Flask],
                                               config: Config) -> None:
    app = make_app("portal")
    first_start(config)
    db = app.extensions["vre.db"]
    with db.session() as session:
        assert {f.name for f in session.scalars(sa.select(Flavor))} == \
            {f.name for f in DEFAULT_FLAVORS}
        assert {a.id for a in session.scalars(sa.select(Application))} == \
            {a.id for a in DEFAULT_APPLICATIONS}
        sizes = {f.name: (f.cpus, f.memory_mib, f.gpus, f.gpu_share, f.max_runtime_minutes)
                 for f in session.scalars(sa.select(Flavor))}
        assert sizes == {"no-gpu": (2, 4096, 0, 1, 240), "shared-gpu": (2, 8192, 1, 4, 240),
                         "small-gpu": (4, 16384, 1, 1, 480),
                         "medium-gpu": (8, 32768, 1, 1, 1440),
                         "large-gpu": (16, 65536, 2, 1, 1440), "desktop": (2, 4096, 0, 1, 480)}
        assert all(f.description for f in session.scalars(sa.select(Flavor)))
        default = session.scalar(sa.select(Quota).where(Quota.subject == EVERYONE))
        assert (default.max_desktops, default.max_jobs, default.max_gpus,
                default.cpu_hours_per_month, default.gpu_hours_per_month) == (2, 50, 2, None, 200)
        assert session.get(Application, "desktop").kind == "desktop"
        session.get(Flavor, "no-gpu").enabled = False
    first_start(config)
    with db.session() as session:
        assert not session.get(Flavor, "no-gpu").enabled, "an administrator's change stays"
        assert session.scalar(sa.select(sa.func.count()).select_from(Quota)) == 1
        assert seed_defaults(session) is False


def test_submissions_recorded_together_are_each_decided_as_if_alone(
        admin_portal: Flask, token: Callable[..., str]) -> None:
    """One transaction of several submissions (the group commit of a burst): each is checked
    against what those before it took, a refusal is that submission's answer alone, a key
    repeated within the group answers its first job, and each job queued has its own
    JOB_SUBMITTED trace, in the order of the submissions."""
    assert admin_portal.test_client().post("/api/v1/quotas", headers=auth(
        token("admin-1", "admin")), json={"scope": "user", "subject": "res-1",
                                          "max_jobs": 3}).status_code == 201
    me = Principal("res-1", frozenset({"researcher"}))
    other = Principal("res-2", frozenset({"researcher"}))

    def ask(name: str, **more: Any) -> Submission:
        return Submission(more.pop("who", me), JobRequest(command=("true",), name=name, **more))

    dry = Submission(me, JobRequest(command=("true",), name="dry"), dry_run=True)
    items = [ask("a", idempotency_key="k1"), ask("a-again", idempotency_key="k1"),
             ask("unknown", flavor="no-such-flavor"), ask("b"), dry, ask("c"), ask("over"),
             ask("theirs", who=other)]
    app = admin_portal
    with app.app_context(), app.extensions["vre.db"].session() as session:
        outcomes = submit_all(session, items, None, HostCapacity(16, 65536, 0),  # type: ignore[arg-type]
                              utcnow(), outbox_of(app))
    named = dict(zip([i.ask.name for i in items], outcomes, strict=True))
    assert named["a"][1] is True and named["a-again"] == (named["a"][0], False)
    assert isinstance(named["unknown"], ApiError) and named["unknown"].code == "flavor_unknown"
    assert named["dry"][1] is True and named["c"][1] is True
    assert isinstance(named["over"], ApiError) and named["over"].code == "quota_jobs"
    assert named["theirs"][1] is True
    queued = [named[n][0]["id"] for n in ("a", "b", "c", "theirs")]
    with app.extensions["vre.db"].session() as session:
        assert sorted(session.scalars(sa.select(Workload.id))) == sorted(queued)
        traces = [json.loads(t) for t in session.scalars(
            sa.select(trace_outbox.c.trace).order_by(trace_outbox.c.position))]
    submitted = [t["details"]["workload_id"] for t in traces if t["action"] == "JOB_SUBMITTED"]
    assert submitted == queued


def test_a_refused_grant_gives_back_its_place_to_those_refused_for_it(
        admin_site: dict[str, Any], token: Callable[..., str]) -> None:
    """Grants are asked for after every submission of a group is decided. One the dataset
    service refuses gives back the quota its submission took: a later submission refused
    for that quota is decided again, and queued."""
    app = admin_site["portal"]
    assert app.test_client().post("/api/v1/quotas", headers=auth(token("admin-1", "admin")),
                                  json={"scope": "user", "subject": "res-1",
                                        "max_jobs": 2}).status_code == 201
    me = Principal("res-1", frozenset({"researcher"}))
    items = [Submission(me, JobRequest(command=("true",), name=f"on-nothing-{n}",
                                       datasets=("no-such-dataset",))) for n in (1, 2)]
    items += [Submission(me, JobRequest(command=("true",), name="plain")),
             Submission(me, JobRequest(command=("true",), name="third")),
             Submission(me, JobRequest(command=("true",), name="fourth"))]
    with app.app_context(), app.extensions["vre.db"].session() as session:
        outcomes = submit_all(session, items, datasets_as_portal(app),
                              HostCapacity(16, 65536, 0), utcnow(), outbox_of(app))
    *refused, plain, third, fourth = outcomes
    assert all(isinstance(r, ApiError) and r.status == 403 for r in refused), refused
    assert not isinstance(plain, ApiError) and not isinstance(third, ApiError)
    assert isinstance(fourth, ApiError) and fourth.code == "quota_jobs"
    with app.extensions["vre.db"].session() as session:
        assert sorted(session.scalars(sa.select(Workload.name))) == ["plain", "third"]


def test_a_desktops_work_is_for_the_projects_it_was_started_for(
        admin_site: dict[str, Any], token: Callable[..., str]) -> None:
    """A desktop's token works for the projects its desktop was started for: its jobs are
    charged to them unless they name some of them, they see those projects' flavors and
    quotas, and naming any other project is refused (membership was checked at launch)."""
    app = admin_site["portal"]
    client = app.test_client()
    admin = auth(token("admin-1", "admin"))
    assert client.post("/api/v1/flavors", headers=admin, json={
        "name": "lung-big", "cpus": 1, "memory_mib": 512, "max_runtime_minutes": 60,
        "allowed_projects": ["lung"]}).status_code == 201
    assert client.post("/api/v1/quotas", headers=admin, json={
        "scope": "project", "subject": "lung", "max_jobs": 5}).status_code == 201
    with app.extensions["vre.db"].session() as session:
        session.add(Workload(id="d0123456789abcdef", owner_id="res-1", kind="desktop",
                             application="desktop", flavor="desktop", state="running",
                             reason="", datasets=[], backend_state={}, spec={},
                             cpu_seconds=0.0, memory_peak_bytes=0, gpu_ids=[],
                             created_at=utcnow(), projects=["lung"]))
    desktop = auth(token("res-1", "researcher", scope=WORKLOAD_TOKEN_SCOPE,
                         wid="d0123456789abcdef"))
    flavors = client.get("/api/v1/flavors", headers=desktop).get_json()
    assert "lung-big" in {f["name"] for f in flavors}
    job = client.post("/api/v1/jobs", headers=desktop,
                      json={"command": ["true"], "flavor": "lung-big"})
    assert job.status_code == 201, job.get_json()
    quota = client.get("/api/v1/quota", headers=desktop).get_json()
    assert [(p["project"], p["usage"]["jobs"], p["left"]["max_jobs"])
            for p in quota["projects"]] == [("lung", 1, 4)]
    for path, method in (("/api/v1/jobs", "post"), ("/api/v1/quota?project=heart", "get"),
                         ("/api/v1/flavors?project=heart", "get")):
        refused = getattr(client, method)(path, headers=desktop,
                                          json={"command": ["true"], "project": ["heart"]}
                                          if method == "post" else None)
        assert refused.status_code == 403, (path, refused.get_json())
        assert refused.get_json()["error"]["code"] == "project_not_in_workload"
    with app.extensions["vre.db"].session() as session:
        recorded = {w.id: w.projects for w in session.scalars(
            sa.select(Workload).where(Workload.kind == "job"))}
    assert recorded == {job.get_json()["id"]: ["lung"]}
    # A person asks for a project's quota by naming it; an outsider's answer is as for none.
    member = client.get("/api/v1/quota?project=lung", headers=auth(token("res-1", "researcher")))
    assert member.get_json()["projects"][0]["usage"]["jobs"] == 1
    outsider = client.get("/api/v1/quota?project=lung", headers=auth(token("res-9", "researcher")))
    nothing = client.get("/api/v1/quota?project=nope", headers=auth(token("res-9", "researcher")))
    assert outsider.status_code == nothing.status_code == 404, outsider.get_json()


class _Grants:
    """The dataset service as the portal's grant calls see it: every grant made, and ended
    (a stand-in: the failure under test is the portal's database's, after the grants)."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.ended: list[str] = []

    def create_grant(self, body: dict[str, Any]) -> dict[str, Any]:
        self.made.append(f"g-{body['workload_id']}")
        return {"id": self.made[-1], "mounts": []}

    def create_grants(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"grant": self.create_grant(b), "error": None} for b in bodies]

    def end_grant(self, grant_id: str) -> dict[str, Any]:
        self.ended.append(grant_id)
        return {"id": grant_id}


class _BrokenOutbox:
    def record_all(self, *args: Any, **kwargs: Any) -> list[str]:
        raise sa.exc.OperationalError("INSERT", {}, Exception("the database went away"))


def test_a_group_that_cannot_be_recorded_ends_the_grants_made_for_it(
        admin_portal: Flask) -> None:
    """A database failing after a group's grants were made (here, writing its traces) fails
    every submission of the group, leaves no job, and ends every grant made for it."""
    me = Principal("res-1", frozenset({"researcher"}))
    items = [Submission(me, JobRequest(command=("true",), name=f"j{n}", datasets=("ds-1",)))
             for n in range(3)]
    grants = _Grants()
    app = admin_portal
    with pytest.raises(sa.exc.OperationalError), app.app_context(), \
            app.extensions["vre.db"].session() as session:
        submit_all(session, items, grants, HostCapacity(16, 65536, 0),  # type: ignore[arg-type]
                   utcnow(), _BrokenOutbox())  # type: ignore[arg-type]
    assert len(grants.made) == 3 and sorted(grants.ended) == sorted(grants.made)
    with app.extensions["vre.db"].session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Workload)) == 0
