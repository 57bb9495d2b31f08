"""Datasets API: create from studies, release, publish, invalidate (each traced in its own
transaction), FAIR metadata, access lists, and the grants that decide what a workload mounts."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from dataset_service import datasets as ds
from dataset_service import fair
from dataset_service.api import find_project
from dataset_service.api_catalogue import public_answer
from dataset_service.models import (
    AccessRequest,
    Dataset,
    DatasetAccess,
    DatasetStudy,
    Grant,
    Project,
    RevokedUser,
    Study,
)
from dataset_service.policy import (
    Action,
    Actor,
    Code,
    DatasetFacts,
    Decision,
    decide,
    decide_use,
    visible_to,
)
from dataset_service.repository import Repository
from tracer.client import TracerClient, TracerError, checked_trace
from vre.api import PUBLIC, current_principal, endpoint
from vre.db import after_commit, utcnow
from vre.errors import ApiError, Forbidden, NotFound, Unprocessable
from vre.outbox import outbox_of
from vre.revocation import revocations_of
from vre.tokens import Principal
from vre.web import config_of, db_of

bp = Blueprint("datasets_api", __name__, url_prefix="/api/v1")

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"


class Author(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    given_name: str | None = Field(None, max_length=100)
    family_name: str | None = Field(None, max_length=100)
    orcid: str | None = Field(None, pattern=r"^(https://orcid\.org/)?\d{4}-\d{4}-\d{4}-\d{3}[\dX]$")
    affiliation: str | None = Field(None, max_length=200)


class StudyQueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str | None = Field(None, max_length=16)
    body_part: str | None = Field(None, max_length=64)
    age_min: int | None = Field(None, ge=0, le=150)
    age_max: int | None = Field(None, ge=0, le=150)
    sex: Literal["M", "F", "O"] | None = None
    diagnosis: str | None = Field(None, max_length=200)


class DatasetIn(BaseModel):
    """A new dataset: its studies (listed or queried) and its descriptive metadata."""

    model_config = ConfigDict(extra="forbid")
    project: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=3, max_length=200)
    description: str = Field("", max_length=20_000)
    version: str = Field("1.0", pattern=r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")
    studies: list[str] | None = Field(None, max_length=100_000)
    query: StudyQueryIn | None = None
    license_id: str | None = Field(None, pattern=r"^[A-Za-z0-9.+-]{1,64}$",
                                   description="SPDX identifier (default: the project's)")
    license_url: HttpUrl | None = None
    contact_name: str | None = Field(None, min_length=1, max_length=200)
    contact_email: str | None = Field(None,
                                      pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,}$")
    authors: list[Author] = Field(default_factory=list, max_length=200)
    keywords: list[str] = Field(default_factory=list, max_length=50)
    purpose: str = Field("", max_length=5000)
    provenance: str = Field("", max_length=5000)
    doi: str | None = Field(None, pattern=r"^(https://doi\.org/|doi:)?10\.\d{4,9}/\S+$")
    public_use: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> DatasetIn:
        if (self.studies is None) == (self.query is None):
            raise ValueError("give either 'studies' or 'query'")
        if self.license_id and self.license_url is None and \
                self.license_id not in ds.KNOWN_LICENSES:
            raise ValueError(f"license_url is needed for licence {self.license_id!r}")
        return self


class DatasetOut(BaseModel):
    id: str
    pid: str
    project_id: str
    name: str
    description: str
    version: str
    state: str
    license_id: str
    license_url: str
    contact_name: str
    authors: list[dict[str, Any]]
    keywords: list[str]
    purpose: str
    provenance: str
    doi: str | None
    public_use: bool
    content_hash: str
    statistics: dict[str, Any]
    created_by: str
    created_at: datetime
    released_at: datetime | None
    published_at: datetime | None
    invalidated_at: datetime | None
    invalidation_reason: str | None
    previous_id: str | None
    next_id: str | None


class LandingOut(BaseModel):
    dataset: DatasetOut
    schemaorg: dict[str, Any]


class InvalidateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=3, max_length=500)


class AccessIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(pattern=_ID)


class GrantIn(BaseModel):
    """What the portal asks on behalf of a user before it starts a workload."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(pattern=_ID)
    user_roles: list[str] = Field(default_factory=list, max_length=10)
    workload_id: str = Field(pattern=_ID)
    purpose: Literal["desktop", "job"]
    datasets: list[str] = Field(min_length=1, max_length=50)
    tool: str | None = Field(None, max_length=128)
    image: str | None = Field(None, max_length=256)
    flavor: str | None = Field(None, max_length=64)


class Mount(BaseModel):
    """One granted dataset: what it is, and its tree, which each compute backend maps to what
    it mounts (a bind of the folder here, a volume subPath on a cluster)."""

    dataset_id: str
    name: str
    version: str
    content_hash: str
    tree: str = Field(description="the dataset's own tree, relative to the repository root")
    project: str = Field("", description="the project (by name) whose stewards review what "
                         "leaves")
    read_only: Literal[True] = True


def _project_name(session: Session, project_id: str) -> str:
    project = session.get(Project, project_id)
    return project.name if project is not None else ""


class GrantOut(BaseModel):
    id: str
    user_id: str
    workload_id: str
    purpose: str
    mounts: list[Mount]
    index_file: str = "index.json"


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


