"""The decision whether a desktop or job may start: flavor policy, quotas and host capacity,
as a table of facts against the code (or None) each must give."""

from __future__ import annotations

import pytest

from portal.quotas import (
    ALLOWED,
    CODES,
    Account,
    FlavorSpec,
    HostCapacity,
    Limits,
    Requester,
    Usage,
    decide,
    flavor_decision,
    may_use,
)
from vre.errors import ApiError

NO_GPU = FlavorSpec("no-gpu", cpus=2, memory_mib=4096, max_runtime_minutes=120)
GPU = FlavorSpec("small-gpu", cpus=4, memory_mib=16384, gpus=1, max_runtime_minutes=480)
OFF = FlavorSpec("old", cpus=1, memory_mib=1024, enabled=False)
STEWARDS = FlavorSpec("curate", cpus=2, memory_mib=4096, allowed_roles=frozenset({"steward"}))
LUNG = FlavorSpec("lung-big", cpus=8, memory_mib=32768, allowed_projects=frozenset({"lung"}))
LUNG_STEWARDS = FlavorSpec("lung-curate", cpus=2, memory_mib=4096,
                           allowed_roles=frozenset({"steward"}),
                           allowed_projects=frozenset({"lung"}))
HUGE = FlavorSpec("huge", cpus=128, memory_mib=4096)
FAT = FlavorSpec("fat", cpus=2, memory_mib=2_000_000)
HOST = HostCapacity(cpus=16, memory_mib=65536, gpus=2)
NO_GPU_HOST = HostCapacity(cpus=16, memory_mib=65536, gpus=0)

RESEARCHER = Requester.of(["researcher"])
IN_LUNG = Requester.of(["researcher"], ["lung"])
STEWARD_IN_LUNG = Requester.of(["steward", "researcher"], ["lung"])
STEWARD_ELSEWHERE = Requester.of(["steward"], ["brain"])


IDLE = Usage()


def user(usage: Usage = IDLE, **limits: float) -> Account:
    return Account("user", "res-1", Limits(**limits), usage)


def project(usage: Usage = IDLE, **limits: float) -> Account:
    return Account("project", "lung", Limits(**limits), usage)


CASES = [
    # (what, kind, flavor, requester, accounts, host, code)
    ("no quota, no host limit", "desktop", NO_GPU, RESEARCHER, [], None, None),
    ("fits everything", "job", GPU, RESEARCHER,
     [user(max_jobs=2, max_gpus=1, cpu_hours_per_month=100, gpu_hours_per_month=10)], HOST,
     None),
    ("unknown flavor", "job", None, RESEARCHER, [], HOST, "flavor_unknown"),
    ("disabled flavor", "desktop", OFF, RESEARCHER, [], HOST, "flavor_disabled"),
    ("role missing", "desktop", STEWARDS, RESEARCHER, [], HOST, "flavor_not_allowed"),
    ("role present", "desktop", STEWARDS, STEWARD_IN_LUNG, [], HOST, None),
    ("project missing", "job", LUNG, RESEARCHER, [], HOST, "flavor_not_allowed"),
    ("project present", "job", LUNG, IN_LUNG, [], HOST, None),
    ("role and project both needed: role only", "job", LUNG_STEWARDS, STEWARD_ELSEWHERE, [],
     HOST, "flavor_not_allowed"),
    ("role and project both needed: project only", "job", LUNG_STEWARDS, IN_LUNG, [], HOST,
     "flavor_not_allowed"),
    ("role and project both present", "job", LUNG_STEWARDS, STEWARD_IN_LUNG, [], HOST, None),
    ("more CPUs than the host", "job", HUGE, RESEARCHER, [], HOST, "exceeds_host"),
    ("more memory than the host", "job", FAT, RESEARCHER, [], HOST, "exceeds_host"),
    ("a GPU on a host without", "job", GPU, RESEARCHER, [], NO_GPU_HOST, "exceeds_host"),
    ("disabled wins over the host", "job", FlavorSpec("x", 999, 1, enabled=False), RESEARCHER,
     [], HOST, "flavor_disabled"),
    ("quota wins over the host", "job", HUGE, RESEARCHER, [user(max_jobs=0)], HOST,
     "quota_jobs"),
    ("a GPU quota wins over a host without GPUs", "job", GPU, RESEARCHER,
     [user(Usage(gpus=2), max_gpus=2)], NO_GPU_HOST, "quota_gpus"),
    ("a GPU flavor within quota on a host without GPUs", "job", GPU, RESEARCHER,
     [user(max_jobs=50, max_gpus=2, gpu_hours_per_month=200)], NO_GPU_HOST, "exceeds_host"),
    ("not allowed wins over quotas", "job", LUNG, RESEARCHER, [user(max_jobs=0)], HOST,
     "flavor_not_allowed"),
    ("desktops at the limit", "desktop", NO_GPU, RESEARCHER,
     [user(Usage(desktops=2), max_desktops=2)], HOST, "quota_desktops"),
    ("desktops under the limit", "desktop", NO_GPU, RESEARCHER,
     [user(Usage(desktops=1), max_desktops=2)], HOST, None),
    ("a desktop ignores the job limit", "desktop", NO_GPU, RESEARCHER,
     [user(Usage(jobs=5), max_jobs=5)], HOST, None),
    ("jobs at the limit", "job", NO_GPU, RESEARCHER, [user(Usage(jobs=5), max_jobs=5)], HOST,
     "quota_jobs"),
    ("zero jobs allowed", "job", NO_GPU, RESEARCHER, [user(max_jobs=0)], HOST, "quota_jobs"),
    ("a job ignores the desktop limit", "job", NO_GPU, RESEARCHER,
     [user(Usage(desktops=3), max_desktops=1)], HOST, None),
    ("GPUs would go beyond", "job", GPU, RESEARCHER, [user(Usage(gpus=1), max_gpus=1)], HOST,
     "quota_gpus"),
    ("no GPU asked, GPU limit irrelevant", "job", NO_GPU, RESEARCHER,
     [user(Usage(gpus=4), max_gpus=0)], HOST, None),
    ("CPU budget: 2 CPUs x 2 h = 4 more than the 3 left", "job", NO_GPU, RESEARCHER,
     [user(Usage(cpu_hours=97), cpu_hours_per_month=100)], HOST, "quota_budget"),
    ("CPU budget: exactly enough left", "job", NO_GPU, RESEARCHER,
     [user(Usage(cpu_hours=96), cpu_hours_per_month=100)], HOST, None),
    ("GPU budget: 1 GPU x 8 h beyond 5", "job", GPU, RESEARCHER,
     [user(gpu_hours_per_month=5)], HOST, "quota_budget"),
    ("GPU budget ignored for CPU flavors", "job", NO_GPU, RESEARCHER,
     [user(gpu_hours_per_month=0)], HOST, None),
    ("the project's quota counts too", "job", NO_GPU, IN_LUNG,
     [user(max_jobs=10), project(Usage(jobs=20), max_jobs=20)], HOST, "quota_jobs"),
    ("the user's quota is asked first", "desktop", NO_GPU, IN_LUNG,
     [user(Usage(desktops=1), max_desktops=1), project(Usage(desktops=9), max_desktops=9)],
     HOST, "quota_desktops"),
    ("count before GPUs before budget", "job", GPU, RESEARCHER,
     [user(Usage(jobs=1, gpus=1), max_jobs=1, max_gpus=1, gpu_hours_per_month=0)], HOST,
     "quota_jobs"),
]


