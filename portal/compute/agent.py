"""The compute agent: the one process that starts, watches and stops workloads and owns their
cgroups. Web workers ask it over a Unix socket that only the platform's account may open;
they never spawn a sandbox themselves.

Workload state lives in the portal's database. At start the agent re-adopts every workload
the database says is active and marks the ones that vanished meanwhile as failed, with the
reason; then it polls the running ones and records how each ended."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask, jsonify, request
from sqlalchemy.orm import object_session
from werkzeug.serving import make_server

from portal.compute import (
    ComputeBackend,
    ComputeError,
    Exited,
    WorkloadSpec,
    backend_for,
    spec_from_json,
    spec_to_json,
)
from portal.models import ACTIVE_STATES, Workload
from portal.revocations import revoke_workload
from vre.config import Config
from vre.db import Database, utcnow

log = logging.getLogger("vre.compute.agent")
POLL_SECONDS = 1.0
ExitHook = Callable[[Workload], None]


def socket_path(config: Config) -> Path:
    """Where the agent listens: a socket in a folder only the platform's account may enter."""
    return config.home / "run" / "compute-agent.sock"


def row_out(row: Workload) -> dict[str, Any]:
    """A workload as the agent answers it."""
    return {"id": row.id, "owner_id": row.owner_id, "kind": row.kind,
            "application": row.application, "flavor": row.flavor, "state": row.state,
            "reason": row.reason, "datasets": list(row.datasets), "grant_id": row.grant_id,
            "exit_status": row.exit_status, "cpu_seconds": row.cpu_seconds,
            "memory_peak_bytes": row.memory_peak_bytes,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "started_at": row.started_at.isoformat() if row.started_at else None,
            "ended_at": row.ended_at.isoformat() if row.ended_at else None}


class Agent:
    """Workloads on one backend, with their state kept in the portal's database."""

    def __init__(self, config: Config, db: Database, backend: ComputeBackend | None = None,
                 on_exit: ExitHook | None = None) -> None:
        self.config = config
        self.db = db
        self.backend = backend or backend_for(config)
        self.on_exit = on_exit
        self._lock = threading.Lock()

    def reattach(self) -> dict[str, list[str]]:
        """Adopt every workload the database calls active; fail the ones that vanished."""
        adopted, vanished = [], []
        with self.db.session() as session:
            for row in session.scalars(sa.select(Workload).where(
                    Workload.state.in_(ACTIVE_STATES))):
                if row.backend_state and self.backend.adopt(row.id, row.backend_state):
                    adopted.append(row.id)
                    continue
                self._ended(row, Exited(status=-1, reason=(
                    "vanished while the compute agent was down" if row.backend_state
                    else "the agent stopped before the workload started")))
                vanished.append(row.id)
        for workload_id in vanished:
            with contextlib.suppress(ComputeError):
                self.backend.stop(workload_id, now=True)  # whatever is left of it
            self._hook(workload_id)
        return {"adopted": adopted, "vanished": vanished}

    def start(self, spec: WorkloadSpec, flavor: str, datasets: list[str],
              grant_id: str | None = None) -> dict[str, Any]:
        """Record the workload, then start it; a refusal leaves it failed with the reason."""
        with self.db.session() as session:
            if session.get(Workload, spec.workload_id) is not None:
                raise ComputeError("workload_exists", f"workload {spec.workload_id} exists")
            kept = spec_to_json(spec)
            kept.pop("token")
            session.add(Workload(id=spec.workload_id, owner_id=spec.owner, kind=spec.kind,
                                 application=spec.application, flavor=flavor,
                                 state="starting", reason="", datasets=datasets,
                                 grant_id=grant_id, spec=kept, backend_state={},
                                 cpu_seconds=0.0, memory_peak_bytes=0))
        try:
            state = self.backend.start(spec)
        except ComputeError as exc:
            with self.db.session() as session:
                row = session.get(Workload, spec.workload_id)
                row.state, row.ended_at = "failed", utcnow()
                row.reason = f"{exc.code}: {exc.reason}"
            raise
        with self.db.session() as session:
            row = session.get(Workload, spec.workload_id)
            row.state, row.backend_state, row.started_at = "running", state, utcnow()
            return row_out(row)

    def stop(self, workload_id: str, now: bool = False) -> dict[str, Any]:
        """End a workload and record how it ended."""
        with self.db.session() as session:
            row = self._row(session, workload_id)
            if row.state not in ACTIVE_STATES:
                return row_out(row)
            row.state = "stopping"
        self.backend.stop(workload_id, now=now)
        self.tick()
        with self.db.session() as session:
            return row_out(self._row(session, workload_id))

    def show(self, workload_id: str) -> dict[str, Any]:
        """A workload with its start-up progress and whether its desktop can be opened."""
        with self.db.session() as session:
            out = row_out(self._row(session, workload_id))
        if out["state"] in ACTIVE_STATES:
            out["progress"] = [asdict(p) for p in self.backend.progress(workload_id)]
            vnc = self.backend.vnc_socket(workload_id)
            out["vnc_socket"] = str(vnc) if vnc else None
        return out

    def logs(self, workload_id: str, offset: int) -> tuple[bytes, int]:
        with self.db.session() as session:
            self._row(session, workload_id)
        return self.backend.logs(workload_id, offset)

    def tick(self) -> list[str]:
        """Poll every active workload once; record the ones that ended. Answers their ids."""
        ended = []
        with self._lock, self.db.session() as session:
            for row in session.scalars(sa.select(Workload).where(
                    Workload.state.in_(("running", "stopping")))):
                try:
                    exited = self.backend.poll(row.id)
                except ComputeError as exc:
                    exited = Exited(status=-1, reason=exc.reason)
                if exited is not None:
                    self._ended(row, exited)
                    ended.append(row.id)
        for workload_id in ended:
            self._hook(workload_id)
        return ended

    def run_forever(self, stop: threading.Event) -> None:
        """Poll until asked to stop; an error in one round is logged, never fatal."""
        while not stop.wait(POLL_SECONDS):
            try:
                self.tick()
            except Exception:  # the agent outlives one bad round
                log.exception("polling workloads failed")

    @staticmethod
    def _row(session: Any, workload_id: str) -> Workload:
        row = session.get(Workload, workload_id)
        if row is None:
            raise ComputeError("workload_unknown", f"no workload {workload_id}")
        return row

    def _ended(self, row: Workload, exited: Exited) -> None:
        stopped = row.state == "stopping" or exited.reason == "stopped"
        row.state = "stopped" if stopped or exited.status == 0 else "failed"
        row.reason = exited.reason or ("" if exited.status == 0 else f"exit status {exited.status}")
        row.exit_status = exited.status
        row.cpu_seconds = exited.cpu_seconds
        row.memory_peak_bytes = exited.memory_peak_bytes
        row.ended_at = utcnow()
        # Its tokens die with it: refused until the last one issued would have expired.
        revoke_workload(object_session(row), row.id,
                        row.ended_at + timedelta(seconds=self.config.token_ttl_seconds + 60))

    def _hook(self, workload_id: str) -> None:
        if self.on_exit is None:
            return
        with self.db.session() as session:
            row = session.get(Workload, workload_id)
            try:
                self.on_exit(row)
            except Exception:
                log.exception("after-exit work for %s failed", workload_id)


