"""The public catalogue's search in the service's own database, on SQLite (FTS5) and on
PostgreSQL (tsvector): text, filters, facets, sorts, pages, index and remove, and input
that tries to break it. Expected results are computed from the corpus itself."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dataset_service.app import create_app
from dataset_service.models import Base, Dataset
from dataset_service.search import (
    FACETS,
    CatalogueQuery,
    DatasetDoc,
    TextTerm,
    backend_for,
    clean_text,
    parse_text,
)
from dataset_service.search.database import (
    DatabaseSearch,
    fts5_query,
    fts_rowid,
    websearch_text,
)
from dataset_service.search.elastic import ElasticsearchSearch
from vre.config import Config
from vre.db import Database

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _doc(n: int, name: str, keywords: tuple[str, ...], description: str,
         modalities: tuple[str, ...], body_parts: tuple[str, ...], license_id: str,
         project: str, subjects: int) -> DatasetDoc:
    # Published one per day, in a shuffled order, so "newest" is not the id order.
    return DatasetDoc(id=f"ds-{n:02d}", name=name, keywords=keywords, description=description,
                      modalities=modalities, body_parts=body_parts, license_id=license_id,
                      project=project, published_at=T0 + timedelta(days=(n * 7) % 31),
                      subjects=subjects, studies=subjects * 2)


CORPUS: list[DatasetDoc] = [
    _doc(1, "Glioma MRI Atlas", ("brain", "atlas"), "Multi-parametric MR of adult brain tumours.",
         ("MR",), ("HEAD",), "CC-BY-4.0", "neuro", 120),
    _doc(2, "Brain Tumour Segmentation", ("glioma", "segmentation"),
         "Expert delineations of tumour regions.", ("MR",), ("HEAD",), "CC-BY-NC-4.0",
         "neuro", 300),
    _doc(3, "Paediatric Head Trauma", ("trauma", "emergency"),
         "Non-contrast head CT; a few cases show a glioma incidentally.", ("CT",), ("HEAD",),
         "CC0-1.0", "neuro", 45),
    _doc(4, "Lung Nodule Screening", ("lung", "nodules", "screening"),
         "Low-dose chest CT from a lung cancer screening programme.", ("CT",), ("CHEST",),
         "CC-BY-4.0", "thorax", 800),
    _doc(5, "COVID-19 Chest Radiographs", ("covid-19", "pneumonia"),
         "Chest X-ray images of patients with suspected pneumonia.", ("CR", "DX"), ("CHEST",),
         "CC-BY-4.0", "thorax", 1500),
    _doc(6, "Cardiac MR Cine", ("heart", "cardiology"),
         "Short-axis cine MR of the heart for ventricular function.", ("MR",), ("HEART",),
         "CC-BY-NC-4.0", "cardio", 220),
    _doc(7, "Coronary CT Angiography", ("heart", "coronary"),
         "Contrast-enhanced CT of the coronary arteries.", ("CT",), ("HEART", "CHEST"),
         "CC-BY-4.0", "cardio", 410),
    _doc(8, "Whole-Body PET/CT Oncology", ("oncology", "lymphoma"),
         "FDG PET with low-dose CT for staging of lymphoma.", ("PT", "CT"), ("WHOLEBODY",),
         "CC-BY-NC-4.0", "onco", 95),
    _doc(9, "Prostate MRI Biopsy Cohort", ("prostate", "oncology"),
         "Biparametric MR before targeted biopsy.", ("MR",), ("PELVIS",), "CC-BY-4.0", "onco",
         640),
    _doc(10, "Mammography Screening", ("breast", "screening"),
         "Digital mammograms from a national screening programme.", ("MG",), ("BREAST",),
         "CC-BY-NC-4.0", "onco", 2000),
    _doc(11, "Liver Lesion CT", ("liver", "lesion"),
         "Portal-venous CT of the abdomen with annotated liver lesions.", ("CT",),
         ("ABDOMEN",), "CC0-1.0", "onco", 130),
    _doc(12, "Knee MR Osteoarthritis", ("knee", "cartilage"),
         "Sagittal knee MR with cartilage grading.", ("MR",), ("KNEE",), "CC-BY-4.0", "msk", 510),
    *[_doc(n, f"Reference Cohort {n}", ("reference",),
           "Routine imaging kept for quality assurance.", (("CT", "MR", "US")[n % 3],),
           (("ABDOMEN", "CHEST", "PELVIS")[n % 3],),
           ("CC-BY-4.0", "CC0-1.0", "CC-BY-NC-4.0", "CC-BY-4.0")[n % 4],
           ("qa", "thorax", "neuro")[n % 3], 10 + n * 7)
      for n in range(13, 31)],
]
BY_ID = {doc.id: doc for doc in CORPUS}
ALL_IDS = {doc.id for doc in CORPUS}


def _newest(ids: set[str] | list[str]) -> list[str]:
    return sorted(ids, key=lambda i: (BY_ID[i].published_at, i), reverse=True)


def _sorted_by(ids: set[str], key: Any, descending: bool = False) -> list[str]:
    """`ids` sorted by `key`, ties broken newest first, then by id (descending)."""
    ordered = _newest(ids)  # stable sorts: the tie order survives the sort by key
    return sorted(ordered, key=key, reverse=descending)


def _facet_counts(ids: set[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {facet: Counter() for facet in FACETS}
    for i in ids:
        for facet, values in BY_ID[i].facet_values().items():
            counts[facet].update(values)
    return {facet: dict(c) for facet, c in counts.items()}


@pytest.fixture
def db(dataset_db: Database) -> Database:
    return dataset_db


@pytest.fixture
def catalogue(db: Database) -> DatabaseSearch:
    """The corpus indexed, in one transaction."""
    backend = DatabaseSearch()
    with db.session() as session:
        for doc in CORPUS:
            backend.index(session, doc)
    return backend


def search(db: Database, backend: DatabaseSearch, **query: Any) -> Any:
    with db.session() as session:
        return backend.search(session, CatalogueQuery(**query))


def ids_for(db: Database, backend: DatabaseSearch, **query: Any) -> list[str]:
    return search(db, backend, per_page=100, **query).ids


# -- the pure parts: query language, cleaning, the query object ----------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("lung nodules", '"lung" AND "nodules"'),
    ("fat rats or cat", '("fat" AND "rats") OR ("cat")'),
    ('"computed tomography of the chest"', '"computed tomography of the chest"'),
    ("lung -pediatric", '("lung") NOT "pediatric"'),
    ("lung - pediatric --ct", '("lung" AND "ct") NOT "pediatric"'),
    ("covid-19", '"covid 19"'),
    ("lung or", '"lung"'),
    ("NEAR(lung, ct) AND col:x^2*", '"near lung" AND "ct" AND "col x 2"'),
    ('ab"cd ef', '"ab" AND "cd ef"'),
    ("the of and", None),
    ('"', None),
    ("-lung", None),  # FTS5 has no "everything but"
    ("", None),
])
def test_search_text_becomes_a_quoted_fts5_query(text: str, expected: str | None) -> None:
    assert fts5_query(text) == expected


def test_search_text_parses_as_websearch_to_tsquery_does() -> None:
    assert parse_text('brain "the tumour" or -x-ray OR') == [
        [TextTerm(("brain",)), TextTerm(("the", "tumour"))],
        [TextTerm(("x", "ray"), negated=True)],
    ]
    assert parse_text("or or the") == []


def test_dash_runs_keep_their_meaning_but_not_their_depth() -> None:
    assert websearch_text("lung ---ct") == "lung -ct"
    assert websearch_text("lung - - - ct") == "lung -ct"
    assert websearch_text("lung --ct x-ray") == "lung  ct x-ray"
    assert websearch_text("-" * 1000) == " "


def test_query_text_is_cleaned_and_bounded() -> None:
    assert clean_text("  lung\x00 ct\ud800 ") == "lung  ct"
    assert clean_text(" \t\n ") is None
    assert len(CatalogueQuery(text="x" * 100_000).text or "") == 1000
    assert CatalogueQuery(text="   ").text is None
    assert CatalogueQuery(modality="CT\x00").modality == "CT"


@pytest.mark.parametrize("bad", [{"page": 0}, {"page": True}, {"per_page": 0},
                                 {"per_page": 101}, {"sort": "random"}, {"page": "2"}])
def test_query_refuses_bad_paging_and_sorts(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CatalogueQuery(**bad)


def test_document_comes_from_a_published_dataset() -> None:
    dataset = Dataset(id="d-1", name="Lung", description="CT", keywords=["lung"],
                      license_id="CC0-1.0", published_at=T0,
                      statistics={"subjects": 3, "studies": 4, "modalities": {"MR": 2, "CT": 5},
                                  "body_parts": {"CHEST": 5}})
    doc = DatasetDoc.from_dataset(dataset, "thorax")
    assert (doc.modalities, doc.body_parts, doc.subjects, doc.studies, doc.project) == (
        ("CT", "MR"), ("CHEST",), 3, 4, "thorax")
    naive = DatasetDoc.from_dataset(Dataset(id="d-2", name="x", license_id="x",
                                            published_at=datetime(2024, 1, 1)), "p")
    assert naive.published_at == T0  # SQLite gives naive UTC back
    plus_two = DatasetDoc(id="d-3", name="x", published_at=datetime.fromisoformat(
        "2024-01-01T02:00:00+02:00"))
    assert plus_two.published_at == T0 and plus_two.published_at.tzinfo is UTC
    dataset.published_at = None
    with pytest.raises(ValueError, match="not published"):
        DatasetDoc.from_dataset(dataset, "thorax")


def test_backend_is_chosen_by_configuration() -> None:
    assert isinstance(backend_for("database"), DatabaseSearch)
    with pytest.raises(ValueError, match="elasticsearch_url"):
        backend_for("elasticsearch", None)
    with pytest.raises(ValueError, match="unknown search backend"):
        backend_for("solr")


def test_fts_rowids_are_stable_and_spread() -> None:
    assert fts_rowid("ds-01") == fts_rowid("ds-01")
    assert len({fts_rowid(f"ds-{n}") for n in range(10_000)}) == 10_000


# -- schema -------------------------------------------------------------------------------


def _skip_fts_tables(name: str | None, type_: str, parent_names: Any) -> bool:
    # What vre.db should pass as include_name: FTS5's virtual table and shadow tables are
    # SQLite's own, not models.
    return not (type_ == "table" and name is not None
                and re.fullmatch(r".+_fts(_(data|idx|content|docsize|config))?", name))


def test_catalogue_tables_match_the_migration(db: Database) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": _skip_fts_tables})
        assert compare_metadata(context, Base.metadata) == []
        if conn.dialect.name == "postgresql":
            column_type = conn.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'catalogue' AND column_name = 'document' "
                "AND table_schema = current_schema()").scalar()
            assert column_type == "tsvector"
            index = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_catalogue_document' "
                "AND schemaname = current_schema()").scalar()
            assert "USING gin" in index
        else:
            sql = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'catalogue_fts'").scalar()
            assert "fts5" in sql


@pytest.mark.parametrize("query", [
    {"text": "screening", "modality": "CT"},
    {"text": "heart", "project": "cardio", "body_part": "CHEST", "sort": "name"},
    {"modality": "MR", "license_id": "CC-BY-4.0", "sort": "subjects"},
])
def test_searches_use_indexes_not_table_scans(db: Database, catalogue: DatabaseSearch,
                                              query: dict[str, Any]) -> None:
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        statements.append((statement, params))

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        search(db, catalogue, **query)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    with db.engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        # PostgreSQL matches once for the page, total and facets; SQLite asks three times
        assert len(statements) == (1 if postgres else 3)
        if postgres:  # 30 rows: make the planner show what it can do with indexes
            conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, params in statements:
            explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            plan = "\n".join(str(row[-1]) for row in conn.exec_driver_sql(
                explain + statement, params))
            if postgres:
                assert "Seq Scan" not in plan, plan
            else:
                assert not re.search(r"^SCAN catalogue(_facets)?$", plan, re.M), plan


# -- text -----------------------------------------------------------------------------------


def test_text_finds_words_in_name_keywords_and_description(
        db: Database, catalogue: DatabaseSearch) -> None:
    assert ids_for(db, catalogue, text="mammography") == ["ds-10"]  # name
    assert ids_for(db, catalogue, text="cartilage") == ["ds-12"]  # keyword and description
    assert ids_for(db, catalogue, text="lymphoma") == ["ds-08"]
    assert ids_for(db, catalogue, text="biparametric") == ["ds-09"]  # description only
    assert ids_for(db, catalogue, text="PNEUMONIA") == ["ds-05"]  # any case


def test_a_name_match_ranks_above_a_keyword_match_above_a_description_match(
        db: Database, catalogue: DatabaseSearch) -> None:
    assert ids_for(db, catalogue, text="glioma") == ["ds-01", "ds-02", "ds-03"]


def test_words_meet_their_plurals(db: Database, catalogue: DatabaseSearch) -> None:
    assert ids_for(db, catalogue, text="nodule") == ["ds-04"]
    assert set(ids_for(db, catalogue, text="programmes")) == {"ds-04", "ds-10"}
    assert set(ids_for(db, catalogue, text="tumour")) == {"ds-01", "ds-02"}


def test_all_words_must_match(db: Database, catalogue: DatabaseSearch) -> None:
    assert ids_for(db, catalogue, text="chest ct") == ["ds-04"]
    assert ids_for(db, catalogue, text="heart coronary") == ["ds-07"]
    assert ids_for(db, catalogue, text="the heart of coronary") == ["ds-07"]  # stop words


def test_phrases_alternatives_and_exclusions(db: Database, catalogue: DatabaseSearch) -> None:
    assert ids_for(db, catalogue, text='"lung cancer"') == ["ds-04"]
    assert ids_for(db, catalogue, text='"cancer lung"') == []
    assert set(ids_for(db, catalogue, text="prostate or knee")) == {"ds-09", "ds-12"}
    assert ids_for(db, catalogue, text="screening -lung") == ["ds-10"]
    assert ids_for(db, catalogue, text="covid-19") == ["ds-05"]


def test_text_with_no_searchable_word_matches_nothing(
        db: Database, catalogue: DatabaseSearch) -> None:
    page = search(db, catalogue, text="the and of")
    assert (page.ids, page.total) == ([], 0)
    assert page.facets == {facet: {} for facet in FACETS}


# -- filters and facets -------------------------------------------------------------------

FILTERS = [
    {"modality": "CT"}, {"modality": "MR"}, {"body_part": "HEAD"}, {"body_part": "CHEST"},
    {"license_id": "CC0-1.0"}, {"project": "neuro"}, {"project": "thorax"},
    {"modality": "CT", "body_part": "HEAD"},
    {"modality": "MR", "project": "neuro", "license_id": "CC-BY-4.0"},
    {"modality": "CT", "body_part": "CHEST", "license_id": "CC-BY-4.0", "project": "cardio"},
    {"modality": "XA"}, {"modality": "ct"},  # none; values match exactly
    {"text": "screening", "license_id": "CC-BY-NC-4.0"},
    {"text": "heart", "body_part": "CHEST"},
    {"text": "reference", "modality": "US", "project": "thorax"},
]
_FIELDS = {"modality": "modalities", "body_part": "body_parts"}


def _expected(query: dict[str, Any], text_ids: set[str] | None = None) -> set[str]:
    ids = set(ALL_IDS if text_ids is None else text_ids)
    for key, value in query.items():
        if key in _FIELDS:
            ids = {i for i in ids if value in getattr(BY_ID[i], _FIELDS[key])}
        elif key in ("license_id", "project"):
            ids = {i for i in ids if getattr(BY_ID[i], key) == value}
    return ids


@pytest.mark.parametrize("query", FILTERS, ids=lambda q: ",".join(f"{k}={v}" for k, v in
                                                                    q.items()))
def test_filters_and_facet_counts_cover_exactly_the_matches(
        db: Database, catalogue: DatabaseSearch, query: dict[str, Any]) -> None:
    text_ids = set(ids_for(db, catalogue, text=query["text"])) if "text" in query else None
    expected = _expected(query, text_ids)
    page = search(db, catalogue, per_page=100, sort="newest", **query)
    assert page.ids == _newest(expected)
    assert page.total == len(expected)
    assert page.facets == _facet_counts(expected)
    for counts in page.facets.values():  # most frequent first
        assert list(counts.values()) == sorted(counts.values(), reverse=True)


def test_facets_without_filters_count_the_whole_catalogue(
        db: Database, catalogue: DatabaseSearch) -> None:
    page = search(db, catalogue, per_page=1)
    assert page.total == 30
    assert page.facets == _facet_counts(ALL_IDS)
    assert page.facets["modality"]["CT"] == 11
    assert page.facets["project"] == {"neuro": 9, "onco": 4, "thorax": 8, "qa": 6,
                                      "cardio": 2, "msk": 1}


# -- sorts and pages ----------------------------------------------------------------------


def test_browsing_without_text_returns_everything_newest_first(
        db: Database, catalogue: DatabaseSearch) -> None:
    for sort in ("relevance", "newest"):
        page = search(db, catalogue, per_page=100, sort=sort)
        assert (page.ids, page.total) == (_newest(ALL_IDS), 30)


def test_sorts_by_name_and_by_subjects(db: Database, catalogue: DatabaseSearch) -> None:
    assert ids_for(db, catalogue, sort="name") == _sorted_by(
        ALL_IDS, lambda i: BY_ID[i].name.casefold())
    by_subjects = ids_for(db, catalogue, sort="subjects")
    assert by_subjects == _sorted_by(ALL_IDS, lambda i: BY_ID[i].subjects, descending=True)
    assert by_subjects.index("ds-30") < by_subjects.index("ds-06")  # 220 each; ds-30 newer
    assert ids_for(db, catalogue, text="screening", sort="subjects") == [
        "ds-10", "ds-04"]


def test_ties_are_broken_by_newest_then_id(db: Database) -> None:
    backend = DatabaseSearch()
    same = dict(name="Identical", published_at=T0, subjects=5)
    with db.session() as session:
        for i in ("b", "a", "c"):
            backend.index(session, DatasetDoc(id=i, **same))
        backend.index(session, DatasetDoc(id="z", name="Identical",
                                          published_at=T0 - timedelta(days=1), subjects=5))
    for sort in ("newest", "name", "subjects", "relevance"):
        assert ids_for(db, backend, sort=sort) == ["c", "b", "a", "z"]
    assert ids_for(db, backend, text="identical") == ["c", "b", "a", "z"]


@pytest.mark.parametrize("sort", ["newest", "name", "subjects"])
def test_pages_split_the_results_without_overlap(db: Database, catalogue: DatabaseSearch,
                                                 sort: str) -> None:
    pages = [search(db, catalogue, sort=sort, page=n, per_page=7) for n in range(1, 6)]
    assert [len(p.ids) for p in pages] == [7, 7, 7, 7, 2]
    assert {(p.total, p.pages) for p in pages} == {(30, 5)}
    seen = [i for p in pages for i in p.ids]
    assert seen == ids_for(db, catalogue, sort=sort)
    beyond = search(db, catalogue, sort=sort, page=6, per_page=7)
    assert (beyond.ids, beyond.total) == ([], 30)
    assert beyond.facets == pages[0].facets


# -- index, remove, transactions ------------------------------------------------------------


def test_removed_dataset_leaves_the_catalogue_and_its_facets(
        db: Database, catalogue: DatabaseSearch) -> None:
    with db.session() as session:
        catalogue.remove(session, "ds-12")
        catalogue.remove(session, "ds-12")  # gone already: not an error
        catalogue.remove(session, "never-indexed")
    assert ids_for(db, catalogue, text="knee") == []
    page = search(db, catalogue)
    assert page.total == 29
    assert "msk" not in page.facets["project"]
    assert "KNEE" not in page.facets["body_part"]


def test_indexing_again_replaces_the_document(db: Database, catalogue: DatabaseSearch) -> None:
    renamed = DatasetDoc(id="ds-12", name="Shoulder Ultrasound", keywords=("shoulder",),
                         description="Rotator cuff ultrasound.", modalities=("US",),
                         body_parts=("SHOULDER",), license_id="CC0-1.0", project="msk",
                         published_at=T0 + timedelta(days=100), subjects=5)
    with db.session() as session:
        catalogue.index(session, renamed)
    assert ids_for(db, catalogue, text="knee") == []
    assert ids_for(db, catalogue, text="rotator") == ["ds-12"]
    assert ids_for(db, catalogue, body_part="KNEE") == []
    assert ids_for(db, catalogue, body_part="SHOULDER") == ["ds-12"]
    page = search(db, catalogue, per_page=1, sort="newest")
    assert (page.ids, page.total) == (["ds-12"], 30)


def test_index_and_remove_roll_back_with_the_transaction(
        db: Database, catalogue: DatabaseSearch) -> None:
    new = DatasetDoc(id="ds-99", name="Spine MR", published_at=T0, modalities=("MR",))
    with pytest.raises(RuntimeError), db.session() as session:
        catalogue.index(session, new)
        catalogue.remove(session, "ds-01")
        raise RuntimeError("the dataset change failed")
    assert ids_for(db, catalogue, text="spine") == []
    assert ids_for(db, catalogue, text="glioma")[0] == "ds-01"
    assert search(db, catalogue).total == 30


def test_unicode_names_are_found(db: Database) -> None:
    backend = DatabaseSearch()
    with db.session() as session:
        backend.index(session, DatasetDoc(id="u1", name="Étude pulmonaire 肺癌",
                                          description="Tomodensitométrie thoracique",
                                          published_at=T0, project="Zürich"))
    assert ids_for(db, backend, text="étude") == ["u1"]
    assert ids_for(db, backend, text="肺癌") == ["u1"]
    assert ids_for(db, backend, text="PULMONAIRE") == ["u1"]
    assert ids_for(db, backend, project="Zürich") == ["u1"]


# -- hostile input ------------------------------------------------------------------------

HOSTILE = [
    '"', '""', '"""', "*", "**", "lung*", "NEAR(", "NEAR(lung ct", "NEAR(lung, ct, 2)", "-", "--",
    "- -", "-lung", "lung -", "'", "'; DROP TABLE catalogue; --",
    "'; DROP TABLE catalogue_facets; --", "OR", "or or or", "AND", "NOT", "lung NOT",
    "lung AND OR NOT ct", "(", ")", "(lung", "lung)", "{name}: x", "name:lung", "^lung",
    "lung + ct", "lung & ct | !x", "<->", "lung <-> ct", "a:*", "\\", "%", "_", "%%' OR 1=1",
    "\x00", "lung\x00ct", "\ud800", "🫁 lung", "肺", "ÅÄÖ", "\u202e", "x" * 5000,
    "lung " * 2000, '"' * 3000, "-" * 3000, "NEAR(" * 500, "é" * 100_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: repr(t[:20]))
