"""The dataset service's JSON API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from dataset_service.models import Project, ProjectMember
from vre.api import current_principal, endpoint
from vre.errors import Conflict, Forbidden, NotFound
from vre.tokens import Principal
from vre.web import db_of

bp = Blueprint("dataset_api", __name__, url_prefix="/api/v1")


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$", description="Short unique name.")
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=10_000)
    default_license_id: str | None = Field(None, pattern=r"^[A-Za-z0-9.+-]{1,64}$")
    default_license_url: HttpUrl | None = None
    default_contact_name: str | None = Field(None, min_length=1, max_length=200)
    default_contact_email: str | None = Field(
        None, pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,}$")

    @model_validator(mode="after")
    def _licence_url(self) -> ProjectIn:
        from dataset_service.datasets import KNOWN_LICENSES

        if self.default_license_id and not self.default_license_url and \
                self.default_license_id not in KNOWN_LICENSES:
            raise ValueError(f"default_license_url is needed for {self.default_license_id!r}")
        return self


class ProjectOut(BaseModel):
    id: str
    name: str
    title: str
    description: str
    created_by: str
    created_at: datetime
    default_license_id: str | None
    default_license_url: str | None
    default_contact_name: str | None
    default_contact_email: str | None

    @classmethod
    def of(cls, project: Project) -> ProjectOut:
        return cls.model_validate(project, from_attributes=True)


def may_see_project(session: Any, principal: Principal | None, project_id: str) -> bool:
    """Projects, their names and members are seen by their members, administrators and the
    platform's services; to anyone else a project does not exist."""
    if principal is None:
        return False
    if principal.has_any("admin", "service"):
        return True
    return session.scalar(sa.select(ProjectMember.role).where(
        ProjectMember.project_id == project_id,
        ProjectMember.user_id == principal.subject)) is not None


def find_project(session: Any, name_or_id: str) -> Project:
    """The project by name or id, if the caller may see it; one they may not see answers
    the same 404 as one that does not exist, so that names cannot be probed."""
    project = session.scalar(sa.select(Project).where(
        sa.or_(Project.id == name_or_id, Project.name == name_or_id)))
    if project is None or not may_see_project(session, current_principal(required=False),
                                              project.id):
        raise NotFound(f"no project {name_or_id!r}", field="project")
    return project


def require_project_steward(session: Any, principal: Principal, project_id: str) -> None:
    """Stewards of this project, administrators and platform services may curate its data."""
    if principal.has_any("admin", "service"):
        return
    role = session.scalar(sa.select(ProjectMember.role).where(
        ProjectMember.project_id == project_id, ProjectMember.user_id == principal.subject))
    if role != "steward":
        raise Forbidden("only the project's stewards may do this", code="not_a_steward")


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
                          created_by=principal.subject,
                          default_license_id=body.default_license_id,
                          default_license_url=str(body.default_license_url)
                          if body.default_license_url else None,
                          default_contact_name=body.default_contact_name,
                          default_contact_email=body.default_contact_email)
        session.add(project)
        session.flush()
        if not principal.is_service:
            # Whoever creates a project stewards it.
            session.add(ProjectMember(project_id=project.id, user_id=principal.subject,
                                      role="steward"))
        return ProjectOut.of(project)


@bp.get("/projects")
@endpoint("The projects the caller is a member of (every project, for administrators)",
          response=list[ProjectOut], tags=["projects"])
def list_projects() -> list[ProjectOut]:
    principal = current_principal()
    assert principal is not None
    stmt = sa.select(Project).order_by(Project.name)
    if not principal.has_any("admin", "service"):
        stmt = stmt.where(Project.id.in_(sa.select(ProjectMember.project_id).where(
            ProjectMember.user_id == principal.subject)))
    with db_of().session() as session:
        return [ProjectOut.of(p) for p in session.scalars(stmt)]


@bp.get("/projects/<project_id>")
@endpoint("One project (its members and administrators)", response=ProjectOut,
          tags=["projects"])
def get_project(project_id: str) -> ProjectOut:
    with db_of().session() as session:
        project = session.get(Project, project_id)
        if project is None or not may_see_project(session, current_principal(), project.id):
            raise NotFound(f"no project with id {project_id!r}", field="project_id")
        return ProjectOut.of(project)


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=128)
    role: Literal["steward", "researcher"]


class MemberOut(BaseModel):
    project_id: str
    user_id: str
    role: str


@bp.get("/projects/<project_id>/members")
@endpoint("Members of a project and their roles (its members and administrators)",
          response=list[MemberOut], tags=["projects"])
def list_members(project_id: str) -> list[MemberOut]:
    with db_of().session() as session:
        project = find_project(session, project_id)
        rows = session.scalars(sa.select(ProjectMember).where(
            ProjectMember.project_id == project.id).order_by(ProjectMember.user_id))
        return [MemberOut.model_validate(m, from_attributes=True) for m in rows]


@bp.put("/projects/<project_id>/members")
@endpoint("Add a member to a project, or change their role", body=MemberIn,
          response=MemberOut, roles=["steward", "admin", "service"], tags=["projects"])
def put_member(project_id: str, body: MemberIn) -> MemberOut:
    principal = current_principal()
    assert principal is not None
    with db_of().session() as session:
        project = find_project(session, project_id)
        require_project_steward(session, principal, project.id)
        member = session.get(ProjectMember, (project.id, body.user_id))
        if member is None:
            member = ProjectMember(project_id=project.id, user_id=body.user_id, role=body.role)
            session.add(member)
        member.role = body.role
        session.flush()
        return MemberOut.model_validate(member, from_attributes=True)


@bp.delete("/projects/<project_id>/members/<user_id>")
@endpoint("Remove a member from a project", response=MemberOut,
          roles=["steward", "admin", "service"], tags=["projects"])
def delete_member(project_id: str, user_id: str) -> MemberOut:
    principal = current_principal()
    assert principal is not None
    with db_of().session() as session:
        project = find_project(session, project_id)
        require_project_steward(session, principal, project.id)
        member = session.get(ProjectMember, (project.id, user_id))
        if member is None:
            raise NotFound(f"{user_id!r} is not a member of {project.name!r}", field="user_id")
        out = MemberOut.model_validate(member, from_attributes=True)
        session.delete(member)
        return out
