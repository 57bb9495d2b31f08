"""The public catalogue: search published datasets (no sign-in), with facets; and the
catalogue's generation, which moves on with every change a public reader could see, so that
answers the same for everyone (a search, a published record) are kept until it moves."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from dataset_service.models import CatalogueGeneration, Dataset, Project
from dataset_service.search import CatalogueQuery, DatasetDoc, SearchBackend, backend_for
from vre.api import PUBLIC, endpoint, to_json
from vre.cache import TimedCache
from vre.config import Config, ConfigError
from vre.db import utcnow
from vre.web import config_of, db_of

bp = Blueprint("catalogue_api", __name__, url_prefix="/api/v1")

# Answers a process keeps, by kind: distinct searches (each a page of at most 100 short
# entries) and published records (a few kilobytes each; a catalogue's worth of them).
PUBLIC_ANSWER_ENTRIES = {"search": 2_000, "record": 20_000}


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


class GenerationOut(BaseModel):
    generation: int = Field(description="moves on with every change a public reader could see")
    since: datetime | None = Field(None, description="when this generation began")


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

    def remove(session: Session, dataset: Dataset) -> None:
        ready().remove(session, dataset.id)

    app.extensions["dataset.search"] = ready
    app.extensions["dataset.catalogue_index"] = index
    app.extensions["dataset.catalogue_remove"] = remove
    # Indexing and removal always come with a change to a public record, in one transaction.
    sa.event.listen(db_of(app).sessions, "before_flush", _public_changes)
    if config.catalogue_cache_seconds:
        app.extensions["dataset.public_answers"] = {
            kind: TimedCache[bytes](config.catalogue_cache_seconds, entries)
            for kind, entries in PUBLIC_ANSWER_ENTRIES.items()}


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


def _public_changes(session: Session, _context: Any, _instances: Any) -> None:
    """Before a flush: a dataset whose record is public, or a project such records name,
    that is added, changed or deleted is a change of the catalogue."""
    def seen(o: object) -> bool:
        return isinstance(o, Project) or (isinstance(o, Dataset) and o.record_is_public)

    if any(seen(o) for o in (*session.new, *session.deleted)) or any(
            seen(o) and session.is_modified(o) for o in session.dirty):
        catalogue_changed(session)


def catalogue_changed(session: Session) -> None:
    """Move the catalogue's generation on, in the change's transaction: searches cached at
    an older generation are not answered again once it commits. Concurrent changes queue on
    the one row until each commits, so no two share a generation."""
    moved = session.execute(sa.update(CatalogueGeneration).where(CatalogueGeneration.id == 1)
                            .values(generation=CatalogueGeneration.generation + 1,
                                    changed_at=utcnow()))
    if moved.rowcount == 0:  # the row migration 0006 made is gone: start counting again
        session.add(CatalogueGeneration(id=1, generation=1, changed_at=utcnow()))


_GENERATION = sa.select(CatalogueGeneration.generation, CatalogueGeneration.changed_at) \
    .where(CatalogueGeneration.id == 1)


def catalogue_generation(session: Session) -> tuple[int, datetime] | None:
    """The catalogue's current generation with the time it began (read before searching:
    an answer is then never older than the generation it is kept under; the time tells a
    count started again apart from the old one)."""
    row = session.connection().execute(_GENERATION).first()  # Core: asked on every read
    return (row[0], row[1]) if row else None


@bp.get("/catalogue")
@endpoint("Search the published datasets", query=CatalogueQueryIn, response=CataloguePage,
          roles=PUBLIC, tags=["catalogue"])
def search(query: CatalogueQueryIn) -> Response:
    wanted = CatalogueQuery(
        text=query.q, modality=query.modality, body_part=query.body_part,
        license_id=query.license, project=query.project, sort=query.sort,
        page=query.page, per_page=query.per_page)
    with db_of().reading() as session:
        return public_answer(session, "search", wanted,
                             lambda: (_search(session, wanted), True))


@bp.get("/catalogue/generation")
@endpoint("The catalogue's generation: what public pages kept by a caller were drawn at",
          response=GenerationOut, roles=PUBLIC, tags=["catalogue"])
def generation() -> GenerationOut:
    with db_of().reading() as session:
        current = catalogue_generation(session)
    return GenerationOut(generation=current[0], since=current[1]) if current else \
        GenerationOut(generation=0)


def public_answer(session: Session, kind: str, key: Hashable,
                  produce: Callable[[], tuple[BaseModel, bool]]) -> Response:
    """An answer the same for every caller, kept as the JSON it is sent as until the
    catalogue's generation moves on, with an ETag naming the generation: a caller that holds
    the answer (or what it made of it) asks with If-None-Match and gets 304 while it holds.
    `produce` gives (answer, whether it may be kept): only what the generation covers may."""
    caches: dict[str, TimedCache[bytes]] | None = \
        current_app.extensions.get("dataset.public_answers")
    if caches is None:
        return to_json(produce()[0])
    full_key = (catalogue_generation(session), key)
    etag = hashlib.blake2b(repr((kind, full_key)).encode(), digest_size=16).hexdigest()
    if request.if_none_match.contains(etag):
        unchanged = current_app.response_class(status=304)
        unchanged.set_etag(etag)
        return unchanged
    body = caches[kind].get(full_key)
    if body is None:
        answer, keep = produce()
        response = to_json(answer)
        if not keep:
            return response
        body = response.get_data()
        caches[kind].put(full_key, body)
    kept = current_app.response_class(body, mimetype="application/json")
    kept.set_etag(etag)
    return kept


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
