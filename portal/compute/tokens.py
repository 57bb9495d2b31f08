"""A workload's own token: its owner, itself, its datasets, and what code inside may do with
it (see itself and the catalogues, submit and follow jobs, ask for exports); short-lived, and
renewed by the workload gateway while the workload runs."""

from __future__ import annotations

from vre.tokens import WORKLOAD_SCOPES, TokenIssuer

WORKLOAD_TOKEN_SCOPE = " ".join(sorted(WORKLOAD_SCOPES))
WORKLOAD_ROLES = ["researcher"]


def workload_token(issuer: TokenIssuer, owner_id: str, workload_id: str,
                   datasets: list[str], ttl: int) -> str:
    """The token of one desktop or job, signed under the portal's name."""
    token, _ = issuer.issue(owner_id, WORKLOAD_ROLES, client="workload", ttl=ttl,
                            scope=WORKLOAD_TOKEN_SCOPE, wid=workload_id, datasets=datasets)
    return token