STATUS = {"workload_unknown": 404, "workload_exists": 409, "bad_spec": 422,
          "exceeds_host": 422, "mount_refused": 422, "bad_environment": 422}


def create_app(agent: Agent) -> Flask:
    """The agent's API: start, show, stop, logs, capacity. JSON in and out."""
    app = Flask("vre-compute-agent")

    @app.errorhandler(ComputeError)
    def refused(exc: ComputeError) -> Any:
        return jsonify(code=exc.code, reason=exc.reason), STATUS.get(exc.code, 503)

    @app.post("/workloads")
    def start() -> Any:
        body = request.get_json(force=True, silent=True) or {}
        spec = spec_from_json(body.get("spec") or {})
        return jsonify(agent.start(spec, str(body.get("flavor", "")),
                                   [str(d) for d in body.get("datasets", [])],
                                   body.get("grant_id"))), 201

    @app.get("/workloads/<workload_id>")
    def show(workload_id: str) -> Any:
        return jsonify(agent.show(workload_id))

    @app.post("/workloads/<workload_id>/stop")
    def stop(workload_id: str) -> Any:
        return jsonify(agent.stop(workload_id, now=request.args.get("now") == "1"))

    @app.get("/workloads/<workload_id>/logs")
    def logs(workload_id: str) -> Any:
        offset = request.args.get("offset", "0")
        if not offset.isdigit() or len(offset) > 15:
            raise ComputeError("bad_spec", "offset is a byte count")
        data, after = agent.logs(workload_id, int(offset))
        return app.response_class(data, mimetype="application/octet-stream",
                                  headers={"X-Next-Offset": str(after)})

    @app.get("/capacity")
    def capacity() -> Any:
        return jsonify(asdict(agent.backend.capacity()))

    return app


class Served:
    """A running agent API and its polling thread; `close` ends both."""

    def __init__(self, agent: Agent, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.parent.chmod(0o700)
        path.unlink(missing_ok=True)
        self.server = make_server(f"unix://{path}", 0, create_app(agent), threaded=True)
        os.chmod(path, 0o600)
        self.stopping = threading.Event()
        self.poller = threading.Thread(target=agent.run_forever, args=(self.stopping,),
                                       daemon=True)
        self.poller.start()

    def serve_forever(self) -> None:
        try:
            self.server.serve_forever()
        finally:
            self.stopping.set()

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.poller.join(timeout=5)


def serve(agent: Agent, path: Path) -> None:
    """Serve the agent's API on a Unix socket only the platform's account may open."""
    Served(agent, path).serve_forever()


def main(argv: list[str] | None = None) -> None:
    """`python -m portal.compute.agent`: the process `vre up` starts."""
    from vre.config import load_config
    from vre.services import service

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    config = load_config()
    portal = service("portal")
    db = Database.for_service(config, "portal", portal.migrations)
    agent = Agent(config, db)
    found = agent.reattach()
    log.info("compute agent: adopted %d, vanished %d", len(found["adopted"]),
             len(found["vanished"]))
    started = time.monotonic()
    serve(agent, socket_path(config))
    log.info("compute agent ran %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    main()
