"""`DatasetClient`: how the portal, desktops and tools talk to the dataset service. Calls are
made with the caller's token (a user's, or a service's for grants); refusals come back as
`DatasetError` with the service's stable code."""

from __future__ import annotations

from typing import Any

from vre.client import Answer, ServiceClient, ServiceError


class DatasetError(ServiceError):
    """The dataset service refused or failed a request."""

    service = "dataset"


class DatasetUnavailable(DatasetError):
    """The dataset service could not be reached or failed on its side."""


def _params(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in (None, "")}


class DatasetClient(ServiceClient):
    """The dataset service's API, one method per call."""

    error = DatasetError
    unavailable = DatasetUnavailable

    # -- public catalogue and records --------------------------------------------------------
    def catalogue_unless(self, etag: str | None, **query: Any) -> Answer:
        """Search published datasets (q, modality, body_part, license, project, sort, page,
        per_page): the raw answer, or 304 and no body while `etag` (an earlier answer's
        ETag) still names it."""
        return self._call("GET", "/api/v1/catalogue", params=_params(query), raw=True,
                          unless=etag)

    def catalogue_generation(self) -> str:
        """A tag of the catalogue's generation: it changes with every change a public reader
        could see, so a public page drawn at one tag is current while the tag holds."""
        current = self._call("GET", "/api/v1/catalogue/generation")
        return f"{current['generation']}@{current.get('since')}"

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/datasets/{dataset_id}")

    def landing_unless(self, dataset_id: str, etag: str | None) -> Answer:
        """What a landing page shows ({"dataset": the record, "schemaorg": its JSON-LD}) as
        the raw answer, or 304 and no body while `etag` still names it (only public records
        have one)."""
        return self._call("GET", f"/api/v1/datasets/{dataset_id}/landing", raw=True,
                          unless=etag)

    def metadata(self, dataset_id: str, fmt: str) -> str:
        """The record rendered as datacite, schemaorg, dcat-turtle or dcat-jsonld (text)."""
        return self._call("GET", f"/api/v1/datasets/{dataset_id}/metadata",
                          params={"format": fmt}, raw=True).text

    def datasets(self) -> list[dict[str, Any]]:
        """Datasets the caller may see, newest first."""
        return self._call("GET", "/api/v1/datasets")

    # -- lifecycle ---------------------------------------------------------------------------
    def create_dataset(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/v1/datasets", json=body)

    def update_dataset(self, dataset_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", f"/api/v1/datasets/{dataset_id}", json=changes)

    def release(self, dataset_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/datasets/{dataset_id}/release", json={})

    def publish(self, dataset_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/datasets/{dataset_id}/publish", json={})

    def invalidate(self, dataset_id: str, reason: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/datasets/{dataset_id}/invalidate",
                          json={"reason": reason})

    def new_version(self, dataset_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/datasets/{dataset_id}/versions", json=body)

    # -- looking inside (metadata only) ------------------------------------------------------
    def studies(self, dataset_id: str, page: int = 1, per_page: int = 25) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/datasets/{dataset_id}/studies",
                          params={"page": page, "per_page": per_page})

    def access_log(self, dataset_id: str, page: int = 1,
                   per_page: int = 50) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/v1/datasets/{dataset_id}/access-log",
                          params={"page": page, "per_page": per_page})

    def search_studies(self, project: str, **query: Any) -> dict[str, Any]:
        """Preview what a dataset query selects: counts, statistics, the first studies."""
        return self._call("GET", "/api/v1/studies",
                          params=_params({"project": project, **query}))

    # -- access lists and requests -----------------------------------------------------------
    def access_list(self, dataset_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/v1/datasets/{dataset_id}/access")

    def add_access(self, dataset_id: str, user_id: str) -> dict[str, Any]:
        return self._call("PUT", f"/api/v1/datasets/{dataset_id}/access",
                          json={"user_id": user_id})

    def remove_access(self, dataset_id: str, user_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/api/v1/datasets/{dataset_id}/access/{user_id}")

    def request_access(self, dataset_id: str, purpose: str) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/datasets/{dataset_id}/requests",
                          json={"purpose": purpose})

    def dataset_requests(self, dataset_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/v1/datasets/{dataset_id}/requests")

    def requests(self, scope: str = "mine", state: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/requests",
                          params=_params({"scope": scope, "state": state}))

    def decide_request(self, request_id: str, approve: bool, note: str = "") -> dict[str, Any]:
        verb = "approve" if approve else "reject"
        return self._call("POST", f"/api/v1/requests/{request_id}/{verb}", json={"note": note})

    # -- projects ----------------------------------------------------------------------------
    def projects(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/projects")

    def create_project(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/v1/projects", json=body)

    def members(self, project: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/v1/projects/{project}/members")

    def put_member(self, project: str, user_id: str, role: str) -> dict[str, Any]:
        return self._call("PUT", f"/api/v1/projects/{project}/members",
                          json={"user_id": user_id, "role": role})

    def remove_member(self, project: str, user_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/api/v1/projects/{project}/members/{user_id}")

    # -- grants (services, on behalf of a user) ----------------------------------------------
    def create_grant(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/v1/grants", json=body)

    def create_grants(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several grants in one transaction: each answer {"grant": ...} or {"error": ...}
        (its code, message, status and details), in order."""
        return self._call("POST", "/api/v1/grants/batch", json={"grants": bodies})["grants"]

    def end_grant(self, grant_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/api/v1/grants/{grant_id}")

    def open_grants(self) -> list[dict[str, Any]]:
        """Grants not ended yet, each naming its datasets invalidated since it was made."""
        return self._call("GET", "/api/v1/grants/open")["grants"]

    def revoke_user(self, user_id: str, reason: str = "") -> dict[str, Any]:
        return self._call("PUT", f"/api/v1/revoked-users/{user_id}", json={"reason": reason})

    def restore_user(self, user_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/api/v1/revoked-users/{user_id}")
