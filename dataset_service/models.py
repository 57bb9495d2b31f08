"""The dataset service's tables."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from vre.db import NAMING_CONVENTION, UtcDateTime, utcnow
from vre.outbox import outbox_table


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


# The traces of this service's actions until the tracer acknowledges them (vre.outbox).
trace_outbox = outbox_table(Base.metadata)


class Project(Base):
    """A research project: groups studies and datasets, and the people who may use them."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    created_by: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # What a new dataset of this project gets unless its steward says otherwise.
    default_license_id: Mapped[str | None] = mapped_column(sa.String(64))
    default_license_url: Mapped[str | None] = mapped_column(sa.String(300))
    default_contact_name: Mapped[str | None] = mapped_column(sa.String(200))
    default_contact_email: Mapped[str | None] = mapped_column(sa.String(254))


class ProjectMember(Base):
    """A person's role in a project: stewards curate its data, researchers may use it."""

    __tablename__ = "project_members"
    project_id: Mapped[str] = mapped_column(sa.ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(16))


class Subject(Base):
    """A pseudonymised person, with the clinical data that came with their images."""

    __tablename__ = "subjects"
    __table_args__ = (sa.UniqueConstraint("project_id", "pseudonym"),)
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    project_id: Mapped[str] = mapped_column(sa.ForeignKey("projects.id"), index=True)
    pseudonym: Mapped[str] = mapped_column(sa.String(64))
    sex: Mapped[str | None] = mapped_column(sa.String(1))
    age: Mapped[int | None] = mapped_column(sa.Integer)
    diagnosis: Mapped[str | None] = mapped_column(sa.String(200))
    clinical: Mapped[dict] = mapped_column(sa.JSON, default=dict)