# -- helpers ------------------------------------------------------------------------------

def _tracer() -> TracerClient:
    return current_app.extensions["dataset.tracer"]


def record_trace(session: Session, actor: str, action: str, datasets: list[Dataset],
                 details: dict[str, Any], at_once: bool = True) -> None:
    """Trace an action in its own transaction: the trace reaches the ledger if and only if
    the action commits (the outbox sends it after commit, until the tracer acknowledges;
    with `at_once` False, with others in the deliverer's next batch)."""
    outbox_of().record(session, trace_of(actor, action, datasets, details), at_once=at_once)


def trace_of(actor: str, action: str, datasets: list[Dataset],
             details: dict[str, Any]) -> dict[str, Any]:
    """The trace of an action on datasets, each named with its content hash; checked."""
    return checked_trace({
        "actor": actor, "action": action,
        "datasets": [{"id": d.id, "hash": d.content_hash} for d in datasets],
        "details": {k: v for k, v in details.items() if v is not None}})


def _out(dataset: Dataset, exact: bool = True) -> DatasetOut:
    """The record; with its statistics suppressed of small cells unless `exact` (see
    `exact_statistics`)."""
    config = config_of()
    values = {c.key: getattr(dataset, c.key) for c in sa.inspect(Dataset).mapper.column_attrs}
    if not exact:
        values["statistics"] = ds.public_statistics(dataset.statistics or {},
                                                    config.small_cell_threshold)
    return DatasetOut.model_validate({**values, "pid": f"{config.pid_base}/{dataset.id}"})


def exact_statistics(session: Session, principal: Principal | None, dataset: Dataset) -> bool:
    """Exact counts go to those who may see the studies themselves; anyone else reads the
    public, small-cell suppressed, statistics."""
    if principal is None or principal.is_service:
        return False
    return bool(decide(ds.actor_of(session, principal), ds.facts_of(session, dataset),
                       Action.VIEW_STUDIES))


def _refuse(decision: Decision, dataset_id: str) -> None:
    if decision:
        return
    if decision.code == "not_visible":
        raise NotFound(f"no dataset {dataset_id!r}", field="dataset_id")
    # The dataset's state, not the caller, stands in the way: the same answer a request
    # gets when it loses a race for the same transition (see `claim`).
    status = 409 if decision.code == Code.WRONG_STATE else 403
    raise ApiError(decision.reason, code=str(decision.code), status=status)


def load_dataset(session: Session, dataset_id: str, principal: Principal | None,
                 action: Action) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r}", field="dataset_id")
    if action == Action.VIEW_METADATA and dataset.record_is_public:
        return dataset
    if principal is None:
        raise NotFound(f"no dataset {dataset_id!r}", field="dataset_id")
    _refuse(decide(ds.actor_of(session, principal), ds.facts_of(session, dataset), action),
            dataset_id)
    return dataset


def caller() -> Principal:
    principal = current_principal()
    assert principal is not None
    return principal


# -- lifecycle ----------------------------------------------------------------------------

def _with_project_defaults(body: DatasetIn, project: Project) -> tuple[
        tuple[str, str], tuple[str, str]]:
    """Licence and contact of a new dataset: as given, else the project's defaults."""
    if body.license_id:
        license_url = str(body.license_url or ds.KNOWN_LICENSES[body.license_id])
        licence = (body.license_id, license_url)
    elif project.default_license_id:
        licence = (project.default_license_id, project.default_license_url or
                   ds.KNOWN_LICENSES.get(project.default_license_id, ""))
    else:
        raise Unprocessable("no licence given and the project has no default",
                            code="missing_field", field="license_id")
    name = body.contact_name or project.default_contact_name
    email = body.contact_email or project.default_contact_email
    if not name or not email:
        raise Unprocessable("no contact given and the project has no default",
                            code="missing_field",
                            field="contact_name" if not name else "contact_email")
    return licence, (name, email)


@bp.post("/datasets")
@endpoint("Create a draft dataset from studies", body=DatasetIn, response=DatasetOut,
          status=201, roles=["steward", "admin"], tags=["datasets"])
def create_dataset(body: DatasetIn) -> DatasetOut:
    principal = caller()
    with db_of().session() as session:
        project = find_project(session, body.project)
        actor = ds.actor_of(session, principal)
        if not (actor.steward_of(project.id) or principal.has_any("admin")):
            raise ApiError("only the project's stewards may create its datasets",
                           code="not_a_steward", status=403)
        if body.studies is not None:
            studies, missing = ds.studies_by_ids(session, project.id, body.studies)
            if missing:
                raise Unprocessable(f"studies not in project {project.name!r}: "
                                    f"{', '.join(missing[:10])}", code="unknown_studies",
                                    field="studies")
        else:
            studies = ds.select_studies(session, project.id,
                                        ds.StudyQuery(**body.query.model_dump()))
        if not studies:
            raise Unprocessable("the selection holds no study", code="no_studies",
                                field="studies" if body.studies is not None else "query")
        licence, contact = _with_project_defaults(body, project)
        dataset = Dataset(
            project_id=project.id, name=body.name, description=body.description,
            version=body.version, license_id=licence[0], license_url=licence[1],
            contact_name=contact[0], contact_email=contact[1],
            authors=[a.model_dump(exclude_none=True) for a in body.authors],
            keywords=body.keywords, purpose=body.purpose, provenance=body.provenance,
            doi=body.doi, public_use=body.public_use, content_hash=ds.content_hash(studies),
            statistics=ds.compute_statistics(session, [s.id for s in studies]),
            created_by=principal.subject)
        session.add(dataset)
        session.flush()
        session.add_all(DatasetStudy(dataset_id=dataset.id, study_id=s.id) for s in studies)
        session.flush()
        record_trace(session, principal.subject, "CREATE_DATASET", [dataset], {
            "project": project.name, "version": dataset.version,
            "license": dataset.license_id})
        return _out(dataset)


