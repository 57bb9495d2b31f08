"""Looking inside datasets without touching data: the explorer's studies and series (metadata
and clinical variables only), a dataset's access log, a steward's study query preview, and
the access requests waiting for the caller."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import sqlalchemy as sa
from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from dataset_service import datasets as ds
from dataset_service.api import find_project, require_project_steward
from dataset_service.api_datasets import (
    AccessRequestOut,
    StudyQueryIn,
    caller,
    load_dataset,
    request_out,
)
from dataset_service.models import (
    AccessRequest,
    Dataset,
    DatasetAccess,
    DatasetStudy,
    Grant,
    ProjectMember,
    Series,
    Study,
    Subject,
)
from dataset_service.policy import Action
from vre.api import endpoint
from vre.web import db_of

bp = Blueprint("explore_api", __name__, url_prefix="/api/v1")


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    page: int = Field(1, ge=1, le=100_000)
    per_page: int = Field(25, ge=1, le=200)


class SeriesOut(BaseModel):
    series_uid: str
    number: int | None
    modality: str
    body_part: str
    manufacturer: str
    model: str
    description: str
    instance_count: int
    size_bytes: int
    rows: int | None
    columns: int | None
    slice_thickness: float | None
    slice_spacing: float | None
    pixel_spacing: str | None


class SubjectOut(BaseModel):
    pseudonym: str
    sex: str | None
    age: int | None
    diagnosis: str | None
    clinical: dict[str, Any]


class StudyOut(BaseModel):
    study_uid: str
    study_date: date | None
    description: str
    modalities: list[str]
    body_parts: list[str]
    series_count: int
    instance_count: int
    size_bytes: int
    subject: SubjectOut
    series: list[SeriesOut]


class StudyPage(BaseModel):
    total: int
    page: int
    per_page: int
    pages: int
    studies: list[StudyOut]


def _split(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def studies_out(session: Session, studies: list[Study]) -> list[StudyOut]:
    """Studies with their subject and series, loaded in two queries rather than one per row."""
    ids = [s.id for s in studies]
    subjects = {s.id: s for s in session.scalars(sa.select(Subject).where(
        Subject.id.in_({s.subject_id for s in studies})))}
    series: dict[str, list[Series]] = {i: [] for i in ids}
    for row in session.scalars(sa.select(Series).where(Series.study_id.in_(ids))
                               .order_by(Series.number, Series.series_uid)):
        series[row.study_id].append(row)
    out = []
    for study in studies:
        subject = subjects[study.subject_id]
        out.append(StudyOut(
            study_uid=study.study_uid, study_date=study.study_date,
            description=study.description, modalities=_split(study.modalities),
            body_parts=_split(study.body_parts), series_count=study.series_count,
            instance_count=study.instance_count, size_bytes=study.size_bytes,
            subject=SubjectOut(pseudonym=subject.pseudonym, sex=subject.sex, age=subject.age,
                               diagnosis=subject.diagnosis, clinical=subject.clinical or {}),
            series=[SeriesOut.model_validate(s, from_attributes=True)
                    for s in series[study.id]]))
    return out


def _pages(total: int, per_page: int) -> int:
    return max(1, -(-total // per_page))


@bp.get("/datasets/<dataset_id>/studies")
@endpoint("The dataset's studies and series with clinical variables (metadata only)",
          query=PageQuery, response=StudyPage, tags=["explore"])
def dataset_studies(dataset_id: str, query: PageQuery) -> StudyPage:
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, caller(), Action.VIEW_STUDIES)
        members = sa.select(DatasetStudy.study_id).where(DatasetStudy.dataset_id == dataset.id)
        total = session.scalar(sa.select(sa.func.count()).select_from(members.subquery())) or 0
        rows = list(session.scalars(
            sa.select(Study).where(Study.id.in_(members)).order_by(Study.study_uid)
            .offset((query.page - 1) * query.per_page).limit(query.per_page)))
        return StudyPage(total=total, page=query.page, per_page=query.per_page,
                         pages=_pages(total, query.per_page), studies=studies_out(session, rows))


class AccessLogEntry(BaseModel):
    grant_id: str
    user_id: str
    purpose: str
    workload_id: str
    tool: str | None
    image: str | None
    flavor: str | None
    started_at: datetime
    ended_at: datetime | None


@bp.get("/datasets/<dataset_id>/access-log")
@endpoint("Who used the dataset, with which tool, image and flavor, and when; newest first",
          query=PageQuery, response=list[AccessLogEntry], tags=["explore"])
def access_log(dataset_id: str, query: PageQuery) -> list[AccessLogEntry]:
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, caller(), Action.VIEW_ACCESS_LOG)
        # dataset_ids is a JSON list; its text form holds each id in double quotes.
        holds = sa.cast(Grant.dataset_ids, sa.Text).like(f'%"{dataset.id}"%')
        rows = session.scalars(sa.select(Grant).where(holds)
                               .order_by(Grant.created_at.desc())
                               .offset((query.page - 1) * query.per_page).limit(query.per_page))
        return [AccessLogEntry(grant_id=g.id, user_id=g.user_id, purpose=g.purpose,
                               workload_id=g.workload_id, tool=g.tool, image=g.image,
                               flavor=g.flavor, started_at=g.created_at, ended_at=g.ended_at)
                for g in rows if dataset.id in g.dataset_ids]


class StudySearchIn(StudyQueryIn):
    project: str = Field(min_length=1, max_length=64)
    limit: int = Field(50, ge=0, le=500)


class StudySearchOut(BaseModel):
    project_id: str
    studies_matched: int
    subjects_matched: int
    statistics: dict[str, Any]
    studies: list[StudyOut]


@bp.get("/studies")
@endpoint("Preview the studies a dataset query would select (the project's stewards)",
          query=StudySearchIn, response=StudySearchOut, roles=["steward", "admin"],
          tags=["explore"])
def search_studies(query: StudySearchIn) -> StudySearchOut:
    with db_of().session() as session:
        project = find_project(session, query.project)
        require_project_steward(session, caller(), project.id)
        found = ds.select_studies(session, project.id, ds.StudyQuery(
            **query.model_dump(exclude={"project", "limit"})))
        return StudySearchOut(
            project_id=project.id, studies_matched=len(found),
            subjects_matched=len({s.subject_id for s in found}),
            statistics=ds.compute_statistics(session, [s.id for s in found]),
            studies=studies_out(session, found[:query.limit]))


class RequestFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: Literal["mine", "to_review"] = "mine"
    state: Literal["pending", "approved", "rejected"] | None = None


@bp.get("/requests")
@endpoint("The caller's own access requests, or those waiting on their review",
          query=RequestFilter, response=list[AccessRequestOut], tags=["access"])
def list_my_requests(query: RequestFilter) -> list[AccessRequestOut]:
    principal = caller()
    with db_of().session() as session:
        stmt = sa.select(AccessRequest)
        if query.scope == "mine":
            stmt = stmt.where(AccessRequest.user_id == principal.subject)
        elif not principal.has_any("admin"):
            stewarded = sa.select(ProjectMember.project_id).where(
                ProjectMember.user_id == principal.subject, ProjectMember.role == "steward")
            stmt = stmt.where(AccessRequest.dataset_id.in_(
                sa.select(Dataset.id).where(Dataset.project_id.in_(stewarded))))
        if query.state:
            stmt = stmt.where(AccessRequest.state == query.state)
        rows = session.scalars(stmt.order_by(AccessRequest.created_at.desc()).limit(500))
        return [request_out(r) for r in rows]


class AccessListEntry(BaseModel):
    user_id: str
    granted_by: str
    granted_at: datetime


@bp.get("/datasets/<dataset_id>/access")
@endpoint("The dataset's access list (its stewards)", response=list[AccessListEntry],
          tags=["access"])
def access_list(dataset_id: str) -> list[AccessListEntry]:
    with db_of().session() as session:
        dataset = load_dataset(session, dataset_id, caller(), Action.MANAGE_ACCESS)
        rows = session.scalars(sa.select(DatasetAccess).where(
            DatasetAccess.dataset_id == dataset.id).order_by(DatasetAccess.granted_at))
        return [AccessListEntry.model_validate(r, from_attributes=True) for r in rows]
