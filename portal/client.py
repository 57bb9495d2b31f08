"""`PortalClient`: how desktops, jobs and tools talk to the portal's control plane: the
flavor and application catalogues, batch jobs, the caller's quota and the export airlock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from vre.client import ServiceClient, ServiceError


class PortalError(ServiceError):
    """The portal refused or failed a request."""

    service = "portal"


class PortalUnavailable(PortalError):
    """The portal could not be reached or failed on its side."""


def _job_path(job_id: str, *rest: str) -> str:
    # A job id goes into the path as one segment, whatever it holds.
    return "/".join(("/api/v1/jobs", quote(job_id, safe=""), *rest))


def _export_path(export_id: str, *rest: str) -> str:
    return "/".join(("/api/v1/exports", quote(export_id, safe=""),
                     *(quote(part, safe="") for part in rest)))


class PortalClient(ServiceClient):
    """The portal's JSON API, one method per call."""

    error = PortalError
    unavailable = PortalUnavailable

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/me")

    def flavors(self, projects: list[str] | None = None,
                kind: str | None = None) -> list[dict[str, Any]]:
        """The flavors the caller may use (each says whether it fits this host, and why not);
        `kind`: those for jobs or for desktops (the portal's default: jobs)."""
        return self._call("GET", "/api/v1/flavors",
                          params={"project": projects or [], "kind": kind})

    def applications(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/applications",
                          params={"kind": kind} if kind else {})

    def submit_job(self, command: list[str], *, flavor: str | None = None,
                   application: str | None = None, image: str | None = None,
                   name: str | None = None, environment: dict[str, str] | None = None,
                   time_limit_minutes: int | None = None, after: list[str] | None = None,
                   idempotency_key: str | None = None, datasets: list[str] | None = None,
                   projects: list[str] | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Submit a job: its record, or with `dry_run` `{"dry_run": true, "job": ...}`, the
        job as it would be queued, nothing submitted. What is not given is left out, for the
        portal's defaults to apply."""
        body: dict[str, Any] = {"command": command}
        given = {"flavor": flavor, "application": application, "image": image, "name": name,
                 "environment": environment, "time_limit_minutes": time_limit_minutes,
                 "after": after, "idempotency_key": idempotency_key, "datasets": datasets,
                 "project": projects, "dry_run": dry_run or None}
        body.update({key: value for key, value in given.items() if value is not None})
        return self._call("POST", "/api/v1/jobs", json=body)

    def jobs(self, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The caller's jobs; `state`: "active" (waiting or running) or "ended"."""
        return self._call("GET", "/api/v1/jobs", params={"state": state, "limit": limit})["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", _job_path(job_id))

    def job_logs(self, job_id: str, offset: int = 0) -> tuple[bytes, int, str]:
        """The job's log from byte `offset`, as written: the bytes, the offset to read from
        next and the job's state when they were read."""
        answer = self._call("GET", _job_path(job_id, "logs"), raw=True,
                            params={"offset": offset})
        next_offset = answer.headers.get("X-Next-Offset")
        return (answer.content,
                int(next_offset) if next_offset is not None else offset + len(answer.content),
                answer.headers.get("X-Job-State", ""))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", _job_path(job_id, "cancel"))

    def job_outputs(self, job_id: str) -> dict[str, Any]:
        """The job's outputs folder, its files with their sizes and hashes, and the hash of
        their manifest."""
        return self._call("GET", _job_path(job_id, "outputs"))

    def quota(self, projects: list[str] | None = None) -> dict[str, Any]:
        """The caller's limits and what is in use against them, and those of the projects
        (from a desktop, by default the projects it was started for)."""
        return self._call("GET", "/api/v1/quota", params={"project": projects or []})

    def create_export(self, title: str, purpose: str, files: list[str], *,
                      submit: bool = True) -> dict[str, Any]:
        """Ask for files of the caller's ~/persistent (paths relative to it) to leave the
        platform: the export request, checked; left a draft unless `submit`."""
        return self._call("POST", "/api/v1/exports", json={
            "title": title, "purpose": purpose, "files": files, "submit": submit})

    def exports(self) -> list[dict[str, Any]]:
        """The caller's export requests."""
        return self._call("GET", "/api/v1/exports")["exports"]

    def export(self, export_id: str) -> dict[str, Any]:
        """One export request with its files, their checks, decisions and the reviewers' votes
        the caller may see."""
        return self._call("GET", _export_path(export_id))

    def submit_export(self, export_id: str) -> dict[str, Any]:
        return self._call("POST", _export_path(export_id, "submit"))

    def withdraw_export(self, export_id: str) -> dict[str, Any]:
        return self._call("POST", _export_path(export_id, "withdraw"))

    def export_link(self, export_id: str, file_id: str) -> dict[str, Any]:
        """A short-lived link to one approved file: `{"url", "expires_in", "sha256"}`, the
        hash the file must have, pinned when it was reviewed."""
        return self._call("POST", _export_path(export_id, "files", file_id, "link"))

    def download(self, url: str) -> Iterator[bytes]:
        """The bytes behind a link the portal gave (`export_link`'s url, a path on the
        portal), in chunks as they arrive. A link to anywhere else is refused, so that the
        caller's token goes nowhere but the portal."""
        if not url.startswith("/") or url.startswith("//"):
            raise self.error(0, "bad_link", "the portal gave a link that is not on the portal")
        return self._stream("GET", url)
