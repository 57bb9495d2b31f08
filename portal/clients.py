"""How the portal's pages reach the other services: the dataset service with the signed-in
user's token (so its policy decides), anonymously for public pages, and the tracer with the
portal's own service token; one HTTP connection pool per portal process."""

from __future__ import annotations

from collections.abc import Collection

from flask import Flask, current_app, request
from flask_login import current_user

from dataset_service.client import DatasetClient, DatasetError, DatasetUnavailable
from portal.catalogues import is_project_name
from portal.identity import access_token, identity_of
from portal.models import Workload
from tracer.chain_config import chain_client, contract_address
from tracer.client import TracerClient, TraceVerifier
from vre.client import connection_pool
from vre.errors import ApiError, Forbidden, NotFound, ServiceUnavailable
from vre.service_auth import StaticToken
from vre.tokens import Principal, bearer_token
from vre.web import config_of, db_of


def install(app: Flask) -> None:
    """One connection pool and one service token per portal app."""
    app.extensions["portal.http"] = connection_pool(max_per_host=32)
    app.extensions["portal.service_token"] = identity_of(app).service_tokens(app)


def datasets(as_user: bool = True) -> DatasetClient:
    """The dataset service as the signed-in user (anonymous when nobody is signed in)."""
    tokens = StaticToken(access_token()) if as_user and current_user.is_authenticated \
        else None
    return DatasetClient(config_of().url_of("dataset_service"), tokens,
                         pool=current_app.extensions["portal.http"])


def datasets_as_portal(app: Flask | None = None) -> DatasetClient:
    """The dataset service as the portal service (grants, memberships), for calls the portal
    makes on someone's behalf after its own checks."""
    app = app or current_app
    return DatasetClient(config_of(app).url_of("dataset_service"),
                         app.extensions["portal.service_token"], pool=app.extensions["portal.http"])


def tracer(app: Flask | None = None) -> TracerClient:
    """The tracer as the portal service: reads only after the dataset policy allowed them;
    writes from the portal's outbox (the app given outside a request)."""
    app = app or current_app
    return TracerClient(config_of(app).url_of("tracer"), app.extensions["portal.service_token"],
                        pool=app.extensions["portal.http"])


def public_tracer() -> TracerClient:
    """The tracer as an anonymous reader: what the public may read of a history, as the
    tracer's own disclosure rules extract it."""
    return TracerClient(config_of().url_of("tracer"), None,
                        pool=current_app.extensions["portal.http"])


def trace_verifier() -> TraceVerifier:
    """Checks traces against the chain, not against the tracer's word."""
    chain = current_app.extensions.get("portal.chain")
    if chain is None:  # one reader per process, once the anchor contract is known
        config = config_of()
        chain = chain_client(config, contract_address(config))
        if chain.address is not None:
            current_app.extensions["portal.chain"] = chain
    return TraceVerifier(tracer(), chain)


def project_roles(groups: list[str]) -> dict[str, str]:
    """Project memberships the provider's groups name: `/<project>` makes a researcher,
    `/<project>/stewards` a steward; other groups mean nothing to the platform."""
    roles: dict[str, str] = {}
    for path in groups:
        parts = [p for p in path.split("/") if p]
        if len(parts) == 1:
            roles.setdefault(parts[0], "researcher")
        elif len(parts) == 2 and parts[1] == "stewards":
            roles[parts[0]] = "steward"
    return roles


def sync_memberships(user_id: str, groups: list[str]) -> list[str]:
    """Add the user to the projects their groups name (the dataset service owns projects);
    returns the projects joined. Memberships given by stewards are left as they are."""
    wanted = project_roles(groups)
    if not wanted:
        return []
    client = datasets_as_portal()
    joined = []
    for project, role in sorted(wanted.items()):
        try:
            client.put_member(project, user_id, role)
        except DatasetError as exc:
            if exc.status != 404:  # a group without a project is not an error
                raise
        else:
            joined.append(project)
    return joined


def member_projects(principal: Principal, projects: Collection[str]) -> frozenset[str]:
    """The projects a request names, each confirmed with the dataset service (which owns
    projects) as one the caller is a member of: a project opens the flavors reserved for it,
    so naming one is a claim to check. Asked with the caller's own token, so a project they
    are not in answers as one that does not exist."""
    for project in projects:
        if not is_project_name(project):
            raise NotFound(f"there is no project {project!r}", field="project")
    if principal.workload_id is not None:
        return _workload_projects(principal, projects)
    if not projects or principal.has_any("admin"):
        return frozenset(projects)
    token = bearer_token(request.headers.get("Authorization"))
    client = DatasetClient(config_of().url_of("dataset_service"), StaticToken(token or ""),
                           pool=current_app.extensions["portal.http"])
    for project in projects:
        try:
            members = client.members(project)
        except DatasetUnavailable as exc:
            raise ServiceUnavailable("the dataset service cannot confirm project membership "
                                     "right now", code="dataset_unavailable") from exc
        except DatasetError as exc:
            raise ApiError(exc.message, code=exc.code, field="project",
                           status=exc.status) from exc
        if principal.subject not in {m["user_id"] for m in members}:
            raise Forbidden(f"you are not a member of project {project!r}",
                            code="not_a_member", field="project")
    return frozenset(projects)


def _workload_projects(principal: Principal, projects: Collection[str]) -> frozenset[str]:
    """A workload's token works for the projects its workload was started for (their
    membership was checked then): by default all of them, or those of them it names."""
    with db_of().reading() as session:
        row = session.get(Workload, principal.workload_id)
        started_for = frozenset(row.projects or ()) \
            if row is not None and row.owner_id == principal.subject else frozenset()
    outside = sorted(set(projects) - started_for)
    if outside:
        raise Forbidden(f"project {outside[0]!r} is not one the workload this token belongs "
                        "to was started for", code="project_not_in_workload", field="project")
    return frozenset(projects) or started_for
