"""Whether a desktop or job may start, decided from data alone: the flavor's policy, the
quotas of the user and the project, and the host's capacity. No database and no I/O: callers
gather the facts, this module answers with a stable code and a reason a person can act on.

Checks run in a fixed order and the first refusal wins, so the same facts always give the same
answer: the flavor (unknown, disabled), whether this user or project may use it, then each
account's quota (the user's first, then the project's): running desktops, queued and running
jobs, GPUs in use, the monthly budget; and last the host, which refuses a request it can never
satisfy now rather than leave it waiting.

A budget is charged for the most a workload may use: its flavor's CPUs (and GPUs) times the
flavor's maximum run time. A workload is refused when that would go beyond what is left this
month, so a budget is never overrun by workloads already started."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vre.errors import ApiError

Kind = Literal["desktop", "job"]

FLAVOR_UNKNOWN = "flavor_unknown"
FLAVOR_DISABLED = "flavor_disabled"
FLAVOR_NOT_ALLOWED = "flavor_not_allowed"
EXCEEDS_HOST = "exceeds_host"
QUOTA_DESKTOPS = "quota_desktops"
QUOTA_JOBS = "quota_jobs"
QUOTA_GPUS = "quota_gpus"
QUOTA_BUDGET = "quota_budget"

# The HTTP status each refusal is answered with: a bad or impossible request is 422, a
# request the policy forbids 403, one that would succeed once usage drops (or next month) 409.
STATUS = {
    FLAVOR_UNKNOWN: 422, FLAVOR_DISABLED: 409, FLAVOR_NOT_ALLOWED: 403, EXCEEDS_HOST: 422,
    QUOTA_DESKTOPS: 409, QUOTA_JOBS: 409, QUOTA_GPUS: 409, QUOTA_BUDGET: 409,
}
CODES = tuple(STATUS)
QUOTA_CODES = (QUOTA_DESKTOPS, QUOTA_JOBS, QUOTA_GPUS, QUOTA_BUDGET)


@dataclass(frozen=True)
class FlavorSpec:
    """What a flavor asks of the host and who may use it (empty sets mean everyone)."""

    name: str
    cpus: float
    memory_mib: int
    gpus: int = 0
    max_runtime_minutes: int = 60
    enabled: bool = True
    allowed_roles: frozenset[str] = frozenset()
    allowed_projects: frozenset[str] = frozenset()

    @property
    def max_hours(self) -> float:
        return self.max_runtime_minutes / 60


@dataclass(frozen=True)
class HostCapacity:
    """The most one workload can get on this platform (one machine, or its largest node)."""

    cpus: float
    memory_mib: int
    gpus: int


@dataclass(frozen=True)
class Requester:
    """Who asks: their roles, and the projects the workload works for."""

    roles: frozenset[str]
    projects: frozenset[str] = frozenset()

    @classmethod
    def of(cls, roles: Collection[str], projects: Collection[str] = ()) -> Requester:
        return cls(frozenset(roles), frozenset(projects))


@dataclass(frozen=True)
class Limits:
    """A quota; None means no limit on that measure. max_jobs counts queued and running jobs
    together, as Slurm's MaxSubmitJobs does."""

    max_desktops: int | None = None
    max_jobs: int | None = None
    max_gpus: int | None = None
    cpu_hours_per_month: float | None = None
    gpu_hours_per_month: float | None = None


@dataclass(frozen=True)
class Usage:
    """What an account uses now (running workloads) and has used this month (hours)."""

    desktops: int = 0
    jobs: int = 0
    gpus: int = 0
    cpu_hours: float = 0.0
    gpu_hours: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(desktops=self.desktops + other.desktops, jobs=self.jobs + other.jobs,
                     gpus=self.gpus + other.gpus, cpu_hours=self.cpu_hours + other.cpu_hours,
                     gpu_hours=self.gpu_hours + other.gpu_hours)

    def __sub__(self, other: Usage) -> Usage:
        return self + Usage(desktops=-other.desktops, jobs=-other.jobs, gpus=-other.gpus,
                            cpu_hours=-other.cpu_hours, gpu_hours=-other.gpu_hours)


@dataclass(frozen=True)
class Account:
    """One quota the request is counted against: the user's, or a project's."""

    scope: Literal["user", "project"]
    subject: str
    limits: Limits = field(default_factory=Limits)
    usage: Usage = field(default_factory=Usage)

    @property
    def owner(self) -> str:
        return "your" if self.scope == "user" else f"project {self.subject!r}'s"


@dataclass(frozen=True)
class Decision:
    """Allowed, or refused with a stable code, a reason, and which account refused it."""

    code: str | None = None
    reason: str = "allowed"
    scope: str | None = None

    @property
    def allowed(self) -> bool:
        return self.code is None

    def error(self) -> ApiError:
        """The refusal as the platform's error model (field "flavor" for flavor refusals)."""
        assert self.code is not None, "an allowed decision is not an error"
        field_name = "flavor" if self.code.startswith("flavor_") else None
        return ApiError(self.reason, code=self.code, status=STATUS[self.code],
                        field=field_name, details={"scope": self.scope} if self.scope else None)

    def raise_if_refused(self) -> None:
        """Raise the refusal as an ApiError; return quietly when allowed."""
        if not self.allowed:
            raise self.error()


ALLOWED = Decision()


