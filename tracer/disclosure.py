"""What a trace shows to a reader of a published dataset's public history who may not read
the whole log: what was done and when, not who did it or why. The actor becomes a pseudonym,
stable for one person within one dataset's history and unlinkable across datasets; datasets
that are not public and personal details (a stated purpose, a workload, a command, who was
granted access) are left out. Decides only; the caller does the I/O."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Set
from typing import Any

# Details that say what was done to the data, never who or why.
PUBLIC_DETAILS = frozenset(
    {
        "update",
        "version",
        "license",
        "tool",
        "image",
        "image_digest",
        "flavor",
        "exit_status",
        "output_hash",
    }
)
# An invalidation's reason is part of the dataset's public record (its landing page shows it).
PUBLIC_REASON_UPDATES = frozenset({"INVALIDATE"})


def pseudonym(key: bytes, dataset_id: str, actor: str) -> str:
    """The actor as the public history of `dataset_id` names them: the same every time,
    different in another dataset's history, and not reversible without `key`."""
    mac = hmac.new(key, f"{dataset_id}\x00{actor}".encode(), hashlib.sha256).hexdigest()
    return "person-" + mac[:12]


def public_view(
    record: dict[str, Any], public_datasets: Set[str], context: str, key: bytes
) -> dict[str, Any]:
    """The public extract of a trace record, read in the history of dataset `context`."""
    details = record.get("details") or {}
    shown = {k: v for k, v in details.items() if k in PUBLIC_DETAILS}
    if "reason" in details and details.get("update") in PUBLIC_REASON_UPDATES:
        shown["reason"] = details["reason"]
    return {
        **record,
        "actor": pseudonym(key, context, record["actor"]),
        "datasets": [d for d in record.get("datasets") or [] if d["id"] in public_datasets],
        "details": shown,
    }


def history_context(record: dict[str, Any], public_datasets: Set[str]) -> str:
    """Whose history a trace read on its own belongs to: the first public dataset it names."""
    return min(d["id"] for d in record.get("datasets") or [] if d["id"] in public_datasets)
