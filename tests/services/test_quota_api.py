"""A person's own quota over the API (what they may run, what runs, what is left), answered
for a desktop's owner when the desktop asks, and the flavor list marked with the whole start
decision for the kind of workload asked about, that quota included."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from flask import Flask

from portal.catalogues import seed_defaults
from portal.desktops import month_start, usages_of
from portal.models import Quota, Workload
from tests.helpers import auth
from tests.portal_helpers import make_portal
from vre.config import Config
from vre.db import utcnow
from vre.tokens import WORKLOAD_SCOPES

# Room for every default flavor but the GPU ones, whatever machine runs this.
HOST = {"host_cpus": 16, "host_memory_mib": 65536, "host_gpus": 0}


@pytest.fixture
def portal(config: Config) -> Iterator[Flask]:
    app = make_portal(config.model_copy(update=HOST))
    with app.extensions["vre.db"].session() as session:
        seed_defaults(session)
    yield app
    app.extensions["vre.db"].engine.dispose()


def running(app: Flask, owner: str, workload_id: str, kind: str = "desktop",
            flavor: str = "desktop", state: str = "running", hours: float = 1.0) -> None:
    """A workload as the compute agent records one it started `hours` ago."""
    with app.extensions["vre.db"].session() as session:
        session.add(Workload(id=workload_id, owner_id=owner, kind=kind, application="desktop",
                             flavor=flavor, state=state, datasets=[],
                             started_at=utcnow() - timedelta(hours=hours)))


def own_quota(app: Flask, subject: str, **limits: float) -> None:
    with app.extensions["vre.db"].session() as session:
        session.add(Quota(scope="user", subject=subject, **limits))


def desktop_token(token: Callable[..., str], owner: str, workload_id: str) -> dict[str, str]:
    return auth(token(owner, "researcher", scope=" ".join(sorted(WORKLOAD_SCOPES)),
                      wid=workload_id))


def test_a_researcher_sees_their_usage_and_what_is_left(portal: Flask,
                                                        token: Callable[..., str]) -> None:
    running(portal, "res-1", "d0000000000000001")
    running(portal, "res-1", "d0000000000000002")
    running(portal, "res-1", "w0000000000000003", kind="job", flavor="small-gpu")
    running(portal, "res-1", "d0000000000000004", state="stopped")
    running(portal, "someone", "d0000000000000005")
    answer = portal.test_client().get("/api/v1/quota", headers=auth(token("res-1",
                                                                          "researcher")))
    assert answer.status_code == 200, answer.get_json()
    quota = answer.get_json()
    assert quota["limits"] == {"max_desktops": 2, "max_jobs": 50, "max_gpus": 2,
                               "cpu_hours_per_month": None, "gpu_hours_per_month": 200}
    usage = quota["usage"]
    assert (usage["desktops"], usage["jobs"], usage["gpus"]) == (2, 1, 1)
    # An hour each of two 2-CPU desktops and a 4-CPU, 1-GPU job; the stopped one never ran.
    assert usage["cpu_hours"] == pytest.approx(8, abs=0.1)
    assert usage["gpu_hours"] == pytest.approx(1, abs=0.1)
    left = quota["left"]
    assert (left["max_desktops"], left["max_jobs"], left["max_gpus"]) == (0, 49, 1)
    assert left["cpu_hours_per_month"] is None, "no CPU budget: nothing to run out of"
    assert left["gpu_hours_per_month"] == pytest.approx(199, abs=0.1)


def test_a_users_own_quota_replaces_the_default_and_left_never_goes_below_zero(
        portal: Flask, token: Callable[..., str]) -> None:
    own_quota(portal, "res-1", max_desktops=1, cpu_hours_per_month=1)
    running(portal, "res-1", "d0000000000000001", hours=2)
    quota = portal.test_client().get("/api/v1/quota", headers=auth(
        token("res-1", "researcher"))).get_json()
    assert quota["limits"]["max_desktops"] == 1 and quota["limits"]["max_jobs"] is None
    assert quota["left"]["max_desktops"] == 0 and quota["left"]["max_jobs"] is None
    assert quota["left"]["cpu_hours_per_month"] == 0, "4 CPU-hours used of 1"


def test_the_quota_needs_a_token(portal: Flask) -> None:
    answer = portal.test_client().get("/api/v1/quota")
    assert answer.status_code == 401 and answer.get_json()["error"]["code"]


def test_a_desktops_token_answers_for_its_owner(portal: Flask,
                                                token: Callable[..., str]) -> None:
    running(portal, "res-1", "d0000000000000001")
    answer = portal.test_client().get("/api/v1/quota", headers=desktop_token(
        token, "res-1", "d0000000000000001"))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["usage"]["desktops"] == 1
    assert answer.get_json()["left"]["max_desktops"] == 1


def test_the_quota_is_in_the_openapi_document(portal: Flask) -> None:
    paths = portal.test_client().get("/api/v1/openapi.json").get_json()["paths"]
    assert paths["/api/v1/quota"]["get"]["x-scopes"]


# -- the flavors, marked for the kind of workload ------------------------------------------

def flavors(portal: Flask, headers: dict[str, str], query: str = "") -> dict[str, dict]:
    answer = portal.test_client().get("/api/v1/flavors" + query, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    return {f["name"]: f for f in answer.get_json()}


def test_flavors_for_a_desktop_show_the_desktop_quota(portal: Flask,
                                                      token: Callable[..., str]) -> None:
    running(portal, "res-1", "d0000000000000001")
    running(portal, "res-1", "d0000000000000002")
    researcher = auth(token("res-1", "researcher"))
    for_desktop = flavors(portal, researcher, "?kind=desktop")
    assert {f["refusal"] for f in for_desktop.values()} == {"quota_desktops"}
    assert "stop one first" in for_desktop["desktop"]["reason"]
    for_job = flavors(portal, researcher)  # a job by default: the desktop limit is not its
    assert for_job["no-gpu"]["usable"] and for_job["desktop"]["usable"]
    assert flavors(portal, researcher, "?kind=job") == for_job
    one = portal.test_client().get("/api/v1/flavors/desktop?kind=desktop", headers=researcher)
    assert one.get_json()["refusal"] == "quota_desktops"


def test_a_quota_refusal_comes_before_the_host(portal: Flask,
                                               token: Callable[..., str]) -> None:
    researcher = auth(token("res-1", "researcher"))
    assert flavors(portal, researcher)["small-gpu"]["refusal"] == "exceeds_host", \
        "within quota, but this host has no GPU"
    own_quota(portal, "res-1", gpu_hours_per_month=5)
    seen = flavors(portal, researcher)
    assert seen["small-gpu"]["refusal"] == "quota_budget" and "5 of 5" in \
        seen["small-gpu"]["reason"]
    assert seen["no-gpu"]["usable"], "no GPU: the GPU budget does not apply"


def test_a_desktops_token_sees_its_owners_quota_in_the_flavors(
        portal: Flask, token: Callable[..., str]) -> None:
    own_quota(portal, "res-1", max_jobs=0)
    seen = flavors(portal, desktop_token(token, "res-1", "d0000000000000001"))
    assert {f["refusal"] for f in seen.values()} == {"quota_jobs"}
    others = flavors(portal, auth(token("someone", "researcher")))
    assert others["no-gpu"]["usable"], "another person's quota is theirs alone"


def test_the_kind_is_checked(portal: Flask, token: Callable[..., str]) -> None:
    answer = portal.test_client().get("/api/v1/flavors?kind=cluster",
                                      headers=auth(token("res-1", "researcher")))
    error = answer.get_json()["error"]
    assert (answer.status_code, error["code"], error["field"]) == \
        (422, "validation_error", "kind")


def test_hidden_flavors_stay_hidden_whatever_the_quota(portal: Flask,
                                                       token: Callable[..., str]) -> None:
    admin = auth(token("admin-1", "admin"))
    assert portal.test_client().patch("/api/v1/flavors/no-gpu", headers=admin,
                                      json={"enabled": False}).status_code == 200
    own_quota(portal, "res-1", max_jobs=0)
    assert "no-gpu" not in flavors(portal, auth(token("res-1", "researcher")))
    assert flavors(portal, admin)["no-gpu"]["refusal"] == "flavor_disabled"


def test_the_months_hours_are_summed_whatever_the_number_of_workloads(portal: Flask) -> None:
    """Time used this month: running workloads count up to now, ended ones to their end, and
    only from the month's start; workloads of other people, and queued, never started or
    last month's ones count nothing. Summed by the database for hundreds at once."""
    now = utcnow()
    since = month_start(now)
    flavors = {"no-gpu": (2, 0.0), "small-gpu": (4, 1.0), "shared-gpu": (2, 0.25)}
    expected_cpu = expected_gpu = 0.0
    rows = []
    for n in range(300):
        flavor = list(flavors)[n % 3]
        cpus, gpus = flavors[flavor]
        started = now - timedelta(hours=1 + n % 50, minutes=n)
        state = ("running", "succeeded", "failed", "cancelled", "queued")[n % 5]
        ended = None if state in ("running", "queued") else started + timedelta(minutes=n % 40)
        if state == "queued":
            started = None
        rows.append(Workload(id=f"j{n:016d}", owner_id="res-1", kind="job",
                             application="terminal", flavor=flavor, state=state, datasets=[],
                             started_at=started, ended_at=ended, time_limit_seconds=0,
                             created_at=started or now))
        if started is not None and (ended is None or ended >= since):
            hours = max(0.0, ((ended or now) - max(started, since)).total_seconds() / 3600)
            expected_cpu += hours * cpus
            expected_gpu += hours * gpus
    rows.append(Workload(id="jlastmonth0000001", owner_id="res-1", kind="job",
                         application="terminal", flavor="no-gpu", state="succeeded",
                         datasets=[], started_at=since - timedelta(days=3),
                         ended_at=since - timedelta(days=2), created_at=since))
    rows.append(Workload(id="jsomeoneelse00001", owner_id="someone", kind="job",
                         application="terminal", flavor="no-gpu", state="running",
                         datasets=[], started_at=now - timedelta(hours=9), created_at=now))
    with portal.extensions["vre.db"].session() as session:
        session.add_all(rows)
    with portal.extensions["vre.db"].reading() as session:
        usage = usages_of(session, ["res-1"], now)["res-1"]
    assert usage.cpu_hours == pytest.approx(expected_cpu, rel=1e-6)
    assert usage.gpu_hours == pytest.approx(expected_gpu, rel=1e-6)
    assert usage.jobs == 60 + 60 and usage.gpus == 20 + 20, "running and queued hold places"