def claim(session: Session, dataset: Dataset, expected: dict[str, Any],
          values: dict[str, Any], conflict: str = "wrong_state") -> None:
    """Change the dataset's row only if it still holds `expected`, in one conditional UPDATE
    checked by its row count: of two requests that both read the same draft, one wins and
    the other is refused with 409, on SQLite as on PostgreSQL (the loser's UPDATE waits for
    the winner's commit, then matches no row). The refusal rolls the loser's transaction
    back before it traced or built anything, so it leaves no trace and no tree."""
    matches = [getattr(Dataset, key).is_(None) if value is None else
               getattr(Dataset, key) == value for key, value in expected.items()]
    result = session.execute(sa.update(Dataset).where(Dataset.id == dataset.id, *matches)
                             .values(**values).execution_options(synchronize_session=False))
    session.refresh(dataset)
    if result.rowcount == 1:
        # A Core statement goes past the models' flush, which is where a change of a public
        # record moves the catalogue on: show it the change.
        flag_modified(dataset, "modified_at")
    else:
        raise ApiError(f"dataset {dataset.id!r} changed meanwhile: it is now {dataset.state}"
                       + (f" with a next version {dataset.next_id}" if dataset.next_id
                          and "next_id" in expected else ""),
                       code=conflict, status=409)


def _transition(dataset_id: str, action: Action, update: str, values: dict[str, Any],
                after: Any = None, details: dict[str, Any] | None = None) -> DatasetOut:
    """Move a dataset to another state: from the state the policy allowed, or not at all."""
    principal = caller()
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, principal, action)
        was = dataset.state
        claim(session, dataset, {"state": was}, {**values, "modified_at": utcnow()})
        if after is not None:
            after(session, dataset, was)
        session.flush()
        record_trace(session, principal.subject, "UPDATE_DATASET", [dataset],
                     {"update": update, "version": dataset.version, **(details or {})})
        return _out(dataset)


@bp.post("/datasets/<dataset_id>/release")
@endpoint("Release a draft: its contents are fixed from now on", response=DatasetOut,
          tags=["datasets"])
def release(dataset_id: str) -> DatasetOut:
    def after(session: Session, dataset: Dataset, _was: str) -> None:
        ds.ensure_tree(session, current_app.extensions["dataset.repository"], dataset)

    return _transition(dataset_id, Action.RELEASE, "RELEASE",
                       {"state": "released", "released_at": utcnow()}, after)


@bp.post("/datasets/<dataset_id>/publish")
@endpoint("Publish a released dataset's metadata in the public catalogue",
          response=DatasetOut, tags=["datasets"])
def publish(dataset_id: str) -> DatasetOut:
    def after(session: Session, dataset: Dataset, _was: str) -> None:
        index = current_app.extensions.get("dataset.catalogue_index")
        if index is not None:
            index(session, dataset)

    return _transition(dataset_id, Action.PUBLISH, "PUBLISH",
                       {"state": "published", "published_at": utcnow()}, after)


@bp.post("/datasets/<dataset_id>/invalidate")
@endpoint("Invalidate a dataset: it still resolves, with its reason, but nobody can use it",
          body=InvalidateIn, response=DatasetOut, tags=["datasets"])
def invalidate(dataset_id: str, body: InvalidateIn) -> DatasetOut:
    repository = current_app.extensions["dataset.repository"]

    def after(session: Session, dataset: Dataset, was: str) -> None:
        remove = current_app.extensions.get("dataset.catalogue_remove")
        if was == "published" and remove is not None:
            remove(session, dataset)  # still resolves by its PID, no longer offered
        # Its tree is retired once the invalidation is kept: no grant mounts it again, and
        # the workloads that mount it are stopped (portal.compute.lifecycle).
        dataset_id = dataset.id
        after_commit(session, lambda: repository.remove_tree(dataset_id))

    return _transition(dataset_id, Action.INVALIDATE, "INVALIDATE",
                       {"state": "invalidated", "invalidated_at": utcnow(),
                        "invalidation_reason": body.reason}, after, {"reason": body.reason})


@bp.get("/datasets/<dataset_id>")
@endpoint("One dataset's record (published ones are public)", response=DatasetOut,
          roles=PUBLIC, tags=["datasets"])
def get_dataset(dataset_id: str) -> DatasetOut:
    principal = current_principal(required=False)
    with db_of().reading() as session:
        dataset = load_dataset(session, dataset_id, principal, Action.VIEW_METADATA)
        return _out(dataset, exact_statistics(session, principal, dataset))


