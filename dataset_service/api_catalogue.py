"""The public catalogue: search published datasets (no sign-in), with facets."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from dataset_service.models import CatalogueGeneration, Dataset, Project
from dataset_service.search import CatalogueQuery, DatasetDoc, SearchBackend, backend_for
from vre.api import PUBLIC, endpoint
from vre.cache import TimedCache
from vre.config import Config, ConfigError
from vre.db import utcnow
from vre.web import config_of, db_of

bp = Blueprint("catalogue_api", __name__, url_prefix="/api/v1")

# Distinct searches a process keeps answers to (each a page of at most 100 short entries).
SEARCH_CACHE_ENTRIES = 2_000


class CatalogueQueryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: str | None = Field(None, max_length=1000, description="words, \"phrases\", -exclusions")
    modality: str | None = Field(None, max_length=16)
    body_part: str | None = Field(None, max_length=64)
    license: str | None = Field(None, max_length=64)
    project: str | None = Field(None, max_length=200)
    sort: Literal["relevance", "newest", "name", "subjects"] = "relevance"
    page: int = Field(1, ge=1, le=100_000)
    per_page: int = Field(20, ge=1, le=100)


class CatalogueEntry(BaseModel):
    id: str
    pid: str
    name: str
    description: str
    version: str
    license_id: str
    keywords: list[str]
    subjects: int
    studies: int
    modalities: list[str]
    body_parts: list[str]


class CataloguePage(BaseModel):
    total: int
    page: int
    per_page: int
    pages: int
    results: list[CatalogueEntry]
    facets: dict[str, dict[str, int]]


def install(app: Flask, config: Config) -> None:
    """Choose the search backend from configuration and hook it into publication."""
    options: dict[str, Any] = {}
    if config.search_backend == "elasticsearch" and config.catalogue_cache_seconds:
        # A kept search must not miss a change its generation counts: each write is
        # searchable before the change's transaction moves the generation on and commits.
        options["refresh"] = "wait_for"
    try:
        backend = backend_for(config.search_backend, config.elasticsearch_url, **options)
    except ValueError as exc:
        raise ConfigError("VRE_ELASTICSEARCH_URL", str(exc)) from None
    ready = PreparedOnce(backend)

    def index(session: Session, dataset: Dataset) -> None:
        index_dataset(ready(), session, dataset)
        catalogue_changed(session)

    def remove(session: Session, dataset: Dataset) -> None:
        ready().remove(session, dataset.id)
        catalogue_changed(session)

    app.extensions["dataset.search"] = ready
    app.extensions["dataset.catalogue_index"] = index
    app.extensions["dataset.catalogue_remove"] = remove
    if config.catalogue_cache_seconds:
        app.extensions["dataset.search_cache"] = TimedCache[bytes](
            config.catalogue_cache_seconds, SEARCH_CACHE_ENTRIES)


class PreparedOnce:
    """The backend, prepared (say, its index created) on first use rather than at start-up,
    so a search cluster that is down does not keep the service from starting."""

    def __init__(self, backend: SearchBackend) -> None:
        self._backend = backend
        self._prepared = False
        self._lock = threading.Lock()

    @property
    def backend(self) -> SearchBackend:
        """The backend as configured, prepared or not."""
        return self._backend

    def __call__(self) -> SearchBackend:
        if not self._prepared:
            with self._lock:
                if not self._prepared:
                    self._backend.prepare()
                    self._prepared = True
        return self._backend


def index_dataset(backend: SearchBackend, session: Session, dataset: Dataset) -> None:
    project = session.get(Project, dataset.project_id)
    backend.index(session, DatasetDoc.from_dataset(dataset, project.title if project else ""))


def catalogue_changed(session: Session) -> None:
    """Move the catalogue's generation on, in the change's transaction: searches cached at
    an older generation are not answered again once it commits. Concurrent changes queue on
    the one row until each commits, so no two share a generation."""
    moved = session.execute(sa.update(CatalogueGeneration).where(CatalogueGeneration.id == 1)
                            .values(generation=CatalogueGeneration.generation + 1,
                                    changed_at=utcnow()))
    if moved.rowcount == 0:  # the row migration 0006 made is gone: start counting again
        session.add(CatalogueGeneration(id=1, generation=1, changed_at=utcnow()))


def catalogue_generation(session: Session) -> tuple[int, datetime] | None:
    """The catalogue's current generation with the time it began (read before searching:
    an answer is then never older than the generation it is kept under; the time tells a
    count started again apart from the old one)."""
    row = session.execute(sa.select(CatalogueGeneration.generation,
                                    CatalogueGeneration.changed_at)
                          .where(CatalogueGeneration.id == 1)).first()
    return (row[0], row[1]) if row else None


@bp.get("/catalogue")
@endpoint("Search the published datasets", query=CatalogueQueryIn, response=CataloguePage,
          roles=PUBLIC, tags=["catalogue"])
def search(query: CatalogueQueryIn) -> Response:
    wanted = CatalogueQuery(
        text=query.q, modality=query.modality, body_part=query.body_part,
        license_id=query.license, project=query.project, sort=query.sort,
        page=query.page, per_page=query.per_page)
    cache: TimedCache[bytes] | None = current_app.extensions.get("dataset.search_cache")
    with db_of().reading() as session:
        if cache is None:
            return _answer(_search(session, wanted))
        key = (catalogue_generation(session), wanted)
        body = cache.get(key)
        if body is None:
            body = _answer(_search(session, wanted)).get_data()
            cache.put(key, body)
    return current_app.response_class(body, mimetype="application/json")


def _answer(page: CataloguePage) -> Response:
    """The page as JSON, kept as it is sent (a kept search costs no serialising again)."""
    return jsonify(page.model_dump(mode="json"))


def _search(session: Session, query: CatalogueQuery) -> CataloguePage:
    """One search, with each hit's catalogue entry from its dataset record."""
    backend: SearchBackend = current_app.extensions["dataset.search"]()
    pid_base = config_of().pid_base
    page = backend.search(session, query)
    rows = {d.id: d for d in session.scalars(sa.select(Dataset).where(
        Dataset.id.in_(page.ids), Dataset.state == "published"))}
    results = []
    for dataset_id in page.ids:
        dataset = rows.get(dataset_id)
        if dataset is None:
            continue
        stats = dataset.statistics or {}
        results.append(CatalogueEntry(
            id=dataset.id, pid=f"{pid_base}/{dataset.id}", name=dataset.name,
            description=dataset.description, version=dataset.version,
            license_id=dataset.license_id, keywords=list(dataset.keywords or []),
            subjects=stats.get("subjects", 0), studies=stats.get("studies", 0),
            modalities=sorted(stats.get("modalities", {})),
            body_parts=sorted(stats.get("body_parts", {}))))
    return CataloguePage(total=page.total, page=page.page, per_page=page.per_page,
                         pages=page.pages, results=results, facets=page.facets)
