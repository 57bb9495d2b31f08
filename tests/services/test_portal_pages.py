"""The portal's dataset pages against the real dataset service and tracer over HTTP: the
public catalogue and landing pages, the explorer, access requests, the steward's actions, and
a history whose traces are verified against a real chain."""

from __future__ import annotations

import json
import logging
import re

from flask import before_render_template

from tests.dataset_helpers import DATASET, create
from tests.portal_helpers import post, published, signed_in
from vre.logs import current_request_id


def test_anyone_browses_the_catalogue_and_a_landing_page(site, steward) -> None:
    dataset = published(site, steward, description="Line one <script>alert(1)</script>\n\n"
                        "Second paragraph.")
    anonymous = site["portal"].test_client()
    page = anonymous.get("/catalogue?q=chest&modality=CT")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and DATASET["name"] in html
    assert "remove filter" in html, "the URL keeps the filter and the page shows it"
    assert anonymous.get("/catalogue?q=nothing-like-this").status_code == 200
    landing = anonymous.get(f"/datasets/{dataset['id']}")
    html = landing.get_data(as_text=True)
    assert landing.status_code == 200
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)" in html
    ld = re.search(r'<script type="application/ld\+json">(.*?)</script>', html, re.S)
    assert ld is not None
    record = json.loads(ld.group(1))
    assert record["@type"] == "Dataset" and record["name"] == DATASET["name"]
    assert "<svg" in html and "Subjects by age" in html, "statistics are drawn"
    assert "(Version 1.0) [Data set]" in html, "a citation is offered"
    assert anonymous.get(f"/pid/{dataset['id']}").headers["Location"].endswith(
        f"/datasets/{dataset['id']}")
    turtle = anonymous.get(f"/datasets/{dataset['id']}/export/dcat-ttl")
    assert turtle.status_code == 200 and turtle.mimetype == "text/turtle"
    assert anonymous.get(f"/datasets/{dataset['id']}/export/pixels").status_code == 404


def test_drafts_and_unknown_datasets_are_not_found_for_outsiders(site, steward) -> None:
    draft = create(site["datasets"], steward)
    assert site["portal"].test_client().get(f"/datasets/{draft['id']}").status_code == 404
    outsider = signed_in(site["portal"], "someone")
    assert outsider.get(f"/datasets/{draft['id']}").status_code == 404
    assert outsider.get("/datasets/no-such-id").status_code == 404
    author = signed_in(site["portal"], "steward-1")
    assert author.get(f"/datasets/{draft['id']}").status_code == 200


def test_a_steward_creates_releases_and_publishes_from_a_study_query(site) -> None:
    client = signed_in(site["portal"], "steward-1")
    preview = client.get("/datasets/new?project=lung&modality=CT")
    assert preview.status_code == 200 and "studies of" in preview.get_data(as_text=True)
    created = post(client, "/datasets/new", project="lung", modality="CT", create="1",
                   name="CT from the portal", description="Made in a form.",
                   license_id="CC-BY-4.0", contact_name="Steward",
                   contact_email="steward@hospital.example", keywords="chest, ct")
    assert created.status_code == 302, created.get_data(as_text=True)
    dataset_id = created.headers["Location"].split("/")[-2]
    for action in ("release", "publish"):
        assert post(client, f"/datasets/{dataset_id}/{action}").status_code == 302
    found = site["portal"].test_client().get("/catalogue?q=portal")
    assert "CT from the portal" in found.get_data(as_text=True)
    again = post(client, f"/datasets/{dataset_id}/release")
    assert "wrong_state" in client.get(again.headers["Location"]).get_data(as_text=True)


def test_a_researcher_asks_and_a_steward_approves(site, steward) -> None:
    dataset = published(site, steward)
    asker = signed_in(site["portal"], "someone")
    assert asker.get(f"/datasets/{dataset['id']}/explore").status_code == 403
    assert post(asker, f"/datasets/{dataset['id']}/request-access",
                purpose="train a nodule detector").status_code == 302
    stewards = signed_in(site["portal"], "steward-1")
    review = stewards.get("/requests").get_data(as_text=True)
    assert "train a nodule detector" in review
    request_id = re.search(r'/requests/([0-9a-f-]+)/decide', review).group(1)
    assert post(stewards, f"/requests/{request_id}/decide", decision="approve").status_code \
        == 302
    explore = asker.get(f"/datasets/{dataset['id']}/explore")
    assert explore.status_code == 200 and "Series of study" in explore.get_data(as_text=True)
    assert "approved" in asker.get("/requests").get_data(as_text=True)