@bp.get("/datasets")
@endpoint("Datasets the caller may see, newest first", response=list[DatasetOut], tags=["datasets"])
def list_datasets() -> list[DatasetOut]:
    principal = caller()
    with db_of().session() as session:
        actor = ds.actor_of(session, principal)
        rows = session.scalars(sa.select(Dataset).order_by(Dataset.created_at.desc())
                               .limit(1000))
        shown = []
        for dataset in rows:
            facts = ds.facts_of(session, dataset)
            if visible_to(actor, facts):
                exact = bool(decide(actor, facts, Action.VIEW_STUDIES))
                shown.append(_out(dataset, exact))
        return shown


@bp.get("/datasets/<dataset_id>/metadata")
@endpoint("Metadata as DataCite, schema.org JSON-LD or DCAT-AP (Turtle or JSON-LD); by "
          "?format= or Accept", roles=PUBLIC, tags=["datasets"])
def metadata(dataset_id: str) -> Response:
    with db_of().reading() as session:
        _, record = _metadata_of(session, dataset_id)
    try:
        name = fair.negotiate(request.headers.get("Accept"), request.args.get("format"))
    except fair.UnknownFormat as exc:
        status = 400 if request.args.get("format") else 406
        raise ApiError(str(exc), code="unknown_format", field="format", status=status) from None
    chosen = fair.FORMATS[name]
    rendered = chosen.render(record)
    if isinstance(rendered, str):
        return Response(rendered, mimetype=chosen.media_type.split(";")[0])
    return Response(json.dumps(rendered, ensure_ascii=False, indent=1),
                    content_type=chosen.media_type)


@bp.get("/datasets/<dataset_id>/landing")
@endpoint("One dataset's record and its schema.org JSON-LD: what its landing page shows, "
          "in one answer", response=LandingOut, roles=PUBLIC, tags=["datasets"])
def landing(dataset_id: str) -> Response:
    def produce() -> tuple[LandingOut, bool]:
        dataset, record = _metadata_of(session, dataset_id)
        # a public record reads the same for everyone (its statistics suppressed of small
        # cells, as its FAIR metadata are); others depend on who asks
        exact = not dataset.record_is_public and exact_statistics(
            session, current_principal(required=False), dataset)
        return (LandingOut(dataset=_out(dataset, exact), schemaorg=fair.schema_org(record)),
                dataset.record_is_public)

    with db_of().reading() as session:
        return public_answer(session, "record", dataset_id, produce)


def _metadata_of(session: Session, dataset_id: str) -> tuple[Dataset, fair.DatasetRecord]:
    """The dataset, if the caller may see its metadata, and the record its formats render."""
    dataset = load_dataset(session, dataset_id, current_principal(required=False),
                           Action.VIEW_METADATA)
    return dataset, ds.fair_record(config_of(), session, dataset)


class IntegrityOut(BaseModel):
    dataset_id: str
    ok: bool
    stored_hash: str
    recomputed_hash: str | None
    traced_hash: str | None
    problems: list[str]


@bp.get("/datasets/<dataset_id>/integrity")
@endpoint("Re-hash the dataset's files and compare with its traced content hash",
          response=IntegrityOut, tags=["datasets"])
def integrity(dataset_id: str) -> IntegrityOut:
    principal = caller()
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, principal, Action.VIEW_ACCESS_LOG)
        try:
            created = next(iter(_tracer().query(dataset=dataset.id, action="CREATE_DATASET")),
                           None)
        except TracerError as exc:
            raise ApiError(f"cannot read the ledger: {exc}", code="tracer_unavailable",
                           status=503) from None
        traced = next((d.get("hash") for d in (created or {}).get("datasets", [])
                       if d["id"] == dataset.id), None)
        report = ds.check_integrity(session, current_app.extensions["dataset.repository"],
                                    dataset, traced)
    return IntegrityOut(ok=report.ok, **vars(report))


# -- access ------------------------------------------------------------------------------

@bp.put("/datasets/<dataset_id>/access")
@endpoint("Put a user on the dataset's access list", body=AccessIn, status=200,
          tags=["access"])
def grant_access(dataset_id: str, body: AccessIn) -> dict[str, str]:
    principal = caller()
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, principal, Action.MANAGE_ACCESS)
        if session.get(DatasetAccess, (dataset.id, body.user_id)) is None:
            session.add(DatasetAccess(dataset_id=dataset.id, user_id=body.user_id,
                                      granted_by=principal.subject))
            session.flush()
            record_trace(session, principal.subject, "UPDATE_DATASET", [dataset],
                         {"update": "GRANT_ACCESS", "subject_user": body.user_id})
    return {"dataset_id": dataset_id, "user_id": body.user_id}


@bp.delete("/datasets/<dataset_id>/access/<user_id>")
@endpoint("Take a user off the dataset's access list", tags=["access"])
def revoke_access(dataset_id: str, user_id: str) -> dict[str, str]:
    principal = caller()
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, principal, Action.MANAGE_ACCESS)
        entry = session.get(DatasetAccess, (dataset.id, user_id))
        if entry is None:
            raise NotFound(f"{user_id!r} is not on the access list", field="user_id")
        session.delete(entry)
        session.flush()
        record_trace(session, principal.subject, "UPDATE_DATASET", [dataset],
                     {"update": "REVOKE_ACCESS", "subject_user": user_id})
    return {"dataset_id": dataset_id, "user_id": user_id}


