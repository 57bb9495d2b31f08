"""Public pages: the catalogue of published datasets and each dataset's landing page (its
PID resolves here), with the FAIR exports. No sign-in needed; signed-in users see more of
what the dataset service's policy lets them see."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for
from flask_login import current_user
from markupsafe import Markup

from dataset_service.client import DatasetError
from portal import clients, fragments
from vre.client import ServiceError
from vre.errors import ApiError

bp = Blueprint("catalogue", __name__)

FILTERS = ("q", "modality", "body_part", "license", "project", "sort")
SORTS = {"relevance": "Relevance", "newest": "Newest", "name": "Name",
         "subjects": "Most subjects"}
FACET_LABELS = {"modality": "Modality", "body_part": "Body part", "license": "Licence",
                "project": "Project"}
EXPORTS = {"datacite": ("DataCite JSON", "application/vnd.datacite.datacite+json"),
           "dcat-ttl": ("DCAT-AP Turtle", "text/turtle"),
           "dcat-jsonld": ("DCAT-AP JSON-LD", "application/ld+json"),
           "schemaorg": ("schema.org JSON-LD", "application/ld+json")}


def _state() -> dict[str, str]:
    """The search as the URL carries it, so a result page can be bookmarked and shared."""
    state = {k: request.args.get(k, "").strip()[:200] for k in FILTERS}
    if state["sort"] not in SORTS:
        state["sort"] = "relevance"
    return {k: v for k, v in state.items() if v}


def _url(base: str, state: dict[str, str], **changes: Any) -> str:
    """The catalogue at `state` with `changes` (None removes a key; page 1 is the default)."""
    merged = {k: v for k, v in {**state, **changes}.items() if v not in (None, "", 1)}
    query = urlencode(merged)
    return base + ("?" + query if query else "")


@bp.get("/catalogue")
def catalogue() -> Any:
    state = _state()
    try:
        page = max(1, min(int(request.args.get("page", "1")), 100_000))
    except ValueError:
        page = 1
    search = clients.datasets(as_user=False)
    base = url_for("catalogue.catalogue")

    def draw(found: dict[str, Any]) -> Markup:
        return Markup(render_template(
            "_catalogue_main.html", found=found, state=state, page=page,
            url=functools.partial(_url, base, state), filter_url=_filter_links(base, state),
            sorts=SORTS, facet_labels=FACET_LABELS))

    # the same search draws the same part for everyone: kept while the service's answer holds
    main = fragments.drawn(
        ("catalogue", tuple(state.items()), page),
        lambda etag: search.catalogue_unless(etag, **state, page=page, per_page=20), draw)
    return render_template("catalogue.html", main=main)


def _filter_links(base: str, state: dict[str, str]) -> Callable[[str, str], str]:
    """filter_url(facet, value): the search narrowed to one facet value, back on page 1.
    A page has a link per facet value; each facet's shared part is encoded once."""
    prefixes: dict[str, str] = {}

    def filter_url(facet: str, value: str) -> str:
        if facet not in prefixes:
            prefixes[facet] = _url(base, state, **{facet: None})
            prefixes[facet] += "&" if "?" in prefixes[facet] else "?"
        return prefixes[facet] + urlencode({facet: value})

    return filter_url


@bp.get("/pid/<dataset_id>")
def resolve_pid(dataset_id: str) -> Any:
    """A persistent identifier resolves to the dataset's landing page."""
    return redirect(url_for("catalogue.landing", dataset_id=dataset_id), code=303)


@contextmanager
def hidden_as_not_found() -> Iterator[None]:
    """A dataset the policy hides from the caller is, to them, a page that does not exist."""
    try:
        yield
    except DatasetError as exc:
        if exc.status in (401, 403, 404):
            abort(404)
        raise


def load(dataset_id: str) -> dict[str, Any]:
    """The dataset as the caller may see it; 404 when the policy hides it."""
    with hidden_as_not_found():
        return clients.datasets().dataset(dataset_id)


def citation(dataset: dict[str, Any]) -> str:
    """A DataCite-style citation: authors (year). title (version). publisher. identifier."""
    names = [a.get("family_name") or a["name"] for a in dataset["authors"]] or \
        [dataset["contact_name"]]
    authors = ", ".join(names[:5]) + (" et al." if len(names) > 5 else "")
    when = dataset.get("published_at") or dataset.get("released_at") or dataset["created_at"]
    year = datetime.fromisoformat(when).year
    identifier = dataset["pid"]
    if dataset.get("doi"):
        identifier = "https://doi.org/10." + dataset["doi"].split("10.", 1)[1]
    return (f"{authors} ({year}). {dataset['name']} (Version {dataset['version']}) "
            f"[Data set]. In-situ VRE. {identifier}")


def paragraphs(text: str) -> list[str]:
    """User text as plain paragraphs: shown escaped, never as HTML."""
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


@dataclass(frozen=True)
class LandingParts:
    """A landing page as drawn from the record, around the visitor's own part (the actions
    a signed-in user may take), which is drawn for each request."""

    title: str
    head: Markup
    before_actions: Markup
    after_actions: Markup
    state: str


ACTIONS = Markup("<!-- visitor's actions -->")  # user text is escaped: it cannot forge this


def _draw_landing(found: dict[str, Any]) -> LandingParts:
    dataset = found["dataset"]
    main = render_template("_landing_main.html", dataset=dataset, citation=citation(dataset),
                           paragraphs=paragraphs, exports=EXPORTS, actions=ACTIONS)
    before, _, after = main.partition(ACTIONS)
    head = render_template("_landing_head.html", dataset=dataset, json_ld=found["schemaorg"],
                           exports=EXPORTS)
    return LandingParts(dataset["name"], Markup(head), Markup(before), Markup(after),
                        dataset["state"])


@bp.get("/datasets/<dataset_id>")
def landing(dataset_id: str) -> Any:
    client = clients.datasets()
    with hidden_as_not_found():
        parts = fragments.drawn(("landing", dataset_id),
                                lambda etag: client.landing_unless(dataset_id, etag),
                                _draw_landing)
    return render_template("landing.html", parts=parts, dataset_id=dataset_id,
                           signed_in=current_user.is_authenticated)


@bp.get("/datasets/<dataset_id>/export/<fmt>")
def export(dataset_id: str, fmt: str) -> Response:
    """The dataset's metadata in one FAIR format, as a download."""
    if fmt not in EXPORTS:
        abort(404)
    with hidden_as_not_found():  # the metadata endpoint asks the policy itself
        body = clients.datasets().metadata(dataset_id, fmt)
    extension = {"dcat-ttl": "ttl"}.get(fmt, "json")
    response = Response(body, content_type=EXPORTS[fmt][1] + "; charset=utf-8")
    response.headers["Content-Disposition"] = \
        f'inline; filename="{dataset_id}-{fmt}.{extension}"'
    return response


@bp.app_errorhandler(ServiceError)
def _service_error(exc: ServiceError) -> Any:
    """A service that refuses or fails shows as a page with its code, never as a crash."""
    if exc.status == 401:
        return redirect(url_for("pages.signin", next=request.path))
    status = exc.status if 400 <= exc.status < 500 else 503
    message = exc.message if status < 500 else \
        "a platform service is not available right now; try again in a moment"
    return render_template("error.html", error=ApiError(message, code=exc.code,
                                                        status=status)), status