def left_of(limits: Limits, usage: Usage) -> Limits:
    """What is left of each limit (never below 0); None where there is no limit."""
    def left(limit: float | None, used: float) -> float | None:
        return None if limit is None else max(limit - used, 0)

    return Limits(max_desktops=left(limits.max_desktops, usage.desktops),
                  max_jobs=left(limits.max_jobs, usage.jobs),
                  max_gpus=left(limits.max_gpus, usage.gpus),
                  cpu_hours_per_month=left(limits.cpu_hours_per_month, usage.cpu_hours),
                  gpu_hours_per_month=left(limits.gpu_hours_per_month, usage.gpu_hours))


def may_use(flavor: FlavorSpec, who: Requester) -> bool:
    """The flavor's policy: one of its roles (if it names any) and one of its projects (if any)."""
    roles_ok = not flavor.allowed_roles or bool(flavor.allowed_roles & who.roles)
    projects_ok = not flavor.allowed_projects or bool(flavor.allowed_projects & who.projects)
    return roles_ok and projects_ok


def _fmt(value: float) -> str:
    return f"{value:g}"


def host_decision(flavor: FlavorSpec, host: HostCapacity) -> Decision:
    """Refuse a flavor larger than anything the host can ever give one workload."""
    for asked, has, what in ((flavor.cpus, host.cpus, "CPUs"),
                             (flavor.memory_mib, host.memory_mib, "MiB of memory"),
                             (flavor.gpus, host.gpus, "GPUs")):
        if asked > has:
            return Decision(EXCEEDS_HOST, f"flavor {flavor.name!r} asks {_fmt(asked)} {what}; "
                            f"this platform can give a workload at most {_fmt(has)}")
    return ALLOWED


def flavor_decision(flavor: FlavorSpec | None, who: Requester, host: HostCapacity | None = None,
                    *, name: str = "") -> Decision:
    """Whether this requester may use the flavor at all, usage aside (and, given a host,
    whether the host could ever give it)."""
    if flavor is None:
        return Decision(FLAVOR_UNKNOWN, f"there is no flavor {name!r}")
    if not flavor.enabled:
        return Decision(FLAVOR_DISABLED, f"flavor {flavor.name!r} is disabled")
    if not may_use(flavor, who):
        return Decision(FLAVOR_NOT_ALLOWED, f"flavor {flavor.name!r} is reserved for "
                        + _audience(flavor))
    if host is not None:
        return host_decision(flavor, host)
    return ALLOWED


def _audience(flavor: FlavorSpec) -> str:
    parts = []
    if flavor.allowed_roles:
        parts.append("the roles " + ", ".join(sorted(flavor.allowed_roles)))
    if flavor.allowed_projects:
        parts.append("the projects " + ", ".join(sorted(flavor.allowed_projects)))
    return " in ".join(parts)


def quota_decision(kind: Kind, flavor: FlavorSpec, account: Account) -> Decision:
    """Whether one more workload of this flavor fits in the account's quota."""
    limits, usage, owner = account.limits, account.usage, account.owner
    if kind == "desktop" and limits.max_desktops is not None \
            and usage.desktops + 1 > limits.max_desktops:
        return Decision(QUOTA_DESKTOPS, f"{owner} quota allows {limits.max_desktops} running "
                        f"desktops and {usage.desktops} are running; stop one first",
                        account.scope)
    if kind == "job" and limits.max_jobs is not None and usage.jobs + 1 > limits.max_jobs:
        return Decision(QUOTA_JOBS, f"{owner} quota allows {limits.max_jobs} queued or running "
                        f"jobs and {usage.jobs} are queued or running; wait for one to finish",
                        account.scope)
    if flavor.gpus and limits.max_gpus is not None \
            and usage.gpus + flavor.gpus > limits.max_gpus:
        return Decision(QUOTA_GPUS, f"{owner} quota allows {limits.max_gpus} GPUs in use, "
                        f"{usage.gpus} are in use and flavor {flavor.name!r} needs "
                        f"{flavor.gpus}", account.scope)
    for budget, used, per_hour, what in (
            (limits.cpu_hours_per_month, usage.cpu_hours, flavor.cpus, "CPU"),
            (limits.gpu_hours_per_month, usage.gpu_hours, flavor.gpus, "GPU")):
        if budget is None or not per_hour:
            continue
        cost = per_hour * flavor.max_hours
        if used + cost > budget:
            left = max(budget - used, 0.0)
            return Decision(QUOTA_BUDGET, f"{owner} monthly {what}-hour budget has "
                            f"{_fmt(round(left, 2))} of {_fmt(budget)} left; flavor "
                            f"{flavor.name!r} may use {_fmt(round(cost, 2))} in its maximum "
                            "run time", account.scope)
    return ALLOWED


def decide(kind: Kind, flavor: FlavorSpec | None, who: Requester,
           accounts: Sequence[Account] = (), host: HostCapacity | None = None,
           *, flavor_name: str = "") -> Decision:
    """The whole decision for starting one desktop or job: flavor, allowed, every quota, then
    the host."""
    decision = flavor_decision(flavor, who, name=flavor_name)
    if not decision.allowed:
        return decision
    assert flavor is not None
    for account in accounts:
        decision = quota_decision(kind, flavor, account)
        if not decision.allowed:
            return decision
    if host is not None:
        return host_decision(flavor, host)
    return ALLOWED