@bp.post("/grants")
@endpoint("Decide and trace what a workload may mount; answer with its read-only mounts",
          body=GrantIn, response=GrantOut, status=201, roles=["service"], tags=["grants"])
def create_grant(body: GrantIn) -> GrantOut:
    repository = current_app.extensions["dataset.repository"]
    _restore_trees(repository, list(dict.fromkeys(body.datasets)))
    with db_of().session() as session:
        granting = _Granting(session)
        made = _grant(repository, body, granting)
        granting.write()
        return made


class GrantsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grants: list[GrantIn] = Field(min_length=1, max_length=64)


class GrantRefusal(BaseModel):
    code: str
    message: str
    status: int
    details: dict[str, Any] | None = None


class GrantAnswer(BaseModel):
    """One grant of the batch: made, or refused as POST /grants would refuse it."""

    grant: GrantOut | None = None
    error: GrantRefusal | None = None


class GrantsOut(BaseModel):
    grants: list[GrantAnswer]


@bp.post("/grants/batch")
@endpoint("Decide and trace several workloads' grants in one transaction (jobs submitted "
          "together): each decided as POST /grants decides it, in order, a refusal that "
          "grant's answer alone", body=GrantsIn, response=GrantsOut, roles=["service"],
          tags=["grants"])
def create_grants(body: GrantsIn) -> GrantsOut:
    repository = current_app.extensions["dataset.repository"]
    _restore_trees(repository, list(dict.fromkeys(d for g in body.grants for d in g.datasets)))
    answers = []
    with db_of().session() as session:
        granting = _Granting(session)
        for ask in body.grants:
            try:
                answers.append(GrantAnswer(grant=_grant(repository, ask, granting)))
            except ApiError as exc:
                answers.append(GrantAnswer(error=GrantRefusal(
                    code=exc.code, message=exc.message, status=exc.status,
                    details=exc.details)))
        granting.write()
    return GrantsOut(grants=answers)


class _Granting:
    """The grants of one transaction: what they read once (datasets with their policy facts,
    the people asking, project names), and what they write together at the end (the grants
    in one statement, their traces in another)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.datasets: dict[str, Dataset | None] = {}
        self.facts: dict[str, DatasetFacts] = {}
        self.actors: dict[tuple[str, frozenset[str]], Actor] = {}
        self.projects: dict[str, str] = {}
        self.grants: list[Grant] = []
        self.traces: dict[bool, list[dict[str, Any]]] = {True: [], False: []}

    def add(self, grant: Grant, trace: dict[str, Any], at_once: bool) -> None:
        self.grants.append(grant)
        self.traces[at_once].append(trace)

    def write(self) -> None:
        """Write the grants decided and their traces, in the session's transaction."""
        self.session.add_all(self.grants)
        self.session.flush()
        for at_once, traces in self.traces.items():
            if traces:
                outbox_of().record_all(self.session, traces, at_once=at_once)

    def datasets_of(self, wanted: list[str]) -> dict[str, Dataset]:
        missing = [i for i in wanted if i not in self.datasets]
        if missing:
            self.datasets.update(dict.fromkeys(missing))
            self.datasets.update({d.id: d for d in self.session.scalars(
                sa.select(Dataset).where(Dataset.id.in_(missing)))})
        return {i: d for i in wanted if (d := self.datasets[i]) is not None}

    def facts_of(self, dataset: Dataset) -> DatasetFacts:
        if dataset.id not in self.facts:
            self.facts[dataset.id] = ds.facts_of(self.session, dataset)
        return self.facts[dataset.id]

    def actor(self, user_id: str, roles: frozenset[str]) -> Actor:
        if (user_id, roles) not in self.actors:
            self.actors[user_id, roles] = ds.actor_for(self.session, user_id, roles)
        return self.actors[user_id, roles]

    def project_name(self, project_id: str) -> str:
        if project_id not in self.projects:
            self.projects[project_id] = _project_name(self.session, project_id)
        return self.projects[project_id]


