"""`PortalClient`: how desktops, jobs and tools talk to the portal's control plane (the
flavor and application catalogues today; desktops and jobs as they arrive)."""

from __future__ import annotations

from typing import Any

from vre.client import ServiceClient, ServiceError


class PortalError(ServiceError):
    """The portal refused or failed a request."""

    service = "portal"


class PortalUnavailable(PortalError):
    """The portal could not be reached or failed on its side."""


class PortalClient(ServiceClient):
    """The portal's JSON API, one method per call."""

    error = PortalError
    unavailable = PortalUnavailable

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/me")

    def flavors(self, projects: list[str] | None = None) -> list[dict[str, Any]]:
        """The flavors the caller may use (each says whether it fits this host, and why not)."""
        return self._call("GET", "/api/v1/flavors", params={"project": projects or []})

    def applications(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/applications",
                          params={"kind": kind} if kind else {})