def test_hostile_text_never_fails(db: Database, catalogue: DatabaseSearch, text: str) -> None:
    for sort in ("relevance", "name"):
        page = search(db, catalogue, text=text, sort=sort, modality="CT", per_page=5)
        assert page.total <= 30
        assert set(page.ids) <= ALL_IDS
    assert search(db, catalogue).total == 30  # and the catalogue is still all there


@pytest.mark.parametrize("value", ["'; DROP TABLE catalogue; --", '"', "x\x00", "x" * 5000,
                                   "\ud800x", "%", "*", "_"])
def test_hostile_filter_values_match_nothing(db: Database, catalogue: DatabaseSearch,
                                             value: str) -> None:
    for key in ("modality", "body_part", "license_id", "project"):
        page = search(db, catalogue, **{key: value})
        assert (page.ids, page.total) == ([], 0)
    assert search(db, catalogue).total == 30


@pytest.mark.parametrize("value", ["", "  ", "\x00", "\ud800"])
def test_blank_filter_values_are_no_filter(db: Database, catalogue: DatabaseSearch,
                                           value: str) -> None:
    assert search(db, catalogue, modality=value, project=value).total == 30


@pytest.mark.parametrize(("cache_seconds", "refresh"), [(60, "wait_for"), (0, False)])
def test_kept_searches_make_elasticsearch_writes_wait_until_searchable(
        config: Config, cache_seconds: int, refresh: str | bool) -> None:
    """With searches kept per catalogue generation, a write must be searchable before its
    transaction moves the generation on; without the cache, near-real-time is enough."""
    app = create_app(config.model_copy(update={
        "search_backend": "elasticsearch", "elasticsearch_url": "http://127.0.0.1:9",
        "catalogue_cache_seconds": cache_seconds}))
    try:
        backend = app.extensions["dataset.search"].backend
        assert isinstance(backend, ElasticsearchSearch) and backend.refresh == refresh
    finally:
        app.extensions["vre.db"].engine.dispose()