def _grant(repository: Repository, body: GrantIn, granting: _Granting) -> GrantOut:
    """Decide one grant, to be written and traced with the others of its transaction
    (`granting.write`); refused (with every dataset refused and why) before anything is kept."""
    wanted = list(dict.fromkeys(body.datasets))
    rows = granting.datasets_of(wanted)
    actor = granting.actor(body.user_id, frozenset(body.user_roles))
    answers = decide_use(actor, [granting.facts_of(rows[i]) for i in wanted if i in rows])
    # A dataset the user may not even see is refused as one that does not exist.
    unknown = {"code": "not_found", "reason": "no such dataset"}
    refused = {i: unknown for i in wanted if i not in rows}
    refused.update({i: unknown if d.code == Code.NOT_VISIBLE else
                    {"code": str(d.code), "reason": d.reason}
                    for i, d in answers.items() if not d})
    if refused:
        raise ApiError("some datasets may not be used: " + "; ".join(
            f"{i}: {r['reason']}" for i, r in refused.items()),
            code="grant_refused", status=403, details={"refused": refused})
    mounts = []
    for dataset_id in wanted:
        dataset = rows[dataset_id]
        if not repository.tree_path(dataset.id).is_dir():
            raise ApiError(f"dataset {dataset.id!r} has no tree to mount; try again",
                           code="dataset_tree_missing", status=409)
        mounts.append(Mount(dataset_id=dataset.id, name=dataset.name,
                            version=dataset.version, content_hash=dataset.content_hash,
                            tree=repository.tree_name(dataset.id),
                            project=granting.project_name(dataset.project_id)))
    # Its id now: the answer names it before the grants are written.
    grant = Grant(id=str(uuid.uuid4()), user_id=body.user_id, workload_id=body.workload_id,
                  purpose=body.purpose, dataset_ids=wanted, tool=body.tool,
                  image=body.image, flavor=body.flavor)
    granting.add(grant, trace_of(body.user_id, "USE_DATASETS", [rows[i] for i in wanted], {
        "workload_id": body.workload_id, "purpose": body.purpose, "tool": body.tool,
        "image": body.image, "flavor": body.flavor}),
        # A job's grant comes with its submission, many a second: its trace goes in the
        # outbox's next batch, as the job's own JOB_SUBMITTED does.
        at_once=body.purpose != "job")
    return GrantOut(id=grant.id, user_id=grant.user_id, workload_id=grant.workload_id,
                    purpose=grant.purpose, mounts=mounts)


def _restore_trees(repository: Repository, wanted: list[str]) -> None:
    """Lay out again, before a grant and outside its transaction, the tree of a released
    dataset that went missing (a repository restored from a backup without its trees): trees
    are made at release, never inside a grant."""
    missing = [i for i in wanted
               if re.match(_ID, i) and not repository.tree_path(i).is_dir()]
    if not missing:  # the usual case, asked many a second: no query
        return
    with db_of().reading() as session:
        for dataset in session.scalars(sa.select(Dataset).where(
                Dataset.id.in_(missing), Dataset.state.in_(("released", "published")))):
            ds.build_tree(session, repository, dataset)


# Who may end a grant: the portal, which asked for it, and an administrator.
GRANT_HOLDERS = frozenset({"service:portal"})


@bp.delete("/grants/<grant_id>")
@endpoint("End a grant when its workload stops (the portal, or an administrator); traced "
          "once", roles=["service", "admin"], tags=["grants"])
def end_grant(grant_id: str) -> dict[str, Any]:
    principal = caller()
    if principal.is_service and principal.subject not in GRANT_HOLDERS:
        raise Forbidden("only the portal, which asked for grants, ends them",
                        code="not_the_grant_holder")
    with db_of().session() as session:
        grant = session.get(Grant, grant_id)
        if grant is None:
            raise NotFound(f"no grant {grant_id!r}", field="grant_id")
        if grant.ended_at is None:
            grant.ended_at = utcnow()
            datasets = list(session.scalars(sa.select(Dataset).where(
                Dataset.id.in_(grant.dataset_ids))))
            record_trace(session, principal.subject, "GRANT_ENDED", datasets, {
                "workload_id": grant.workload_id, "subject_user": grant.user_id,
                "purpose": grant.purpose})
        return {"id": grant.id, "ended_at": grant.ended_at.isoformat()}


class OpenGrantOut(BaseModel):
    id: str
    user_id: str
    workload_id: str
    datasets: list[str]
    invalidated: list[str] = Field(
        description="datasets of the grant that have been invalidated since it was made")


class OpenGrantsOut(BaseModel):
    grants: list[OpenGrantOut]


@bp.get("/grants/open")
@endpoint("Grants not ended yet, each with its datasets invalidated since: the workloads "
          "holding the others are stopped", response=OpenGrantsOut, roles=["service"],
          tags=["grants"])
def open_grants() -> OpenGrantsOut:
    with db_of().reading() as session:  # the columns alone: a long queue holds many
        grants = session.execute(sa.select(
            Grant.id, Grant.user_id, Grant.workload_id, Grant.dataset_ids).where(
            Grant.ended_at.is_(None)).order_by(Grant.created_at)).all()
        wanted = {d for g in grants for d in g.dataset_ids}
        invalidated = set(session.scalars(sa.select(Dataset.id).where(
            Dataset.id.in_(wanted), Dataset.state == "invalidated"))) if wanted else set()
    return OpenGrantsOut(grants=[OpenGrantOut(
        id=g.id, user_id=g.user_id, workload_id=g.workload_id, datasets=list(g.dataset_ids),
        invalidated=[d for d in g.dataset_ids if d in invalidated]) for g in grants])


def _revocable(user_id: str) -> str:
    if not re.fullmatch(_ID, user_id):
        raise Unprocessable(f"{user_id[:64]!r} is not a user id", field="user_id")
    return user_id


@bp.put("/revoked-users/<user_id>")
@endpoint("Withdraw a user's access: from now on they may only read public metadata",
          body=RevokeIn, roles=["admin", "service"], tags=["grants"])
