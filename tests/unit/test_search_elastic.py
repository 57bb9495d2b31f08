"""The Elasticsearch catalogue backend against the client's contract.

No Elasticsearch server installs on the machines these tests run on, so the official
`elasticsearch` 8 client runs for real down to its HTTP node, and the node is replaced by
one that records each request (method, path, JSON body) and answers with a recorded
Elasticsearch 8 response. The tests assert the exact requests the backend sends and read a
realistic search response (hits sorted by score, aggregations) into a SearchPage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa
from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
from elasticsearch import BadRequestError, Elasticsearch
from sqlalchemy.orm import Session

from dataset_service.search import CatalogueQuery, DatasetDoc, backend_for
from dataset_service.search.elastic import (
    MAPPINGS,
    ElasticsearchSearch,
    read_page,
    search_body,
)

Reply = tuple[int, dict[str, Any] | None]

# A response of Elasticsearch 8.13 to the request built in test_search_sends_the_bool_query
# (text "lung screening", CT, page 1 of 3): sorted by _score, so hits carry sort values and
# a null _score; dates sort as epoch milliseconds; _source was turned off.
RECORDED_SEARCH_RESPONSE = json.loads("""
{
  "took": 4,
  "timed_out": false,
  "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
  "hits": {
    "total": {"value": 7, "relation": "eq"},
    "max_score": null,
    "hits": [
      {"_index": "catalogue", "_id": "ds-04", "_score": null,
       "sort": [9.184417, 1706745600000, "ds-04"]},
      {"_index": "catalogue", "_id": "ds-19", "_score": null,
       "sort": [4.0211315, 1717200000000, "ds-19"]},
      {"_index": "catalogue", "_id": "ds-22", "_score": null,
       "sort": [4.0211315, 1709251200000, "ds-22"]}
    ]
  },
  "aggregations": {
    "modality": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                 "buckets": [{"key": "CT", "doc_count": 7}, {"key": "PT", "doc_count": 1}]},
    "body_part": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                  "buckets": [{"key": "CHEST", "doc_count": 6},
                              {"key": "ABDOMEN", "doc_count": 1}]},
    "license": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                "buckets": [{"key": "CC-BY-4.0", "doc_count": 5},
                            {"key": "CC0-1.0", "doc_count": 2}]},
    "project": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                "buckets": [{"key": "thorax", "doc_count": 6}, {"key": "onco", "doc_count": 1}]}
  }
}
""")
AGGS = {
    "modality": {"terms": {"field": "modalities", "size": 100}},
    "body_part": {"terms": {"field": "body_parts", "size": 100}},
    "license": {"terms": {"field": "license_id", "size": 100}},
    "project": {"terms": {"field": "project", "size": 100}},
}
FIELDS = ["name^3", "keywords^2", "description"]
TIES = [{"published_at": "desc"}, {"id": "desc"}]
DOC = DatasetDoc(id="ds-04", name="Lung Nodule Screening", keywords=("lung", "nodules"),
                 description="Low-dose chest CT.", project="thorax", license_id="CC-BY-4.0",
                 modalities=("CT",), body_parts=("CHEST",),
                 published_at=datetime(2024, 2, 1, tzinfo=UTC), subjects=800, studies=1600)


class NodeResponse(NamedTuple):
    """What a node answers the transport (elastic_transport's NodeApiResponse shape)."""

    meta: ApiResponseMeta
    body: bytes


class Cluster:
    """What the fake node saw, and what it answers: replies are taken in order."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.replies: list[Reply] = []

    def answer(self, method: str, target: str, body: bytes | None) -> Reply:
        self.requests.append((method, target, json.loads(body) if body else None))
        return self.replies.pop(0)


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Elasticsearch]:
    """The real client, whose only node is the recording one."""

    class RecordingNode(BaseNode):
        _CLIENT_META_HTTP_CLIENT = ("rec", "1.0")

        def perform_request(self, method: str, target: str, body: bytes | None = None,
                            headers: Any = None, request_timeout: Any = None
                            ) -> NodeResponse:
            status, payload = cluster.answer(method, target, body)
            meta = ApiResponseMeta(
                status=status, http_version="1.1", duration=0.0, node=self.config,
                headers=HttpHeaders({"content-type": "application/vnd.elasticsearch+json;"
                                     "compatible-with=8", "x-elastic-product": "Elasticsearch"}))
            return NodeResponse(meta, json.dumps(payload).encode() if payload else b"")

        def close(self) -> None:
            pass

    es = Elasticsearch("http://es.test:9200", node_class=RecordingNode, max_retries=0)
    yield es
    es.close()


@pytest.fixture
def backend(client: Elasticsearch) -> ElasticsearchSearch:
    return ElasticsearchSearch(client, "catalogue")


@pytest.fixture
def session() -> Iterator[Session]:
    """A database session, for the transaction the backend's writes wait on."""
    engine = sa.create_engine("sqlite://")
    with Session(engine) as s:
        yield s
    engine.dispose()


def _error(kind: str, status: int = 400) -> Reply:
    return status, {"error": {"type": kind, "reason": kind}, "status": status}


# -- the index ------------------------------------------------------------------------------


def test_prepare_creates_the_index_with_its_mappings(backend: ElasticsearchSearch,
                                                     cluster: Cluster) -> None:
    cluster.replies = [(404, None), (200, {"acknowledged": True, "index": "catalogue"})]
    backend.prepare()
    (head, put) = cluster.requests
    assert head == ("HEAD", "/catalogue", None)
    assert put[:2] == ("PUT", "/catalogue")
    assert put[2]["mappings"] == MAPPINGS
    assert put[2]["settings"]["number_of_shards"] == 1
    properties = MAPPINGS["properties"]
    for field in ("name", "keywords", "description"):
        assert properties[field] | {"fields": None} == {
            "type": "text", "analyzer": "english", "fields": None}
    for field in ("id", "project", "license_id", "modalities", "body_parts"):
        assert properties[field] == {"type": "keyword"}
    assert properties["name"]["fields"]["sort"]["type"] == "keyword"


def test_prepare_leaves_an_existing_index_alone(backend: ElasticsearchSearch,
                                                cluster: Cluster) -> None:
    cluster.replies = [(200, None)]
    backend.prepare()
    assert cluster.requests == [("HEAD", "/catalogue", None)]
    cluster.replies = [(404, None), _error("resource_already_exists_exception")]
    backend.prepare()  # another process was first: fine
    cluster.replies = [(404, None), _error("mapper_parsing_exception")]
    with pytest.raises(BadRequestError):
        backend.prepare()


# -- writes wait for the transaction ------------------------------------------------------


def test_index_is_written_when_the_transaction_commits(backend: ElasticsearchSearch,
                                                       cluster: Cluster,
                                                       session: Session) -> None:
    backend.index(session, DOC)
    assert cluster.requests == []
    cluster.replies = [(201, {"_index": "catalogue", "_id": "ds-04", "result": "created"})]
    session.commit()
    assert cluster.requests == [("PUT", "/catalogue/_doc/ds-04", {
        "id": "ds-04", "name": "Lung Nodule Screening", "description": "Low-dose chest CT.",
        "keywords": ["lung", "nodules"], "project": "thorax", "license_id": "CC-BY-4.0",
        "modalities": ["CT"], "body_parts": ["CHEST"],
        "published_at": "2024-02-01T00:00:00+00:00", "subjects": 800, "studies": 1600,
    })]


def test_writes_of_a_rolled_back_transaction_are_never_sent(backend: ElasticsearchSearch,
                                                            cluster: Cluster,
                                                            session: Session) -> None:
    backend.index(session, DOC)
    backend.remove(session, "ds-05")
    session.rollback()
    session.commit()  # a later, empty transaction sends nothing either
    assert cluster.requests == []


def test_a_rolled_back_savepoint_takes_its_writes(backend: ElasticsearchSearch,
                                                  cluster: Cluster, session: Session) -> None:
    backend.remove(session, "ds-01")
    savepoint = session.begin_nested()
    backend.remove(session, "ds-02")
    savepoint.rollback()
    with session.begin_nested():
        backend.remove(session, "ds-03")
    assert cluster.requests == []  # a released savepoint is not a commit
    cluster.replies = [(200, {"result": "deleted"})] * 2
    session.commit()
    assert [target for _, target, _ in cluster.requests] == [
        "/catalogue/_doc/ds-01", "/catalogue/_doc/ds-03"]


def test_remove_sends_a_delete_and_a_missing_document_is_fine(
        backend: ElasticsearchSearch, cluster: Cluster, session: Session) -> None:
    backend.remove(session, "ds-04")
    cluster.replies = [(404, {"_index": "catalogue", "_id": "ds-04", "result": "not_found"})]
    session.commit()
    assert cluster.requests == [("DELETE", "/catalogue/_doc/ds-04", None)]


def test_refresh_goes_with_each_write_when_asked(client: Elasticsearch, cluster: Cluster,
                                                 session: Session) -> None:
    backend = ElasticsearchSearch(client, "catalogue", refresh="wait_for")
    backend.index(session, DOC)
    backend.remove(session, "ds-09")
    cluster.replies = [(200, {"result": "updated"}), (200, {"result": "deleted"})]
    session.commit()
    assert [target for _, target, _ in cluster.requests] == [
        "/catalogue/_doc/ds-04?refresh=wait_for", "/catalogue/_doc/ds-09?refresh=wait_for"]


def test_a_write_failing_after_commit_is_logged_not_raised(
        backend: ElasticsearchSearch, cluster: Cluster, session: Session,
        caplog: pytest.LogCaptureFixture) -> None:
    backend.index(session, DOC)
    cluster.replies = [_error("cluster_block_exception", 500)]
    with caplog.at_level(logging.ERROR, "dataset_service.search.elastic"):
        session.commit()
    assert "index ds-04 failed after commit" in caplog.text


# -- search -----------------------------------------------------------------------------------


def test_search_sends_the_bool_query_and_reads_the_response(
        backend: ElasticsearchSearch, cluster: Cluster, session: Session) -> None:
    cluster.replies = [(200, RECORDED_SEARCH_RESPONSE)]
    page = backend.search(session, CatalogueQuery(text="lung screening", modality="CT",
                                                  page=1, per_page=3))
    assert cluster.requests == [("POST", "/catalogue/_search", {
        "query": {"bool": {
            "must": [{"bool": {"must": [{"multi_match": {
                "query": "lung screening", "fields": FIELDS, "type": "cross_fields",
                "operator": "and"}}]}}],
            "filter": [{"term": {"modalities": "CT"}}],
        }},
        "sort": ["_score", *TIES],
        "from": 0, "size": 3, "track_total_hits": True, "_source": False, "aggs": AGGS,
    })]
    assert page.ids == ["ds-04", "ds-19", "ds-22"]
    assert (page.total, page.page, page.per_page, page.pages) == (7, 1, 3, 3)
    assert page.facets == {
        "modality": {"CT": 7, "PT": 1}, "body_part": {"CHEST": 6, "ABDOMEN": 1},
        "license": {"CC-BY-4.0": 5, "CC0-1.0": 2}, "project": {"thorax": 6, "onco": 1},
    }


def test_text_with_nothing_to_search_for_sends_nothing(backend: ElasticsearchSearch,
                                                       cluster: Cluster,
                                                       session: Session) -> None:
    for text in ('"', "the of", "-", "- -", "*", "(:^)"):
        page = backend.search(session, CatalogueQuery(text=text))
        assert (page.ids, page.total) == ([], 0)
    assert cluster.requests == []


def test_an_empty_result_reads_as_an_empty_page() -> None:
    response = {"took": 1, "timed_out": False, "hits": {
        "total": {"value": 0, "relation": "eq"}, "max_score": None, "hits": []},
        "aggregations": {facet: {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                                 "buckets": []} for facet in AGGS}}
    page = read_page(response, CatalogueQuery(page=4))
    assert (page.ids, page.total, page.page) == ([], 0, 4)
    assert page.facets == {facet: {} for facet in AGGS}


@pytest.mark.parametrize(("query", "expected"), [
    ({}, {"query": {"bool": {}}, "sort": TIES}),
    ({"sort": "relevance"}, {"sort": TIES}),  # no text: relevance means nothing
    ({"sort": "name"}, {"sort": [{"name.sort": "asc"}, *TIES]}),
    ({"sort": "subjects", "page": 3, "per_page": 25},
     {"sort": [{"subjects": "desc"}, *TIES], "from_": 50, "size": 25}),
    ({"body_part": "HEAD", "license_id": "CC0-1.0", "project": "neuro"},
     {"query": {"bool": {"filter": [{"term": {"body_parts": "HEAD"}},
                                    {"term": {"license_id": "CC0-1.0"}},
                                    {"term": {"project": "neuro"}}]}}}),
    ({"page": 101, "per_page": 100}, {"from_": 0, "size": 0}),  # past the window: counts only
])
def test_filters_sorts_and_pages_in_the_request(query: dict[str, Any],
                                                expected: dict[str, Any]) -> None:
    body = search_body(CatalogueQuery(**query))
    assert body is not None
    defaults = {"from_": 0, "size": 20, "track_total_hits": True, "source": False, "aggs": AGGS}
    for key, value in (defaults | expected).items():
        assert body[key] == value, key


def _text(text: str) -> Any:
    body = search_body(CatalogueQuery(text=text))
    assert body is not None
    return body["query"]["bool"]["must"][0]


def _mm(query: str, type_: str, **extra: Any) -> dict[str, Any]:
    return {"multi_match": {"query": query, "fields": FIELDS, "type": type_, **extra}}


def test_phrases_alternatives_and_exclusions_in_the_request() -> None:
    assert _text('"lung cancer" screening -paediatric covid-19') == {"bool": {
        "must": [_mm("screening", "cross_fields", operator="and"),
                 _mm("lung cancer", "phrase"), _mm("covid 19", "phrase")],
        "must_not": [_mm("paediatric", "phrase")],
    }}
    assert _text("prostate or knee mr") == {"bool": {"should": [
        {"bool": {"must": [_mm("prostate", "cross_fields", operator="and")]}},
        {"bool": {"must": [_mm("knee mr", "cross_fields", operator="and")]}},
    ], "minimum_should_match": 1}}
    assert _text("-paediatric") == {"bool": {"must_not": [_mm("paediatric", "phrase")]}}


@pytest.mark.parametrize("text", ['"', "*", "NEAR(", "-", "'; DROP TABLE x; --", "\x00",
                                  "x" * 100_000, "🫁 肺", "a:b^2~ (c OR d) AND /e/"])
def test_hostile_text_becomes_plain_words(text: str) -> None:
    body = search_body(CatalogueQuery(text=text))
    serialised = json.dumps(body)  # always a valid request body
    assert "query_string" not in serialised  # no Lucene syntax parser sees user input
    assert len(serialised) < 5000


def test_the_factory_connects_to_the_configured_url() -> None:
    backend = backend_for("elasticsearch", "http://search.internal:9200", index_name="cat")
    assert isinstance(backend, ElasticsearchSearch)
    assert backend.index_name == "cat"
    node = backend.client.transport.node_pool.get().config
    assert (node.host, node.port) == ("search.internal", 9200)