def test_the_history_marks_traces_verified_against_the_chain(site, steward) -> None:
    dataset = published(site, steward)
    page = site["portal"].test_client().get(f"/datasets/{dataset['id']}/history")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "CREATE_DATASET" in html
    assert "✓ verified" not in html, "nothing is anchored yet"
    assert site["anchorer"].step().anchored
    html = site["portal"].test_client().get(
        f"/datasets/{dataset['id']}/history").get_data(as_text=True)
    assert html.count("✓ verified") == 3, "create, release and publish, each proven"


def test_a_public_history_names_no_researcher_and_no_purpose(site, steward) -> None:
    dataset = published(site, steward)
    asker = signed_in(site["portal"], "someone")
    assert post(asker, f"/datasets/{dataset['id']}/request-access",
                purpose="thesis on the nodules of my own clinic").status_code == 302
    assert site["anchorer"].step().anchored
    path = f"/datasets/{dataset['id']}/history"
    for visitor in (site["portal"].test_client(), signed_in(site["portal"], "res-1")):
        page = visitor.get(path)
        html = page.get_data(as_text=True)
        assert page.status_code == 200 and "ACCESS_REQUESTED" in html
        assert "thesis on the nodules" not in html, "a stated purpose is not public"
        assert ">someone<" not in html and ">steward-1<" not in html, "nor who acted"
        assert html.count("person-") == 4, "each trace names its actor by a pseudonym"
        assert html.count("✓ verified") == 4, "what is shown is still proven"
    stewards = signed_in(site["portal"], "steward-1").get(path).get_data(as_text=True)
    assert ">someone<" in stewards and "thesis on the nodules" in stewards, \
        "the dataset's stewards see who and why"
    assert "person-" not in stewards


def test_history_of_unpublished_data_needs_the_policy(site, steward) -> None:
    dataset = create(site["datasets"], steward)
    assert site["portal"].test_client().get(
        f"/datasets/{dataset['id']}/history").status_code == 404
    stewards = signed_in(site["portal"], "steward-1")
    assert stewards.get(f"/datasets/{dataset['id']}/history").status_code == 200


def test_forms_without_the_csrf_token_are_refused(site, steward) -> None:
    dataset = create(site["datasets"], steward)
    client = signed_in(site["portal"], "steward-1")
    response = client.post(f"/datasets/{dataset['id']}/release")
    assert response.status_code == 400 and "csrf_failed" in response.get_data(as_text=True)
    assert client.get(f"/datasets/{dataset['id']}").status_code == 200
    assert "draft" in client.get(f"/datasets/{dataset['id']}/manage").get_data(as_text=True)


def test_public_pages_are_cached_for_anonymous_visitors_only(site, steward) -> None:
    dataset = published(site, steward)
    anonymous = site["portal"].test_client()
    first = anonymous.get(f"/datasets/{dataset['id']}")
    again = anonymous.get(f"/datasets/{dataset['id']}")
    assert "X-Page-Cache" not in first.headers and again.headers["X-Page-Cache"] == "hit"
    assert again.get_data() == first.get_data()
    assert again.headers["Content-Security-Policy"] == first.headers["Content-Security-Policy"]
    assert again.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    member = signed_in(site["portal"], "res-1")
    member.get(f"/datasets/{dataset['id']}")
    assert "X-Page-Cache" not in member.get(f"/datasets/{dataset['id']}").headers
    # a change made through the portal shows at once
    stewards = signed_in(site["portal"], "steward-1")
    assert post(stewards, f"/datasets/{dataset['id']}/invalidate",
                reason="wrong labels").status_code == 302
    after = anonymous.get(f"/datasets/{dataset['id']}")
    assert "X-Page-Cache" not in after.headers and "wrong labels" in after.get_data(as_text=True)


def test_a_change_made_past_the_portal_shows_at_once_to_anonymous_visitors(
        site, steward) -> None:
    dataset = published(site, steward, name="Thorax pilot one", keywords=["thorax"])
    anonymous = site["portal"].test_client()
    path, search = f"/datasets/{dataset['id']}", "/catalogue?q=thorax"
    for url in (path, search, path, search):
        assert anonymous.get(url).status_code == 200
    assert anonymous.get(path).headers["X-Page-Cache"] == "hit", "kept while nothing changed"
    # Invalidated straight at the dataset service, not through this portal.
    assert site["datasets"].test_client().post(
        f"/api/v1/datasets/{dataset['id']}/invalidate", headers=steward,
        json={"reason": "labels were wrong"}).status_code == 200
    landing = anonymous.get(path)
    assert "X-Page-Cache" not in landing.headers
    assert "labels were wrong" in landing.get_data(as_text=True)
    assert "Thorax pilot one" not in anonymous.get(search).get_data(as_text=True)
    assert anonymous.get(path).headers["X-Page-Cache"] == "hit", "kept again once drawn"


