"""Job pages: one's batch jobs with their places in the queue, one job with its command, data,
log (followed while it runs), outputs and its traces marked as the ledger verifies them, and
cancelling. The pages act as the signed-in person's own token says, through the same functions
as the jobs API, so a page can show or do nothing the API would refuse."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import login_required

from portal import clients, jobs
from portal.models import JOB_FINAL_STATES, JOB_OPEN_STATES
from portal.pages_desktops import dataset_names, moment_of, session_principal, span
from tracer.chain import ChainError
from tracer.client import TracerError
from vre.errors import ApiError, NotFound
from vre.outbox import outbox_of
from vre.tokens import Principal
from vre.web import db_of

bp = Blueprint("jobs", __name__)

# How many jobs of each kind (waiting or running, ended) the list shows.
LISTED = 50
# How much of a log the job's page shows at first; the follower reads on from there.
LOG_SHOWN = 256 * 1024
# Traces are recorded after the job's row; this margin covers the clocks of two services.
TRACE_MARGIN = timedelta(minutes=5)
# The traces of a job: its submission, start and end.
JOB_ACTIONS = ("JOB_SUBMITTED", "JOB_STARTED", "JOB_FINISHED", "JOB_CANCELLED")


def row_of(job: dict[str, Any]) -> dict[str, Any]:
    """A job as a row of the list shows it: the record, whether it may still be cancelled,
    and its run time as people read it."""
    run = job.get("wall_seconds")
    return {**job, "open": job["state"] in JOB_OPEN_STATES,
            "run_time": span(run) if run is not None else ""}


@bp.get("/jobs")
@login_required
def mine() -> Any:
    """The person's jobs: waiting (in queue order, with why they wait) and running first,
    then the latest ended ones."""
    principal = session_principal()
    places = jobs.queue_places(principal.subject)
    with db_of().reading() as session:
        active = jobs.listing(session, principal, "active", LISTED, places)
        ended = jobs.listing(session, principal, "ended", LISTED, {})
    rows = [row_of(j) for j in active + ended]
    return render_template("jobs.html", jobs=rows, listed=LISTED,
                           names=dataset_names() if rows else {},
                           places_known=bool(places))


def _log_head(principal: Principal, job_id: str) -> tuple[str, int, str | None]:
    """The start of the job's log (up to LOG_SHOWN bytes), where a follower goes on from, and
    why the log cannot be read when it cannot."""
    data, offset = b"", 0
    try:
        with db_of().reading() as session:
            while len(data) < LOG_SHOWN:
                more, after, _ = jobs.logs(principal, session, job_id, offset)
                if not more or after <= offset:
                    break
                data, offset = data + more, after
    except ApiError as exc:
        if isinstance(exc, NotFound):
            raise
        return data.decode(errors="replace"), offset, f"{exc.message} ({exc.code})"
    if len(data) > LOG_SHOWN:
        data, offset = data[:LOG_SHOWN], LOG_SHOWN
    return data.decode(errors="replace"), offset, None


def _outputs(principal: Principal, job_id: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        with db_of().reading() as session:
            return jobs.outputs(principal, session, job_id), None
    except ApiError as exc:
        if isinstance(exc, NotFound):
            raise
        return None, f"{exc.message} ({exc.code})"


def job_traces(job: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """The job's traces (newest first) with the ledger's verdict on each; None while the
    ledger or the chain cannot be read. The tracer is asked by the job's first dataset (every
    actor on it, an administrator who cancelled included) or, for a job without data, by its
    owner; the job's own are those naming it as their workload."""
    since = moment_of(job["submitted_at"])
    asked: dict[str, Any] = {"since": (since - TRACE_MARGIN).isoformat() if since else None}
    if job["datasets"]:
        asked["dataset"] = job["datasets"][0]["id"]
    else:
        asked["actor"] = job["owner_id"]
    try:
        traces = [t for t in clients.tracer().query(**asked)
                  if t["action"] in JOB_ACTIONS
                  and (t.get("details") or {}).get("workload_id") == job["id"]]
        checks = clients.trace_verifier().check(traces)
    except (TracerError, ChainError):
        return None
    return list(reversed(traces)), checks


@bp.get("/jobs/<job_id>")
@login_required
def detail(job_id: str) -> Any:
    """One job: what it runs and on which data, where it stands, its log (followed by a small
    script while it may still grow), its outputs and its traces."""
    principal = session_principal()
    with db_of().reading() as session:
        row = jobs.visible(session, principal, job_id)
        places = jobs.queue_places(row.owner_id) if row.state == "queued" else {}
        job = row_of(jobs.job_out(row, places.get(row.id)))
    log, offset, log_error = _log_head(principal, job_id)
    outputs, outputs_error = _outputs(principal, job_id)
    traced = job_traces(job)
    page = make_response(render_template(
        "job.html", job=job, final=job["state"] in JOB_FINAL_STATES, log=log,
        log_offset=offset, log_error=log_error, log_cut=offset >= LOG_SHOWN,
        outputs=outputs, outputs_error=outputs_error,
        traces=traced[0] if traced else [], checks=traced[1] if traced else {},
        ledger_unavailable=traced is None))
    page.headers["Cache-Control"] = "no-store"
    return page


@bp.get("/jobs/<job_id>/log")
@login_required
def log(job_id: str) -> Response:
    """The job's log from a byte offset on, for the page's follower: the session's answer to
    the API's logs route (which takes tokens only), with the same headers."""
    principal = session_principal()
    offset = request.args.get("offset", "0")
    if not offset.isdigit() or len(offset) > 15:
        raise ApiError("offset is a byte count", code="bad_offset", status=400,
                       field="offset")
    with db_of().reading() as session:
        data, after, state = jobs.logs(principal, session, job_id, int(offset))
    return Response(data, mimetype="text/plain", headers={
        "X-Next-Offset": str(after), "X-Job-State": state,
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


@bp.post("/jobs/<job_id>/cancel")
@login_required
def cancel(job_id: str) -> Any:
    """Cancel a job; a refusal (it ended meanwhile, the agent does not answer) is shown as a
    message on the page the person came from."""
    principal = session_principal()
    try:
        with db_of().session() as session:
            jobs.cancel(session, principal, job_id, clients.datasets_as_portal(), outbox_of())
    except NotFound:
        raise
    except ApiError as exc:
        flash(f"{exc.message} ({exc.code})", "error")
    else:
        flash(f"Job {job_id} was cancelled.", "info")
    if request.args.get("back") == "list":
        return redirect(url_for("jobs.mine"))
    return redirect(url_for("jobs.detail", job_id=job_id))