@pytest.mark.parametrize(("what", "kind", "flavor", "who", "accounts", "host", "code"), CASES,
                         ids=[c[0] for c in CASES])
def test_decision_table(what: str, kind, flavor, who, accounts, host, code) -> None:
    decision = decide(kind, flavor, who, accounts, host, flavor_name="asked")
    assert decision.code == code, decision.reason
    assert decision.allowed is (code is None)
    if code is not None:
        assert decision.reason and decision.reason != "allowed"


def test_every_code_is_reachable_from_the_table() -> None:
    assert {c[-1] for c in CASES} - {None} == set(CODES)


def test_quota_refusals_name_the_account_and_read_well() -> None:
    refused = decide("job", NO_GPU, IN_LUNG, [user(), project(Usage(jobs=3), max_jobs=3)])
    assert refused.scope == "project"
    assert "project 'lung'" in refused.reason and "3 queued or running jobs" in refused.reason
    budget = decide("job", NO_GPU, RESEARCHER, [user(Usage(cpu_hours=97),
                                                    cpu_hours_per_month=100)])
    assert "3 of 100 left" in budget.reason and "may use 4" in budget.reason
    unknown = decide("job", None, RESEARCHER, flavor_name="tiny")
    assert "'tiny'" in unknown.reason


@pytest.mark.parametrize(("code", "status", "field"), [
    ("flavor_unknown", 422, "flavor"), ("flavor_disabled", 409, "flavor"),
    ("flavor_not_allowed", 403, "flavor"), ("exceeds_host", 422, None),
    ("quota_jobs", 409, None), ("quota_budget", 409, None)])
def test_a_refusal_becomes_the_error_model(code: str, status: int, field: str | None) -> None:
    facts = {
        "flavor_unknown": (None, []), "flavor_disabled": (OFF, []),
        "flavor_not_allowed": (STEWARDS, []), "exceeds_host": (HUGE, []),
        "quota_jobs": (NO_GPU, [user(max_jobs=0)]),
        "quota_budget": (NO_GPU, [user(cpu_hours_per_month=1)]),
    }
    flavor, accounts = facts[code]
    decision = decide("job", flavor, RESEARCHER, accounts, HOST)
    with pytest.raises(ApiError) as caught:
        decision.raise_if_refused()
    err = caught.value
    assert (err.code, err.status, err.field) == (code, status, field)
    assert err.body()["error"]["code"] == code


def test_allowed_raises_nothing_and_is_no_error() -> None:
    decision = decide("desktop", NO_GPU, RESEARCHER, [user(max_desktops=1)], HOST)
    assert decision == ALLOWED
    decision.raise_if_refused()
    with pytest.raises(AssertionError):
        decision.error()


def test_flavor_policy_alone_ignores_usage() -> None:
    assert flavor_decision(NO_GPU, RESEARCHER).allowed
    assert may_use(LUNG, IN_LUNG) and not may_use(LUNG, RESEARCHER)
    assert may_use(NO_GPU, Requester.of([]))