def revoke_user(user_id: str, body: RevokeIn) -> dict[str, Any]:
    principal = caller()
    user_id = _revocable(user_id)
    with db_of().session() as session:
        if session.get(RevokedUser, user_id) is None:
            session.add(RevokedUser(user_id=user_id, revoked_by=principal.subject,
                                    reason=body.reason))
            session.flush()
            record_trace(session, principal.subject, "USER_REVOKED", [],
                         {"subject_user": user_id, "reason": body.reason or None})
        active = list(session.scalars(sa.select(Grant.workload_id).where(
            Grant.user_id == user_id, Grant.ended_at.is_(None))))
    revocations_of(current_app).invalidate()
    # The caller (the portal) stops these workloads; the next grant is refused anyway.
    return {"user_id": user_id, "revoked": True, "active_workloads": active}


@bp.delete("/revoked-users/<user_id>")
@endpoint("Give a revoked user their access back", roles=["admin", "service"],
          tags=["grants"])
def restore_user(user_id: str) -> dict[str, Any]:
    principal = caller()
    user_id = _revocable(user_id)
    with db_of().session() as session:
        row = session.get(RevokedUser, user_id)
        if row is None:
            raise NotFound(f"{user_id!r} is not revoked", code="not_revoked", field="user_id")
        session.delete(row)
        session.flush()
        record_trace(session, principal.subject, "USER_RESTORED", [], {"subject_user": user_id})
    revocations_of(current_app).invalidate()
    return {"user_id": user_id, "revoked": False}


# -- access requests -------------------------------------------------------------------------

class AccessRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: str = Field(min_length=10, max_length=500)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field("", max_length=500)


class AccessRequestOut(BaseModel):
    id: str
    dataset_id: str
    user_id: str
    purpose: str
    state: str
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    created_at: datetime


def request_out(row: AccessRequest) -> AccessRequestOut:
    return AccessRequestOut.model_validate(row, from_attributes=True)


@bp.post("/datasets/<dataset_id>/requests")
@endpoint("Ask to use a dataset, saying what for", body=AccessRequestIn,
          response=AccessRequestOut, status=201, tags=["access"])
def request_access(dataset_id: str, body: AccessRequestIn) -> AccessRequestOut:
    principal = caller()
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, principal, Action.REQUEST_ACCESS)
        pending = session.scalar(sa.select(AccessRequest).where(
            AccessRequest.dataset_id == dataset.id, AccessRequest.user_id == principal.subject,
            AccessRequest.state == "pending"))
        if pending is not None:
            raise ApiError("you already have a pending request for this dataset",
                           code="request_pending", status=409)
        row = AccessRequest(dataset_id=dataset.id, user_id=principal.subject,
                            purpose=body.purpose)
        session.add(row)
        session.flush()
        record_trace(session, principal.subject, "ACCESS_REQUESTED", [dataset],
                     {"purpose": body.purpose, "request_id": row.id})
        return request_out(row)


@bp.get("/datasets/<dataset_id>/requests")
@endpoint("Access requests of a dataset (its stewards), or the caller's own",
          response=list[AccessRequestOut], tags=["access"])
def list_requests(dataset_id: str) -> list[AccessRequestOut]:
    principal = caller()
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, principal, Action.VIEW_METADATA)
        stmt = sa.select(AccessRequest).where(AccessRequest.dataset_id == dataset.id)
        steward = decide(ds.actor_of(session, principal), ds.facts_of(session, dataset),
                         Action.MANAGE_ACCESS)
        if not steward:
            stmt = stmt.where(AccessRequest.user_id == principal.subject)
        return [request_out(r) for r in session.scalars(
            stmt.order_by(AccessRequest.created_at.desc()))]


def _decide_request(request_id: str, approve: bool, body: DecisionIn) -> AccessRequestOut:
    principal = caller()
    with db_of().session() as session:
        row = session.get(AccessRequest, request_id)
        if row is None:
            raise NotFound(f"no access request {request_id!r}", field="request_id")
        dataset = load_dataset(session, row.dataset_id, principal, Action.MANAGE_ACCESS)
        if row.state != "pending":
            raise ApiError(f"the request is already {row.state}", code="request_decided",
                           status=409)
        # Decided once: of two stewards deciding at the same moment, the second is refused.
        decided = session.execute(sa.update(AccessRequest).where(
            AccessRequest.id == row.id, AccessRequest.state == "pending").values(
            state="approved" if approve else "rejected", decided_by=principal.subject,
            decided_at=utcnow(), decision_note=body.note).execution_options(
            synchronize_session=False))
        session.refresh(row)
        if decided.rowcount != 1:
            raise ApiError(f"the request is already {row.state}", code="request_decided",
                           status=409)
        if approve and session.get(DatasetAccess, (dataset.id, row.user_id)) is None:
            session.add(DatasetAccess(dataset_id=dataset.id, user_id=row.user_id,
                                      granted_by=principal.subject))
        session.flush()
        record_trace(session, principal.subject,
                     "ACCESS_APPROVED" if approve else "ACCESS_REJECTED", [dataset],
                     {"subject_user": row.user_id, "request_id": row.id,
                      "reason": body.note or None})
        return request_out(row)


@bp.post("/requests/<request_id>/approve")
@endpoint("Approve an access request: the user joins the dataset's access list",
          body=DecisionIn, response=AccessRequestOut, tags=["access"])
def approve_request(request_id: str, body: DecisionIn) -> AccessRequestOut:
    return _decide_request(request_id, True, body)


