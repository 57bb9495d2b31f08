"""Who may read which traces: auditors and services everything, anyone a published dataset's
history, a person their own traces. Decides only; the caller does the I/O."""

from __future__ import annotations

from vre.tokens import Principal

READ_ALL_ROLES = ("auditor", "admin", "service")


def may_read_all(principal: Principal | None) -> bool:
    return principal is not None and principal.has_any(*READ_ALL_ROLES)


def may_read_dataset_history(principal: Principal | None, dataset_is_public: bool) -> bool:
    """A dataset's whole history, as listed by dataset id."""
    return dataset_is_public or may_read_all(principal)


def sees_whole_trace(principal: Principal | None, actor: str) -> bool:
    """Auditors, services and the person who acted read a trace whole; anyone else who may
    read it reads its public extract (tracer.disclosure)."""
    return may_read_all(principal) or (principal is not None and principal.subject == actor)


def may_read_trace(principal: Principal | None, actor: str, public_datasets: bool) -> bool:
    """One trace: if it names a public dataset, is the caller's own, or the caller audits."""
    if may_read_all(principal) or public_datasets:
        return True
    return principal is not None and principal.subject == actor
