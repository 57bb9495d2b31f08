"""The dataset service's JSON API."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from dataset_service.models import Project
from vre.api import current_principal, endpoint
from vre.errors import Conflict, NotFound
from vre.web import db_of

bp = Blueprint("dataset_api", __name__, url_prefix="/api/v1")


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$", description="Short unique name.")
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=10_000)


class ProjectOut(BaseModel):
    id: str
    name: str
    title: str
    description: str
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, project: Project) -> ProjectOut:
        return cls.model_validate(project, from_attributes=True)


@bp.post("/projects")
@endpoint("Create a project", body=ProjectIn, response=ProjectOut, status=201,
          roles=["steward", "admin"], tags=["projects"])
def create_project(body: ProjectIn) -> ProjectOut:
    principal = current_principal()
    assert principal is not None
    with db_of().session() as session:
        if session.scalar(sa.select(Project.id).where(Project.name == body.name)):
            raise Conflict(f"a project named {body.name!r} exists", code="project_exists",
                           field="name")
        project = Project(name=body.name, title=body.title, description=body.description,
                          created_by=principal.subject)
        session.add(project)
        session.flush()
        return ProjectOut.of(project)


@bp.get("/projects")
@endpoint("List projects", response=ProjectOut, tags=["projects"])
def list_projects() -> list[ProjectOut]:
    with db_of().session() as session:
        return [ProjectOut.of(p) for p in
                session.scalars(sa.select(Project).order_by(Project.name))]


@bp.get("/projects/<project_id>")
@endpoint("One project", response=ProjectOut, tags=["projects"])
def get_project(project_id: str) -> ProjectOut:
    with db_of().session() as session:
        project = session.get(Project, project_id)
        if project is None:
            raise NotFound(f"no project with id {project_id!r}", field="project_id")
        return ProjectOut.of(project)