class Study(Base):
    """One imaging study, accepted whole into the repository."""

    __tablename__ = "studies"
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    study_uid: Mapped[str] = mapped_column(sa.String(64), unique=True)
    subject_id: Mapped[str] = mapped_column(sa.ForeignKey("subjects.id"), index=True)
    project_id: Mapped[str] = mapped_column(sa.ForeignKey("projects.id"), index=True)
    study_date: Mapped[date | None] = mapped_column(sa.Date)
    description: Mapped[str] = mapped_column(sa.String(200), default="")
    modalities: Mapped[str] = mapped_column(sa.String(64), default="")  # "CT,MR"
    body_parts: Mapped[str] = mapped_column(sa.String(200), default="")
    series_count: Mapped[int] = mapped_column(sa.Integer)
    instance_count: Mapped[int] = mapped_column(sa.Integer)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    content_hash: Mapped[str] = mapped_column(sa.String(71))
    # The subject's sex and age in years as the study's headers gave them: a later study of
    # the same pseudonym is checked against them (a different person is not merged in).
    patient_sex: Mapped[str | None] = mapped_column(sa.String(1))
    patient_age: Mapped[int | None] = mapped_column(sa.Integer)
    ingest_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    ingested_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Series(Base):
    """One series of a study, with the DICOM metadata researchers search and read."""

    __tablename__ = "series"
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    series_uid: Mapped[str] = mapped_column(sa.String(64), unique=True)
    study_id: Mapped[str] = mapped_column(sa.ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(sa.String(16), index=True)
    body_part: Mapped[str] = mapped_column(sa.String(64), default="", index=True)
    manufacturer: Mapped[str] = mapped_column(sa.String(64), default="")
    model: Mapped[str] = mapped_column(sa.String(64), default="")
    description: Mapped[str] = mapped_column(sa.String(200), default="")
    number: Mapped[int | None] = mapped_column(sa.Integer)
    instance_count: Mapped[int] = mapped_column(sa.Integer)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    rows: Mapped[int | None] = mapped_column(sa.Integer)
    columns: Mapped[int | None] = mapped_column(sa.Integer)
    slice_thickness: Mapped[float | None] = mapped_column(sa.Float)
    slice_spacing: Mapped[float | None] = mapped_column(sa.Float)
    pixel_spacing: Mapped[str | None] = mapped_column(sa.String(64))


class Instance(Base):
    """One DICOM file: where its bytes are is derived from its SHA-256, never shown."""

    __tablename__ = "instances"
    sop_uid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    series_id: Mapped[str] = mapped_column(sa.ForeignKey("series.id"), index=True)
    sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    number: Mapped[int | None] = mapped_column(sa.Integer)


class IngestRun(Base):
    """One ingestion of a folder: what came in, what was refused and why."""

    __tablename__ = "ingest_runs"
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    project_id: Mapped[str] = mapped_column(sa.ForeignKey("projects.id"))
    source: Mapped[str] = mapped_column(sa.Text)
    started_by: Mapped[str] = mapped_column(sa.String(128))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(sa.String(16), default="running")
    counts: Mapped[dict] = mapped_column(sa.JSON, default=dict)


class QuarantineEntry(Base):
    """A file (or a whole study) that was refused, with the stable reason code."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    ingest_id: Mapped[str] = mapped_column(sa.ForeignKey("ingest_runs.id"), index=True)
    path: Mapped[str] = mapped_column(sa.Text)
    study_uid: Mapped[str | None] = mapped_column(sa.String(64))
    reason: Mapped[str] = mapped_column(sa.String(32))
    message: Mapped[str] = mapped_column(sa.Text)


class Dataset(Base):
    """A versioned, citable selection of studies; its contents are fixed once released."""

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    project_id: Mapped[str] = mapped_column(sa.ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    version: Mapped[str] = mapped_column(sa.String(32), default="1.0")
    state: Mapped[str] = mapped_column(sa.String(16), default="draft", index=True)
    doi: Mapped[str | None] = mapped_column(sa.String(200))
    license_id: Mapped[str] = mapped_column(sa.String(64))
    license_url: Mapped[str] = mapped_column(sa.String(300))
    contact_name: Mapped[str] = mapped_column(sa.String(200))
    contact_email: Mapped[str] = mapped_column(sa.String(254))
    authors: Mapped[list] = mapped_column(sa.JSON, default=list)
    keywords: Mapped[list] = mapped_column(sa.JSON, default=list)
    purpose: Mapped[str] = mapped_column(sa.Text, default="")
    provenance: Mapped[str] = mapped_column(sa.Text, default="")
    public_use: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    content_hash: Mapped[str] = mapped_column(sa.String(71))
    statistics: Mapped[dict] = mapped_column(sa.JSON, default=dict)
    created_by: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    modified_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    invalidated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    invalidation_reason: Mapped[str | None] = mapped_column(sa.Text)
    previous_id: Mapped[str | None] = mapped_column(sa.String(36))
    next_id: Mapped[str | None] = mapped_column(sa.String(36))

    @property
    def record_is_public(self) -> bool:
        """Published, or published once and invalidated since: anyone may read its record
        (a published PID keeps resolving, with the reason, so citations never dangle)."""
        return self.state == "published" or (
            self.state == "invalidated" and self.published_at is not None)


class DatasetStudy(Base):
    """Which studies a dataset holds."""

    __tablename__ = "dataset_studies"
    dataset_id: Mapped[str] = mapped_column(sa.ForeignKey("datasets.id"), primary_key=True)
    study_id: Mapped[str] = mapped_column(sa.ForeignKey("studies.id"), primary_key=True,
                                          index=True)


class DatasetAccess(Base):
    """A user a steward put on a dataset's access list."""

    __tablename__ = "dataset_access"
    dataset_id: Mapped[str] = mapped_column(sa.ForeignKey("datasets.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    granted_by: Mapped[str] = mapped_column(sa.String(128))
    granted_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AccessRequest(Base):
    """A researcher asking to use a dataset, with a purpose; a steward decides."""

    __tablename__ = "access_requests"
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    dataset_id: Mapped[str] = mapped_column(sa.ForeignKey("datasets.id"), index=True)
    user_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    purpose: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[str] = mapped_column(sa.String(16), default="pending")
    decided_by: Mapped[str | None] = mapped_column(sa.String(128))
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    decision_note: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Grant(Base):
    """Data mounted for one workload (desktop or job) on behalf of a user."""

    __tablename__ = "grants"
    __table_args__ = (
        # The open grants in the order made: the compute agent reads them every few seconds,
        # while the ended ones (nearly all, on a site in use) stay for the record.
        sa.Index("ix_grants_open", "created_at", postgresql_where=sa.text("ended_at IS NULL"),
                 sqlite_where=sa.text("ended_at IS NULL")),
    )
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    user_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    workload_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    purpose: Mapped[str] = mapped_column(sa.String(16))
    dataset_ids: Mapped[list] = mapped_column(sa.JSON)
    tool: Mapped[str | None] = mapped_column(sa.String(128))
    image: Mapped[str | None] = mapped_column(sa.String(256))
    flavor: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class RevokedUser(Base):
    """A user whose access is withdrawn: every later grant is refused."""

    __tablename__ = "revoked_users"
    user_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    revoked_by: Mapped[str] = mapped_column(sa.String(128))
    revoked_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(sa.Text, default="")


# -- the public catalogue, as the database search backend (dataset_service.search.database)
# reads and writes it; declared here with every other table, so the models import no search.

class SearchVector(sa.types.TypeDecorator[str]):
    """The weighted document: `tsvector` on PostgreSQL; on SQLite an unused TEXT column
    (always NULL; FTS5 holds the text there), declared so one model fits both."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TSVECTOR())
        return dialect.type_descriptor(sa.Text())


class FacetValues(sa.types.TypeDecorator[list[str]]):
    """The entry's facet values as "facet=value" strings: `text[]` on PostgreSQL, where a
    search counts facets by unnesting its matches' arrays (no join); JSON on SQLite."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(sa.Text()))
        return dialect.type_descriptor(sa.JSON())


class CatalogueEntry(Base):
    """One published dataset as the catalogue searches and sorts it."""

    __tablename__ = "catalogue"
    __table_args__ = (
        # GIN for @@ on PostgreSQL; on SQLite the column is always NULL, so the partial
        # index there is empty and costs nothing.
        sa.Index("ix_catalogue_document", "document", postgresql_using="gin",
                 sqlite_where=sa.text("document IS NOT NULL")),
        # One index per sort, in the sort's own order (ties: newest, then id).
        sa.Index("ix_catalogue_published_at", "published_at", "dataset_id"),
        sa.Index("ix_catalogue_subjects", "subjects", "published_at", "dataset_id"),
        sa.Index("ix_catalogue_sort_name", "sort_name"),
    )

    dataset_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    sort_name: Mapped[str] = mapped_column(sa.String(200))  # casefolded name
    description: Mapped[str] = mapped_column(sa.Text)
    keywords: Mapped[list] = mapped_column(sa.JSON)
    project: Mapped[str] = mapped_column(sa.String(200))
    license_id: Mapped[str] = mapped_column(sa.String(64))
    published_at: Mapped[datetime] = mapped_column(UtcDateTime)
    subjects: Mapped[int] = mapped_column(sa.Integer)
    studies: Mapped[int] = mapped_column(sa.Integer)
    document: Mapped[str | None] = mapped_column(SearchVector)
    facet_values: Mapped[list[str] | None] = mapped_column(FacetValues)


class CatalogueFacet(Base):
    """One value a catalogue entry is filtered and counted under (facet: modality,
    body_part, license or project)."""

    __tablename__ = "catalogue_facets"
    # (facet, value) finds the datasets of a filter; dataset_id in it makes it covering.
    __table_args__ = (
        sa.Index("ix_catalogue_facets_facet_value", "facet", "value", "dataset_id"),
    )

    dataset_id: Mapped[str] = mapped_column(sa.ForeignKey("catalogue.dataset_id"),
                                            primary_key=True)
    facet: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(200), primary_key=True)


class CatalogueGeneration(Base):
    """How often the public catalogue has changed (one row): every publication, edit of a
    published dataset and withdrawal adds one, in the change's own transaction, so a cached
    search is known to be current by the generation it was made at, on any replica."""

    __tablename__ = "catalogue_generation"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)  # always 1
    generation: Mapped[int] = mapped_column(sa.BigInteger)
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime)