def test_catalogue_results_are_drawn_once_per_answer_and_never_stale(site, steward) -> None:
    published(site, steward, name="Thorax pilot one", keywords=["thorax"])
    member = signed_in(site["portal"], "res-1")  # signed in: the page cache stays out of it
    drawn = _drawn(site)

    def search() -> str:
        page = member.get("/catalogue?q=thorax")
        assert page.status_code == 200 and "X-Page-Cache" not in page.headers
        return page.get_data(as_text=True)

    first = search()
    assert "Thorax pilot one" in first and "Signed in as" in first
    assert search() == first
    assert drawn.count("_catalogue_main.html") == 1, "the search's part is drawn once"
    assert drawn.count("catalogue.html") == 2
    assert _conditional_answers(site) >= 1, "each request still asks the service"
    # A change the portal did not make (straight to the dataset service) shows at once.
    other = create(site["datasets"], steward, name="Thorax pilot two", keywords=["thorax"])
    service = site["datasets"].test_client()
    for step in ("release", "publish"):
        assert service.post(f"/api/v1/datasets/{other['id']}/{step}",
                            headers=steward).status_code == 200
    assert "Thorax pilot two" in search()
    assert drawn.count("_catalogue_main.html") == 2


def _conditional_answers(site: dict) -> float:
    """How many catalogue searches the dataset service answered 304, from its metrics."""
    metrics = site["datasets"].test_client().get("/metrics").get_data(as_text=True)
    found = re.search(r'vre_http_requests_total\{[^}]*endpoint="/api/v1/catalogue"'
                      r'[^}]*status="304"\} ([0-9.]+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_a_landing_page_is_drawn_once_per_record_around_each_visitors_part(
        site, steward) -> None:
    dataset = published(site, steward, name="Thorax pilot one")
    drawn = _drawn(site)
    path = f"/datasets/{dataset['id']}"
    member, other = signed_in(site["portal"], "res-1"), signed_in(site["portal"], "someone")
    pages = [client.get(path).get_data(as_text=True) for client in (member, other, member)]
    assert drawn.count("_landing_main.html") == 1, "the record is drawn once for everyone"
    assert [re.search(r"Signed in as .*?<strong>(.*?)</strong>", page).group(1)
            for page in pages] == ["res-1", "someone", "res-1"]
    assert all("Thorax pilot one</h1>" in page and re.search(
        r'request-access" class="form">\s*<input type="hidden" name="csrf_token"', page)
        for page in pages), "each visitor's form, with their session's token"
    anonymous = site["portal"].test_client().get(path)
    assert "Sign in to request access" in anonymous.get_data(as_text=True)
    # Invalidated straight at the dataset service: the next visit shows it.
    assert site["datasets"].test_client().post(
        f"/api/v1/datasets/{dataset['id']}/invalidate", headers=steward,
        json={"reason": "labels were wrong"}).status_code == 200
    page = member.get(path).get_data(as_text=True)
    assert "labels were wrong" in page and "Request access" not in page
    assert drawn.count("_landing_main.html") == 2
    # A draft reads differently for each caller: drawn on every visit, never kept.
    draft = create(site["datasets"], steward)
    author = signed_in(site["portal"], "steward-1")
    for _ in range(2):
        assert author.get(f"/datasets/{draft['id']}").status_code == 200
    assert drawn.count("_landing_main.html") == 4


def _drawn(site: dict) -> list[str]:
    """The names of the templates the portal draws from now on, in order."""
    drawn: list[str] = []

    def note(_app: object, template: object, **_: object) -> None:
        drawn.append(template.name)  # type: ignore[attr-defined]

    before_render_template.connect(note, site["portal"], weak=False)
    return drawn


def test_a_request_id_follows_a_page_into_the_services_it_calls(site) -> None:
    seen: list[tuple[str, str | None]] = []

    class Note(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # in the serving thread
            if record.getMessage() == "request":
                seen.append((record.path, current_request_id()))  # type: ignore[attr-defined]

    requests_log = logging.getLogger("vre.request")
    handler, level = Note(), requests_log.level
    requests_log.addHandler(handler)
    requests_log.setLevel(logging.INFO)
    try:
        page = site["portal"].test_client().get("/catalogue?q=followed",
                                                headers={"X-Request-ID": "page-4711"})
    finally:
        requests_log.removeHandler(handler)
        requests_log.setLevel(level)
    assert page.status_code == 200 and page.headers["X-Request-ID"] == "page-4711"
    assert ("/api/v1/catalogue", "page-4711") in seen, seen
