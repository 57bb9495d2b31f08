"""Search of the public catalogue: the contract every search backend keeps, and the factory
that picks one by configuration (the database's own full-text search, or Elasticsearch)."""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy.orm import Session

Sort = Literal["relevance", "newest", "name", "subjects"]
SORTS: tuple[str, ...] = get_args(Sort)
FACETS = ("modality", "body_part", "license", "project")
# The most values a facet reports, most frequent first (every backend cuts at the same place).
FACET_VALUES_LIMIT = 100
MAX_PER_PAGE = 100
# Longer search text is cut here: nobody types more, and it bounds the work a query costs.
MAX_TEXT_CHARS = 1000
BACKENDS = ("database", "elasticsearch")

# NUL and other control characters (PostgreSQL refuses NUL in text) and lone surrogates
# (which no database encoding accepts) can arrive through JSON; they never carry meaning.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def clean_text(value: str | None, limit: int = MAX_TEXT_CHARS) -> str | None:
    """User text made safe to bind: unsafe characters become spaces, cut to `limit`
    characters, stripped; None when nothing is left."""
    if value is None:
        return None
    value = _UNSAFE.sub(" ", value[:limit]).strip()
    return value or None


# PostgreSQL's english.stop (Snowball's list): the words its 'english' configuration, and
# Elasticsearch's english analyzer, never index. FTS5 indexes them, so queries drop them.
_STOP_WORDS = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves what which who whom
this that these those am is are was were be been being have has had having do does did
doing a an the and but if or because as until while of at by for with about against between
into through during before after above below to from up down in out on off over under again
further then once here there when where why how all any both each few more most other some
such no nor not only own same so than too very s t can will just don should now
"""
ENGLISH_STOP_WORDS = frozenset(_STOP_WORDS.split())

# A quoted phrase (an unclosed quote runs to the end, as in websearch_to_tsquery), or a
# run of anything else up to the next space or quote; either may follow dashes, which
# negate it even when spaces stand between ("- ct" excludes ct, as in websearch_to_tsquery).
_TERM = re.compile(r'(?P<neg>(?:-\s*)*)(?:"(?P<phrase>[^"]*)"?|(?P<word>[^\s"]+))')
# Tokens are runs of letters and digits (as FTS5's unicode61 and the standard tokenizer
# cut them); everything else separates.
_TOKEN = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class TextTerm:
    """One word or quoted phrase of search text, as its lowercased tokens; a word with
    several tokens ("covid-19", "x-ray") is a phrase too. Negated: must not match."""

    tokens: tuple[str, ...]
    negated: bool = False


def parse_text(text: str | None) -> list[list[TextTerm]]:
    """Search text in web-search syntax, read as PostgreSQL's websearch_to_tsquery reads it:
    alternatives separated by a lone `or`, each a list of terms that must all match
    (`-term`: must not). Nothing else is syntax: `*`, `NEAR(`, `:`, `^`, `'` separate
    tokens as spaces do. Terms of only stop words are dropped, then empty alternatives;
    [] means there is nothing to search for. Pure: backends render the result."""
    branches: list[list[TextTerm]] = [[]]
    for match in _TERM.finditer(text or ""):
        phrase, word = match.group("phrase"), match.group("word")
        if word is not None and word.lower() == "or" and not match.group("neg"):
            branches.append([])
            continue
        tokens = tuple(t.lower() for t in _TOKEN.findall(word if phrase is None else phrase))
        if all(t in ENGLISH_STOP_WORDS for t in tokens):
            continue  # also a term with no token at all, like "-" or "*"
        branches[-1].append(TextTerm(tokens, negated=match.group("neg").count("-") % 2 == 1))
    return [branch for branch in branches if branch]


@dataclass(frozen=True, kw_only=True)
class DatasetDoc:
    """The searchable document of one published dataset: what the catalogue shows and
    filters on. Never anything about one person. `published_at` is kept in UTC (a naive
    datetime is read as UTC)."""

    id: str
    name: str
    description: str = ""
    keywords: tuple[str, ...] = ()
    project: str = ""
    license_id: str = ""
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    published_at: datetime
    subjects: int = 0
    studies: int = 0

    def __post_init__(self) -> None:
        # In UTC, the platform's one clock (SQLite hands back naive UTC datetimes), so that
        # every backend orders "newest" the same way.
        published = self.published_at
        published = (published.replace(tzinfo=UTC) if published.tzinfo is None
                     else published.astimezone(UTC))
        object.__setattr__(self, "published_at", published)
        # Tuples in, whatever sequence the caller had: the document stays hashable and frozen.
        for name in ("keywords", "modalities", "body_parts"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def facet_values(self) -> dict[str, tuple[str, ...]]:
        """The values this document is counted under, per facet (no empties, no repeats)."""
        def unique(values: Iterable[str]) -> tuple[str, ...]:
            return tuple(dict.fromkeys(v for v in values if v))

        return {"modality": unique(self.modalities), "body_part": unique(self.body_parts),
                "license": unique([self.license_id]), "project": unique([self.project])}

    @classmethod
    def from_dataset(cls, dataset: Any, project: str) -> DatasetDoc:
        """The document of a published `dataset_service.models.Dataset` row, whose project
        is called `project`; modalities and body parts come from its statistics."""
        if dataset.published_at is None:
            raise ValueError(f"dataset {dataset.id} is not published")
        stats: Mapping[str, Any] = dataset.statistics or {}
        return cls(
            id=dataset.id, name=dataset.name, description=dataset.description or "",
            keywords=tuple(dataset.keywords or ()), project=project,
            license_id=dataset.license_id, published_at=dataset.published_at,
            modalities=tuple(sorted(stats.get("modalities") or {})),
            body_parts=tuple(sorted(stats.get("body_parts") or {})),
            subjects=int(stats.get("subjects") or 0), studies=int(stats.get("studies") or 0),
        )


@dataclass(frozen=True, kw_only=True)
class CatalogueQuery:
    """One search of the catalogue. Every part is optional; filters combine with AND.

    `text` uses web-search syntax (words are all required, "quoted phrase", -excluded,
    `or` between alternatives); it is cleaned on construction (see `clean_text`), and blank
    text means "no text condition". `sort` "relevance" without text sorts as "newest".
    """

    text: str | None = None
    modality: str | None = None
    body_part: str | None = None
    license_id: str | None = None
    project: str | None = None
    sort: Sort = "relevance"
    page: int = 1
    per_page: int = 20

    def __post_init__(self) -> None:
        for name in ("text", "modality", "body_part", "license_id", "project"):
            object.__setattr__(self, name, clean_text(getattr(self, name)))
        if self.sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {self.sort!r}")
        if isinstance(self.page, bool) or not isinstance(self.page, int) or self.page < 1:
            raise ValueError(f"page must be an integer >= 1, got {self.page!r}")
        if (isinstance(self.per_page, bool) or not isinstance(self.per_page, int)
                or not 1 <= self.per_page <= MAX_PER_PAGE):
            raise ValueError(f"per_page must be an integer in 1..{MAX_PER_PAGE}, "
                             f"got {self.per_page!r}")

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def effective_sort(self) -> Sort:
        """The sort actually applied: relevance means nothing without text."""
        return "newest" if self.sort == "relevance" and self.text is None else self.sort

    def filters(self) -> dict[str, str]:
        """The facet filters that are set, by facet name."""
        pairs = {"modality": self.modality, "body_part": self.body_part,
                 "license": self.license_id, "project": self.project}
        return {facet: value for facet, value in pairs.items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class SearchPage:
    """One page of results: dataset ids in display order, how many match in all, and the
    facet counts (facet -> value -> number of matching datasets) over every match, not
    just this page."""

    ids: list[str]
    total: int
    page: int
    per_page: int
    facets: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return -(-self.total // self.per_page)


class SearchBackend(abc.ABC):
    """Where the public catalogue is searched. Subclass this and override `index`,
    `remove` and `search`; a subclass that forgets one cannot be instantiated.

    - ``index(session, doc)`` adds the searchable document of one dataset, or replaces the
      one it had (same `doc.id`). The caller calls it in the same transaction (`session`)
      as the dataset change that made the document, and only for published datasets: a
      backend searches whatever it was given and decides nothing about visibility. A
      backend inside the database commits or rolls back with that transaction; one outside
      it must not make the document visible unless the transaction commits.
    - ``remove(session, dataset_id)`` takes a dataset out of the catalogue (withdrawn,
      invalidated); removing one that is not there is not an error. Same transaction rules.
    - ``search(session, query)`` answers a `CatalogueQuery` with a `SearchPage`:
      * matches: every word of `query.text` (see `parse_text`; English stemming, so
        "nodules" finds "nodule") in the name, keywords or description, and every filter,
        compared exactly with the document's values;
      * order, by `query.sort`: relevance (a match in the name ranks above one in the
        keywords, above one in the description; without text it is newest), newest
        (`published_at`), name (case-insensitive), subjects (most first); ties go to the
        newest, then to the greater id, so pages never overlap;
      * `total` matches, and `facets` "modality", "body_part", "license" and "project",
        each value -> the number of matches it has (all matches, not only this page;
        most frequent first, at most FACET_VALUES_LIMIT values); a page past the end has
        no ids but the same total and facets.
      Any user text is accepted: what is not syntax is read as plain words, and text with
      no searchable word matches nothing. A search never fails because of its input.
    - ``prepare()`` (optional) makes the backend ready to serve, once at start-up (say,
      create a missing index); it must be safe to call again. The default does nothing.

    Backends keep no per-request state; one instance serves every request.
    """

    def prepare(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Make the backend ready to serve (idempotent); nothing by default."""

    @abc.abstractmethod
    def index(self, session: Session, dataset: DatasetDoc) -> None:
        """Add or replace one dataset's searchable document."""

    @abc.abstractmethod
    def remove(self, session: Session, dataset_id: str) -> None:
        """Take one dataset out of the catalogue (no error if it is not there)."""

    @abc.abstractmethod
    def search(self, session: Session, query: CatalogueQuery) -> SearchPage:
        """One page of matching dataset ids, the total and the facet counts."""


def backend_for(kind: str = "database", elasticsearch_url: str | None = None,
                **options: Any) -> SearchBackend:
    """The search backend the configuration names (`config.search_backend`,
    `config.elasticsearch_url`): "database" (the default) searches the service's own
    database; "elasticsearch" needs the cluster's URL. `options` go to the backend."""
    if kind == "database":
        from dataset_service.search.database import DatabaseSearch

        return DatabaseSearch(**options)
    if kind == "elasticsearch":
        if not elasticsearch_url:
            raise ValueError("search backend elasticsearch needs elasticsearch_url")
        from dataset_service.search.elastic import ElasticsearchSearch

        return ElasticsearchSearch.connect(elasticsearch_url, **options)
    raise ValueError(f"unknown search backend {kind!r}; one of {', '.join(BACKENDS)}")


__all__ = ["ENGLISH_STOP_WORDS", "FACETS", "FACET_VALUES_LIMIT", "SORTS", "CatalogueQuery",
           "DatasetDoc", "SearchBackend", "SearchPage", "TextTerm", "backend_for", "clean_text",
           "parse_text"]
