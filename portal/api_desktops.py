"""The desktops API: start a desktop with chosen datasets, follow it, open its screen through
the VNC proxy with a single-use ticket, and stop it. Owners see their own desktops; an
administrator sees and stops any."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, current_app
from pydantic import BaseModel, ConfigDict, Field

from portal import desktops
from portal.clients import datasets_as_portal, member_projects
from portal.compute import ComputeError
from portal.vncproxy import TICKET_PROTOCOL, TICKET_SECONDS, issue_ticket, proxy_url
from vre.api import current_principal, endpoint
from vre.db import utcnow
from vre.errors import ApiError, Conflict
from vre.tokens import WORKLOAD_SCOPE, Principal
from vre.web import config_of, db_of

bp = Blueprint("portal_desktops_api", __name__, url_prefix="/api/v1")

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class DesktopIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    application: str = Field("desktop", pattern=_ID)
    flavor: str = Field(pattern=_ID)
    datasets: list[str] = Field(min_length=1, max_length=50)
    project: list[str] = Field(default_factory=list, max_length=20)


class ProgressOut(BaseModel):
    percent: int
    message: str


class DesktopOut(BaseModel):
    """A desktop and where it stands in its lifecycle."""

    id: str
    owner_id: str
    kind: str
    application: str
    flavor: str
    state: Literal["starting", "running", "stopping", "stopped", "failed"]
    reason: str = Field(description="how the sandbox ended, as the backend saw it")
    stop_reason: str | None = Field(description=(
        "why it stopped: stopped_by_owner, stopped_by_admin, idle, max_lifetime, "
        "owner_revoked, dataset_invalidated, grant_ended, ended (its session ended), "
        "stopped, or 'failed: <why>'; null while it runs"))
    datasets: list[str]
    grant_id: str | None
    exit_status: int | None
    cpu_seconds: float
    memory_peak_bytes: int
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    expires_at: datetime | None = Field(description=(
        "when it is stopped unless extended (POST .../extend); never later than its start "
        "plus the maximum lifetime"))
    idle_warning_at: datetime | None = Field(description=(
        "since when it is warned of being stopped for lack of use; null when it is not"))
    culls_at: datetime | None = Field(description=(
        "when it is stopped for lack of use unless a viewer connects; null when not warned"))
    last_activity_at: datetime | None = Field(description=(
        "when a viewer was last seen connected or last sent input; null if never"))
    progress: list[ProgressOut] | None = Field(None, description="start-up steps so far")


class DesktopsOut(BaseModel):
    desktops: list[DesktopOut]


class TicketOut(BaseModel):
    url: str = Field(description="WebSocket URL of the VNC proxy")
    protocol: str = Field(description="The single-use ticket as a WebSocket subprotocol to "
                          "offer beside `binary`; never put it in a URL")
    expires_in: int


def _principal() -> Principal:
    principal = current_principal()
    assert principal is not None
    return principal


@bp.post("/desktops")
@endpoint("Start a desktop with the granted datasets mounted read-only", body=DesktopIn,
          response=DesktopOut, status=201, tags=["desktops"])
def start_desktop(body: DesktopIn) -> dict[str, Any]:
    ask = desktops.DesktopRequest(application=body.application, flavor=body.flavor,
                                  datasets=tuple(dict.fromkeys(body.datasets)),
                                  projects=tuple(member_projects(_principal(), body.project)))
    with db_of().session() as session:
        return desktops.start(session, _principal(), ask, datasets_as_portal(), utcnow())


@bp.get("/desktops")
@endpoint("Your desktops (an administrator's: everyone's)", response=DesktopsOut,
          tags=["desktops"])
def list_desktops() -> dict[str, Any]:
    with db_of().session() as session:
        return {"desktops": desktops.listing(session, _principal())}


@bp.get("/desktops/<desktop_id>")
@endpoint("One desktop, with its start-up progress", response=DesktopOut, tags=["desktops"],
          scopes=[WORKLOAD_SCOPE])
def show_desktop(desktop_id: str) -> dict[str, Any]:
    with db_of().session() as session:
        desktops.visible(session, _principal(), desktop_id)
    try:
        shown = desktops.agent().show(desktop_id)
    except ComputeError as exc:
        raise ApiError(exc.reason, code=exc.code, status=503) from None
    shown.pop("vnc_socket", None)
    return shown


@bp.delete("/desktops/<desktop_id>")
@endpoint("Stop a desktop; its grant ends with it", response=DesktopOut, tags=["desktops"])
def stop_desktop(desktop_id: str) -> dict[str, Any]:
    with db_of().session() as session:
        return desktops.stop(session, _principal(), desktop_id, datasets_as_portal())


@bp.post("/desktops/<desktop_id>/extend")
@endpoint("Move your desktop's expiry one step later, up to its maximum lifetime (refused "
          "with lifetime_limit once there)", response=DesktopOut, tags=["desktops"])
def extend_desktop(desktop_id: str) -> dict[str, Any]:
    with db_of().session() as session:
        return desktops.extend(session, _principal(), desktop_id)


@bp.post("/desktops/<desktop_id>/restart")
@endpoint("Stop your desktop and start a fresh one in its place: same application, flavor "
          "and datasets, a new grant and a new id", response=DesktopOut, status=201,
          tags=["desktops"])
def restart_desktop(desktop_id: str) -> dict[str, Any]:
    with db_of().session() as session:
        return desktops.restart(session, _principal(), desktop_id, datasets_as_portal(),
                                utcnow())


class ForgottenOut(BaseModel):
    id: str
    forgotten: bool


@bp.post("/desktops/<desktop_id>/forget")
@endpoint("Take your ended desktop off your list (refused with desktop_running while it runs)",
          response=ForgottenOut, tags=["desktops"])
def forget_desktop(desktop_id: str) -> ForgottenOut:
    with db_of().session() as session:
        desktops.forget(session, _principal(), desktop_id)
    return ForgottenOut(id=desktop_id, forgotten=True)


@bp.post("/desktops/<desktop_id>/ticket")
@endpoint("A single-use ticket that opens the desktop's screen through the VNC proxy",
          response=TicketOut, tags=["desktops"])
def desktop_ticket(desktop_id: str) -> TicketOut:
    return ticket_for(_principal(), desktop_id)


def ticket_for(principal: Principal, desktop_id: str) -> TicketOut:
    """A ticket for the desktop's owner, once it is known to be theirs and running."""
    with db_of().session() as session:
        row = desktops.visible(session, principal, desktop_id)
        if row.owner_id != principal.subject:
            raise Conflict("only the desktop's owner may open it", code="not_the_owner")
        if row.state != "running":
            raise Conflict(f"the desktop is {row.state}", code="desktop_not_running")
    ticket = issue_ticket(current_app.extensions["vre.issuer"], principal.subject, desktop_id)
    return TicketOut(url=proxy_url(config_of()), protocol=TICKET_PROTOCOL + ticket,
                     expires_in=TICKET_SECONDS)
