"""How web workers ask the compute agent: JSON over its Unix socket. Errors come back as
`ComputeError` with the agent's code, so a route answers them like any refusal."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from portal.compute import ComputeError, WorkloadSpec, spec_to_json
from vre.client import connect_unix


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("compute-agent", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = connect_unix(self.path, self.timeout)


class AgentClient:
    """The compute agent's API, for the portal."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def _call(self, method: str, url: str, body: Any = None) -> tuple[int, bytes, Any]:
        connection = _UnixConnection(self.path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body)
            connection.request(method, url, body=payload,
                               headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            return answer.status, answer.read(), answer.headers
        except OSError as exc:
            reason = f"the compute agent does not answer: {exc.strerror or exc}"
            raise ComputeError("agent_unavailable", reason) from None
        finally:
            connection.close()

    def _json(self, method: str, url: str, body: Any = None) -> dict[str, Any]:
        status, data, _ = self._call(method, url, body)
        answer = json.loads(data or b"{}")
        if status >= 400:
            raise ComputeError(answer.get("code", "agent_error"), answer.get("reason", ""))
        return answer

    def start(self, spec: WorkloadSpec, flavor: str, datasets: list[str],
              grant_id: str | None = None, expires_in: float | None = None,
              projects: list[str] | None = None) -> dict[str, Any]:
        return self._json("POST", "/workloads", {"spec": spec_to_json(spec), "flavor": flavor,
                                                  "datasets": datasets, "grant_id": grant_id,
                                                  "expires_in": expires_in,
                                                  "projects": projects or []})

    def show(self, workload_id: str) -> dict[str, Any]:
        return self._json("GET", f"/workloads/{workload_id}")

    def stop(self, workload_id: str, now: bool = False, reason: str | None = None,
             actor: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in (("reason", reason), ("actor", actor)) if v is not None}
        return self._json("POST", f"/workloads/{workload_id}/stop" + ("?now=1" if now else ""),
                          body)

    def extend(self, workload_id: str) -> dict[str, Any]:
        """Move a desktop's expiry a step later (refused with `lifetime_limit` at the cap)."""
        return self._json("POST", f"/workloads/{workload_id}/extend")

    def activity(self, workload_id: str, typed: bool) -> None:
        """The VNC proxy's report: a viewer is connected, and input arrived when `typed`."""
        status, data, _ = self._call("POST", f"/workloads/{workload_id}/activity",
                                     {"input": typed})
        if status >= 400:
            answer = json.loads(data or b"{}")
            raise ComputeError(answer.get("code", "agent_error"), answer.get("reason", ""))

    def logs(self, workload_id: str, offset: int = 0) -> tuple[bytes, int]:
        status, data, headers = self._call("GET", f"/workloads/{workload_id}/logs?offset={offset}")
        if status >= 400:
            answer = json.loads(data or b"{}")
            raise ComputeError(answer.get("code", "agent_error"), answer.get("reason", ""))
        return data, int(headers.get("X-Next-Offset", offset))

    def capacity(self) -> dict[str, Any]:
        return self._json("GET", "/capacity")

    def dispatch_soon(self) -> None:
        """Wake the agent's queue (a job was submitted); never waits long."""
        connection = AgentClient(self.path, timeout=1.0)
        connection._call("POST", "/jobs/dispatch", {})

    def queue(self, owner: str | None = None) -> dict[str, Any]:
        """Each waiting job's place: position, reason, detail, estimated start."""
        return self._json("GET", "/jobs/queue" + (f"?owner={quote(owner)}" if owner else ""))

    def outputs(self, workload_id: str) -> dict[str, Any]:
        """The manifest of a job's output folder."""
        return self._json("GET", f"/workloads/{workload_id}/outputs")

    def pin(self, request_id: str, owner: str, files: list[dict[str, str]],
            max_bytes: int) -> list[dict[str, Any]]:
        """Copy files of the owner's ~/persistent into an export request, pinned by SHA-256."""
        return self._json("POST", f"/exports/{request_id}/pin", {
            "owner": owner, "files": files, "max_bytes": max_bytes})["files"]