@bp.post("/requests/<request_id>/reject")
@endpoint("Reject an access request", body=DecisionIn, response=AccessRequestOut,
          tags=["access"])
def reject_request(request_id: str, body: DecisionIn) -> AccessRequestOut:
    return _decide_request(request_id, False, body)


# -- editing and versions -----------------------------------------------------------------------

class DatasetPatch(BaseModel):
    """Metadata that may change after creation; contents only change by a new version."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=3, max_length=200)
    description: str | None = Field(None, max_length=20_000)
    license_id: str | None = Field(None, pattern=r"^[A-Za-z0-9.+-]{1,64}$")
    license_url: HttpUrl | None = None
    contact_name: str | None = Field(None, min_length=1, max_length=200)
    contact_email: str | None = Field(None, pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,}$")
    authors: list[Author] | None = Field(None, max_length=200)
    keywords: list[str] | None = Field(None, max_length=50)
    purpose: str | None = Field(None, max_length=5000)
    provenance: str | None = Field(None, max_length=5000)
    doi: str | None = Field(None, pattern=r"^(https://doi\.org/|doi:)?10\.\d{4,9}/\S+$")
    public_use: bool | None = None

    @model_validator(mode="after")
    def _licence_url(self) -> DatasetPatch:
        if self.license_id and not self.license_url and \
                self.license_id not in ds.KNOWN_LICENSES:
            raise ValueError(f"license_url is needed for licence {self.license_id!r}")
        return self


class VersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")
    studies: list[str] | None = Field(None, max_length=100_000)
    query: StudyQueryIn | None = None


@bp.patch("/datasets/<dataset_id>")
@endpoint("Edit a dataset's metadata (a licence change is traced as such)", body=DatasetPatch,
          response=DatasetOut, tags=["datasets"])
def edit_dataset(dataset_id: str, body: DatasetPatch) -> DatasetOut:
    principal = caller()
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise Unprocessable("nothing to change", code="empty_change")
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, principal, Action.EDIT)
        # Only in the state the policy allowed: an edit racing an invalidation must not
        # put the invalidated dataset back into the catalogue.
        claim(session, dataset, {"state": dataset.state}, {"modified_at": utcnow()})
        old_license = dataset.license_id
        for key, value in changes.items():
            if key == "authors":
                value = [a.model_dump(exclude_none=True) for a in body.authors or []]
            elif key == "license_url":
                value = str(value)
            setattr(dataset, key, value)
        if "license_id" in changes and "license_url" not in changes:
            dataset.license_url = ds.KNOWN_LICENSES[dataset.license_id]
        if dataset.state == "published":
            index = current_app.extensions.get("dataset.catalogue_index")
            if index is not None:
                index(session, dataset)
        session.flush()
        licensed = dataset.license_id != old_license
        record_trace(session, principal.subject, "UPDATE_DATASET", [dataset], {
            "update": "LICENSE_UPDATED" if licensed else "METADATA_UPDATED",
            "license": dataset.license_id if licensed else None})
        return _out(dataset)


@bp.post("/datasets/<dataset_id>/versions")
@endpoint("Start a new version (a draft) from a released, published or invalidated dataset",
          body=VersionIn, response=DatasetOut, status=201, tags=["datasets"])
def new_version(dataset_id: str, body: VersionIn) -> DatasetOut:
    principal = caller()
    with db_of().session() as session:
        old = load_dataset(session, dataset_id, principal, Action.CREATE_VERSION)
        if old.next_id is not None:
            raise ApiError(f"version {old.version} already has a next version",
                           code="version_exists", status=409)
        if body.version == old.version:
            raise Unprocessable("a new version needs a new version number",
                                code="same_version", field="version")
        if body.studies is not None:
            studies, missing = ds.studies_by_ids(session, old.project_id, body.studies)
            if missing:
                raise Unprocessable(f"studies not in the project: {', '.join(missing[:10])}",
                                    code="unknown_studies", field="studies")
        elif body.query is not None:
            studies = ds.select_studies(session, old.project_id,
                                        ds.StudyQuery(**body.query.model_dump()))
        else:
            ids = ds.study_ids_of(session, old.id)
            studies = list(session.scalars(sa.select(Study).where(Study.id.in_(ids))))
        if not studies:
            raise Unprocessable("the selection holds no study", code="no_studies")
        copied = {c.key: getattr(old, c.key) for c in sa.inspect(Dataset).mapper.column_attrs
                  if c.key in ("project_id", "name", "description", "license_id",
                               "license_url", "contact_name", "contact_email", "authors",
                               "keywords", "purpose", "provenance", "public_use")}
        new = Dataset(**copied, version=body.version, previous_id=old.id,
                      content_hash=ds.content_hash(studies),
                      statistics=ds.compute_statistics(session, [s.id for s in studies]),
                      created_by=principal.subject)
        session.add(new)
        session.flush()
        claim(session, old, {"next_id": None}, {"next_id": new.id}, conflict="version_exists")
        session.add_all(DatasetStudy(dataset_id=new.id, study_id=s.id) for s in studies)
        session.flush()
        record_trace(session, principal.subject, "CREATE_DATASET", [new], {
            "version": new.version, "license": new.license_id,
            "reason": f"new version of {old.id}"})
        return _out(new)
