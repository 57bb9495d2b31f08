"""Catalogue search in Elasticsearch 8 (the cluster deployment): one index of catalogue
documents, searched with a bool query, facets from terms aggregations.

The request bodies and the reading of responses are pure functions (`index_body`,
`document_body`, `search_body`, `read_page`); `ElasticsearchSearch` only moves them
through the official client. Text fields use Elasticsearch's built-in `english` analyzer
(standard tokenizer, lowercase, English stop words, Porter stemmer), the counterpart of the
database backend's English configuration, so one query finds the same datasets on both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from elasticsearch import ApiError, BadRequestError, Elasticsearch, TransportError
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from dataset_service.search import (
    FACET_VALUES_LIMIT,
    FACETS,
    CatalogueQuery,
    DatasetDoc,
    SearchBackend,
    SearchPage,
    TextTerm,
    parse_text,
)

log = logging.getLogger(__name__)

TEXT_FIELDS = ["name^3", "keywords^2", "description"]
# Which document field each facet (and its filter) reads.
FACET_FIELDS = {"modality": "modalities", "body_part": "body_parts",
                "license": "license_id", "project": "project"}
# Elasticsearch refuses from + size beyond index.max_result_window (10,000 by default).
MAX_RESULT_WINDOW = 10_000

SETTINGS: dict[str, Any] = {
    # One shard: the catalogue is small, and terms aggregations on one shard are exact.
    "number_of_shards": 1,
    "analysis": {"normalizer": {"casefold": {"type": "custom", "filter": ["lowercase"]}}},
}
MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "id": {"type": "keyword"},
        "name": {"type": "text", "analyzer": "english",
                 "fields": {"sort": {"type": "keyword", "normalizer": "casefold"}}},
        "keywords": {"type": "text", "analyzer": "english"},
        "description": {"type": "text", "analyzer": "english"},
        "project": {"type": "keyword"},
        "license_id": {"type": "keyword"},
        "modalities": {"type": "keyword"},
        "body_parts": {"type": "keyword"},
        "published_at": {"type": "date"},
        "subjects": {"type": "integer"},
        "studies": {"type": "integer"},
    },
}


def index_body() -> dict[str, Any]:
    """Settings and mappings of the catalogue index."""
    return {"settings": SETTINGS, "mappings": MAPPINGS}


def document_body(doc: DatasetDoc) -> dict[str, Any]:
    """The Elasticsearch document of one catalogue entry."""
    return {
        "id": doc.id, "name": doc.name, "description": doc.description,
        "keywords": list(doc.keywords), "project": doc.project, "license_id": doc.license_id,
        "modalities": list(doc.modalities), "body_parts": list(doc.body_parts),
        "published_at": doc.published_at.isoformat(), "subjects": doc.subjects,
        "studies": doc.studies,
    }


def text_query(branches: list[list[TextTerm]]) -> dict[str, Any]:
    """The parsed search text as a query: per alternative, single words in one
    cross_fields multi_match that needs every word in some field, each phrase (or word of
    several tokens) a phrase multi_match, exclusions in must_not."""
    def alternative(terms: list[TextTerm]) -> dict[str, Any]:
        words = [t.tokens[0] for t in terms if not t.negated and len(t.tokens) == 1]
        must: list[dict[str, Any]] = []
        if words:
            must.append({"multi_match": {"query": " ".join(words), "fields": TEXT_FIELDS,
                                         "type": "cross_fields", "operator": "and"}})
        must += [_phrase(t) for t in terms if not t.negated and len(t.tokens) > 1]
        must_not = [_phrase(t) for t in terms if t.negated]
        return {"bool": {k: v for k, v in (("must", must), ("must_not", must_not)) if v}}

    queries = [alternative(terms) for terms in branches]
    if len(queries) == 1:
        return queries[0]
    return {"bool": {"should": queries, "minimum_should_match": 1}}


def _phrase(term: TextTerm) -> dict[str, Any]:
    return {"multi_match": {"query": " ".join(term.tokens), "fields": TEXT_FIELDS,
                            "type": "phrase"}}


def search_body(query: CatalogueQuery) -> dict[str, Any] | None:
    """The search request (as keyword arguments of `Elasticsearch.search`) for a catalogue
    query; None when the text has nothing to search for (nothing can match)."""
    bool_query: dict[str, Any] = {}
    if query.text is not None:
        branches = parse_text(query.text)
        if not branches:
            return None
        bool_query["must"] = [text_query(branches)]
    filters = [{"term": {FACET_FIELDS[facet]: value}}
               for facet, value in query.filters().items()]
    if filters:
        bool_query["filter"] = filters

    ties: list[dict[str, Any]] = [{"published_at": "desc"}, {"id": "desc"}]
    sort = query.effective_sort
    order: list[Any] = {
        "relevance": ["_score"], "newest": [], "name": [{"name.sort": "asc"}],
        "subjects": [{"subjects": "desc"}],
    }[sort] + ties

    # Past the result window there are no ids to show, but total and facets still count.
    within = query.offset + query.per_page <= MAX_RESULT_WINDOW
    return {
        "query": {"bool": bool_query},
        "sort": order,
        "from_": query.offset if within else 0,
        "size": query.per_page if within else 0,
        "track_total_hits": True,
        "source": False,
        "aggs": {facet: {"terms": {"field": FACET_FIELDS[facet], "size": FACET_VALUES_LIMIT}}
                 for facet in FACETS},
    }


def read_page(response: Mapping[str, Any], query: CatalogueQuery) -> SearchPage:
    """A search response as a SearchPage: hit ids in order, exact total, facet buckets."""
    hits = response["hits"]
    aggregations = response.get("aggregations", {})
    facets = {facet: {bucket["key"]: bucket["doc_count"]
                      for bucket in aggregations.get(facet, {}).get("buckets", [])}
              for facet in FACETS}
    return SearchPage(ids=[hit["_id"] for hit in hits["hits"]], total=hits["total"]["value"],
                      page=query.page, per_page=query.per_page, facets=facets)


class ElasticsearchSearch(SearchBackend):
    """The catalogue as an Elasticsearch index (default name "catalogue").

    Elasticsearch is outside the database transaction, so `index` and `remove` hold their
    write until the caller's session commits, and drop it if the session rolls back: a
    document is never visible for a change that did not happen. A write that fails after
    the commit is logged (the database stays the truth; indexing the dataset again mends
    it). `refresh`, when set, goes with each write ("wait_for": visible once it returns).
    A savepoint rolled back takes the writes made inside it. Pages past the 10,000th match
    (Elasticsearch's result window) have no ids, but total and facets still count.
    """

    def __init__(self, client: Elasticsearch, index_name: str = "catalogue",
                 refresh: bool | str = False) -> None:
        self.client = client
        self.index_name = index_name
        self.refresh = refresh
        self._pending_key = f"vre.search.elasticsearch.{id(self)}"

    @classmethod
    def connect(cls, url: str, index_name: str = "catalogue", refresh: bool | str = False,
                **client_options: Any) -> ElasticsearchSearch:
        """A backend on the cluster at `url`; `client_options` go to `Elasticsearch`."""
        return cls(Elasticsearch(url, **client_options), index_name, refresh)

    def prepare(self) -> None:
        """Create the catalogue index with its mappings unless it exists."""
        if self.client.indices.exists(index=self.index_name):
            return
        try:
            self.client.indices.create(index=self.index_name, **index_body())
        except BadRequestError as exc:  # another process created it first
            if exc.error != "resource_already_exists_exception":
                raise

    def index(self, session: Session, dataset: DatasetDoc) -> None:
        body = document_body(dataset)
        self._after_commit(session, f"index {dataset.id}", lambda: self.client.index(
            index=self.index_name, id=dataset.id, document=body, **self._refresh()))

    def remove(self, session: Session, dataset_id: str) -> None:
        # Removing what is not there is not an error: 404 is an answer, not a failure.
        self._after_commit(session, f"remove {dataset_id}", lambda: self.client.options(
            ignore_status=404).delete(index=self.index_name, id=dataset_id,
                                      **self._refresh()))

    def search(self, session: Session, query: CatalogueQuery) -> SearchPage:
        body = search_body(query)
        if body is None:
            return SearchPage(ids=[], total=0, page=query.page, per_page=query.per_page,
                              facets={facet: {} for facet in FACETS})
        response = self.client.search(index=self.index_name, **body)
        return read_page(response.body, query)

    # -- writes held until the caller's transaction commits --------------------------------

    def _refresh(self) -> dict[str, Any]:
        return {"refresh": self.refresh} if self.refresh else {}

    def _after_commit(self, session: Session, what: str, write: Callable[[], object]) -> None:
        session.connection()  # begin the caller's transaction if it has not: its end decides
        pending = session.info.get(self._pending_key)
        if pending is None:
            pending = session.info[self._pending_key] = []
            event.listen(session, "after_commit", self._run_pending)
            event.listen(session, "after_soft_rollback", self._drop_rolled_back)
            event.listen(session, "after_transaction_end", self._drop_pending)
        # Remember the (innermost) transaction, so a savepoint rolled back takes its writes.
        transaction = session.get_nested_transaction() or session.get_transaction()
        pending.append(_Write(transaction, what, write))

    def _run_pending(self, session: Session) -> None:
        if session.in_nested_transaction():  # a savepoint was released, not the transaction
            return
        pending: list[_Write] = session.info.get(self._pending_key, [])
        while pending:
            item = pending.pop(0)
            try:
                item.write()
            except (ApiError, TransportError) as exc:
                log.error("catalogue index %s: %s failed after commit: %s",
                          self.index_name, item.what, exc)

    def _drop_rolled_back(self, session: Session, previous: SessionTransaction) -> None:
        pending: list[_Write] = session.info.get(self._pending_key, [])
        pending[:] = [item for item in pending if not item.made_in(previous)]

    def _drop_pending(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # the transaction ended; anything left rolled back
            session.info.get(self._pending_key, []).clear()


@dataclass(frozen=True)
class _Write:
    """A write to the index, held until the transaction it was made in commits."""

    transaction: SessionTransaction | None
    what: str
    write: Callable[[], object]

    def made_in(self, transaction: SessionTransaction) -> bool:
        """Whether this write was made in `transaction` or in a savepoint inside it."""
        current = self.transaction
        while current is not None:
            if current is transaction:
                return True
            current = current.parent
        return False
