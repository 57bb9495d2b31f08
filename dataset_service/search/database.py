"""Catalogue search in the service's own database: PostgreSQL full-text search (tsvector,
GIN, websearch_to_tsquery, ts_rank) or SQLite FTS5 (bm25), with facets in a child table.

Both dialects keep the same two plain tables, declared with the service's other tables in
`dataset_service.models` (which imports nothing of search):
`catalogue` (one row per published dataset: what is sorted on, and on PostgreSQL the
weighted `document` tsvector) and `catalogue_facets` (one row per dataset, facet and value,
indexed by facet and value for filters and counts). SQLite adds the FTS5 virtual table
`catalogue_fts` (created by migration 0003, not a model: its shadow tables are FTS5's own).

Text configuration: English on both, so plurals and verb forms meet ("nodules" finds
"nodule"): PostgreSQL's 'english' configuration (Snowball stemmer, English stop words) and
FTS5's porter tokenizer over unicode61. FTS5 indexes stop words; `parse_text` drops terms
made only of them, as PostgreSQL does (inside a phrase they stay, for positions).
Weights are name 3 : keywords 2 : description 1 on both (and in the Elasticsearch backend).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dataset_service.models import CatalogueEntry, CatalogueFacet
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

TEXT_CONFIG = "english"
# websearch_to_tsquery's and ts_rank's configuration and weights are constants, never input.
_REGCONFIG = sa.literal_column(f"'{TEXT_CONFIG}'::regconfig")
# ts_rank weights, in the order {D, C, B, A}: description (C) 1, keywords (B) 2, name (A) 3.
_PG_WEIGHTS = sa.literal_column("'{0, 0.3333, 0.6667, 1.0}'::float4[]")
# bm25 weights, one per FTS5 column: dataset_id (unindexed), name, keywords, description.
_FTS_WEIGHTS = (0.0, 3.0, 2.0, 1.0)
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"
# Runs of two or more dashes (spaces between allowed): websearch_to_tsquery nests one NOT
# per dash and fails beyond about 32 ("tsquery stack too small").
_DASH_RUN = re.compile(r"-(?:\s*-)+\s*")


def websearch_text(text: str) -> str:
    """Search text for websearch_to_tsquery, with every run of dashes cut to its parity
    ("---x" is "-x", "--x" is "x"): same meaning, and no input nests NOTs deep enough to
    make PostgreSQL fail."""
    return _DASH_RUN.sub(lambda m: "-" if m.group().count("-") % 2 else " ", text)


_catalogue = CatalogueEntry.__table__
_facets = CatalogueFacet.__table__
_fts = sa.table("catalogue_fts", sa.column("rowid"), sa.column("dataset_id"),
                sa.column("name"), sa.column("keywords"), sa.column("description"))


# -- FTS5 query building: pure, no database ---------------------------------------------

def fts5_query(text: str | None) -> str | None:
    """Search text (see `parse_text`) as an FTS5 query that cannot be a syntax error: each
    term is a double-quoted FTS5 string of letter-and-digit tokens (so FTS5 keywords and
    operators in the input are plain words), terms are ANDed, negated ones joined by NOT,
    alternatives by OR. An alternative of only exclusions is dropped: FTS5 has no
    "everything but". None: nothing left to search for."""
    rendered = [r for r in map(_fts5_branch, parse_text(text)) if r]
    if not rendered:
        return None
    return rendered[0] if len(rendered) == 1 else " OR ".join(f"({r})" for r in rendered)


def _fts5_branch(terms: Sequence[TextTerm]) -> str | None:
    def string(term: TextTerm) -> str:
        return '"' + " ".join(term.tokens) + '"'  # tokens hold no quote: nothing to escape

    positive = [string(t) for t in terms if not t.negated]
    if not positive:
        return None
    expr = " AND ".join(positive)
    negative = [string(t) for t in terms if t.negated]
    if negative:
        expr = f"({expr}) NOT " + " NOT ".join(negative)
    return expr


def fts_rowid(dataset_id: str) -> int:
    """The FTS5 rowid of a dataset: 64 bits of SHA-256 of its id, so the row is found and
    replaced by key, and survives VACUUM (which may renumber implicit rowids). Two ids
    with one rowid make the insert fail loudly; nothing is overwritten silently."""
    return int.from_bytes(hashlib.sha256(dataset_id.encode()).digest()[:8], "big", signed=True)


# -- the backend ------------------------------------------------------------------------


class DatabaseSearch(SearchBackend):
    """The catalogue in the service's database (the default backend): every write is part
    of the caller's transaction. Works on PostgreSQL and SQLite (see the module docstring
    for the text configuration). One difference: on SQLite a query made only of exclusions
    (`-word`) matches nothing, where PostgreSQL returns everything without the word."""

    def index(self, session: Session, dataset: DatasetDoc) -> None:
        dialect = session.get_bind().dialect.name
        keywords = " ".join(dataset.keywords)
        row: dict[str, Any] = {
            "dataset_id": dataset.id, "name": dataset.name,
            "sort_name": dataset.name.casefold(), "description": dataset.description,
            "keywords": list(dataset.keywords), "project": dataset.project,
            "license_id": dataset.license_id, "published_at": dataset.published_at,
            "subjects": dataset.subjects, "studies": dataset.studies,
            "facet_values": [f"{facet}={value}" for facet, values in
                             dataset.facet_values().items() for value in values],
        }
        if dialect == "postgresql":
            row["document"] = _pg_document(dataset.name, keywords, dataset.description)
            insert: Any = postgresql.insert(_catalogue)
        else:
            insert = sqlite.insert(_catalogue)
        # Upsert, not delete-then-insert: the row lock it takes serialises two concurrent
        # indexings of one dataset, so the facets below cannot interleave.
        insert = insert.values(row)
        session.execute(insert.on_conflict_do_update(
            index_elements=[_catalogue.c.dataset_id],
            set_={k: insert.excluded[k] for k in row if k != "dataset_id"}))
        session.execute(sa.delete(_facets).where(_facets.c.dataset_id == dataset.id))
        facet_rows = [{"dataset_id": dataset.id, "facet": facet, "value": value}
                      for facet, values in dataset.facet_values().items() for value in values]
        if facet_rows:
            session.execute(sa.insert(_facets), facet_rows)
        if dialect != "postgresql":
            rowid = fts_rowid(dataset.id)
            session.execute(sa.delete(_fts).where(_fts.c.rowid == rowid,
                                                  _fts.c.dataset_id == dataset.id))
            session.execute(sa.insert(_fts).values(
                rowid=rowid, dataset_id=dataset.id, name=dataset.name, keywords=keywords,
                description=dataset.description))

    def remove(self, session: Session, dataset_id: str) -> None:
        if session.get_bind().dialect.name != "postgresql":
            session.execute(sa.delete(_fts).where(_fts.c.rowid == fts_rowid(dataset_id),
                                                  _fts.c.dataset_id == dataset_id))
        session.execute(sa.delete(_facets).where(_facets.c.dataset_id == dataset_id))
        session.execute(sa.delete(_catalogue).where(_catalogue.c.dataset_id == dataset_id))

    def search(self, session: Session, query: CatalogueQuery) -> SearchPage:
        empty = SearchPage(ids=[], total=0, page=query.page, per_page=query.per_page,
                           facets={facet: {} for facet in FACETS})
        source: sa.FromClause = _catalogue
        conditions: list[sa.ColumnElement[bool]] = []
        rank: sa.ColumnElement[Any] | None = None
        if query.text is not None:
            if not parse_text(query.text):  # no searchable word: as tsquery would find
                return empty
            if session.get_bind().dialect.name == "postgresql":
                tsquery = sa.func.websearch_to_tsquery(
                    _REGCONFIG, sa.bindparam("text", websearch_text(query.text)))
                conditions.append(_catalogue.c.document.op("@@")(tsquery))
                rank = sa.func.ts_rank(_PG_WEIGHTS, _catalogue.c.document, tsquery).desc()
            else:
                fts_text = fts5_query(query.text)
                if fts_text is None:
                    return empty
                source = _catalogue.join(_fts, _fts.c.dataset_id == _catalogue.c.dataset_id)
                conditions.append(sa.literal_column("catalogue_fts").op("MATCH")(
                    sa.bindparam("fts_text", fts_text)))
                rank = sa.func.bm25(sa.literal_column("catalogue_fts"), *_FTS_WEIGHTS).asc()
        for facet, value in query.filters().items():
            # correlate(None): inside the facet count query below, catalogue_facets is
            # also the outer table, and this subquery must not bind to the outer row.
            conditions.append(_catalogue.c.dataset_id.in_(
                sa.select(_facets.c.dataset_id).where(_facets.c.facet == facet,
                                                      _facets.c.value == value)
                .correlate(None)))

        if session.get_bind().dialect.name == "postgresql":
            return _search_once(session, query, conditions, rank) or empty
        matching = sa.select(_catalogue.c.dataset_id).select_from(source).where(*conditions)
        total = session.scalar(sa.select(sa.func.count()).select_from(matching.subquery()))
        if not total:
            return empty
        ids = session.scalars(matching.order_by(*_order(query, rank))
                              .limit(query.per_page).offset(query.offset)).all()
        counts = session.execute(
            sa.select(_facets.c.facet, _facets.c.value, sa.func.count().label("n"))
            .where(_facets.c.dataset_id.in_(matching))
            .group_by(_facets.c.facet, _facets.c.value)).all()
        return SearchPage(ids=list(ids), total=total, page=query.page,
                          per_page=query.per_page, facets=_facet_counts(counts))


def _search_once(session: Session, query: CatalogueQuery,
                 conditions: list[sa.ColumnElement[bool]],
                 rank: sa.ColumnElement[Any] | None) -> SearchPage | None:
    """PostgreSQL: match once (a materialised CTE), then the page, the total and the facet
    counts from those matches in one statement; a broad search no longer pays three times
    for evaluating the text query, and once more for joining the facets to it."""
    c = _catalogue.c
    score = rank.element if rank is not None else sa.literal(0.0)  # rank is score DESC
    matches = (sa.select(c.dataset_id, score.label("score"), c.published_at, c.sort_name,
                         c.subjects, c.facet_values).where(*conditions)
               .cte("matches").prefix_with("MATERIALIZED"))
    m = matches.c

    def order(cols: Any) -> list[sa.ColumnElement[Any]]:
        return _sort_keys(query.effective_sort, cols,
                          cols.score.desc() if rank is not None else None)

    # ORDER BY with LIMIT lets the planner keep only the top rows (no full sort of every
    # match); the page's own order is then numbered, repeating the same sort on <= 100 rows.
    top = (sa.select(m.dataset_id, m.score, m.published_at, m.sort_name, m.subjects)
           .order_by(*order(m)).limit(query.per_page).offset(query.offset).subquery("top"))
    kind, a, b, n = "kind", "a", "b", "n"
    page = sa.select(sa.literal("page").label(kind), top.c.dataset_id.label(a),
                     sa.null().label(b), sa.func.row_number().over(order_by=order(top.c))
                     .label(n))
    total = sa.select(sa.literal("total"), sa.null(), sa.null(), sa.func.count()
                      ).select_from(matches)
    if conditions:
        value = sa.func.unnest(m.facet_values).table_valued("v").render_derived()
        facets = (sa.select(sa.literal("facet"), value.c.v, sa.null(), sa.func.count())
                  .select_from(matches).join(value, sa.true()).group_by(value.c.v))
    else:  # every published dataset matches: count the facet table as it stands
        facets = (sa.select(sa.literal("facet"), _facets.c.facet + "=" + _facets.c.value,
                            sa.null(), sa.func.count())
                  .group_by(_facets.c.facet, _facets.c.value))
    rows = session.execute(sa.union_all(page, total, facets)).all()
    found = next((r[3] for r in rows if r[0] == "total"), 0)
    if not found:
        return None
    ids = [r[1] for r in sorted((r for r in rows if r[0] == "page"), key=lambda r: r[3])]
    counts = [(*r[1].split("=", 1), r[3]) for r in rows if r[0] == "facet"]
    return SearchPage(ids=ids, total=found, page=query.page, per_page=query.per_page,
                      facets=_facet_counts(counts))


def _pg_document(name: str, keywords: str, description: str) -> sa.ColumnElement[Any]:
    def weighted(text: str, weight: str) -> sa.ColumnElement[Any]:
        return sa.func.setweight(sa.func.to_tsvector(_REGCONFIG, text),
                                 sa.literal_column(f"'{weight}'"))  # a constant letter

    return weighted(name, "A").op("||")(weighted(keywords, "B")).op("||")(
        weighted(description, "C"))


def _order(query: CatalogueQuery, rank: sa.ColumnElement[Any] | None
           ) -> list[sa.ColumnElement[Any]]:
    return _sort_keys(query.effective_sort, _catalogue.c, rank)


def _sort_keys(sort: str, cols: Any, relevance: sa.ColumnElement[Any] | None
               ) -> list[sa.ColumnElement[Any]]:
    """The catalogue's orders over any columns named like the catalogue's (the table, or a
    set of matches); newest first breaks ties, then the id, so pages never overlap."""
    ties = [cols.published_at.desc(), cols.dataset_id.desc()]
    if sort == "relevance" and relevance is not None:  # already ordered, best first
        return [relevance, *ties]
    if sort == "name":
        return [cols.sort_name.asc(), *ties]
    if sort == "subjects":
        return [cols.subjects.desc(), *ties]
    return ties


def _facet_counts(rows: Sequence[sa.Row[Any]]) -> dict[str, dict[str, int]]:
    """Rows of (facet, value, n) as facet -> value -> n, most frequent first, then by value."""
    facets: dict[str, dict[str, int]] = {facet: {} for facet in FACETS}
    for facet, value, n in sorted(rows, key=lambda r: (-r[2], r[1])):
        if facet in facets and len(facets[facet]) < FACET_VALUES_LIMIT:
            facets[facet][value] = n
    return facets
