"""The portal in a real browser, against the whole platform started with `vre up`: browsing
the catalogue anonymously, signing in, a steward's create-release-publish round, the
verified history, keyboard use and a tablet-sized screen. Each step leaves a screenshot in
test-artifacts/screenshots/."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import ADMIN_PASSWORD, Pages, Platform, sign_in

pytestmark = pytest.mark.integration

VERIFY_WITHIN_SECONDS = 30


def test_anonymous_visitor_searches_filters_and_opens_a_landing_page(
        platform: Platform, published: dict[str, Any], pages: Pages, page: Page) -> None:
    page.goto(platform.portal + "/catalogue")
    expect(page.get_by_role("heading", name="Dataset catalogue")).to_be_visible()
    expect(page.get_by_text("Signed in as")).to_have_count(0)
    pages.shot(page, "catalogue")

    search = page.get_by_role("searchbox", name="Search")
    search.fill("knee")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"/catalogue\?.*\bq=knee\b"))
    results = page.locator("article.result")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text(published["name"])
    pages.shot(page, "searched")

    filters = page.get_by_role("complementary", name="Filters")
    filters.get_by_role("link", name="MR", exact=True).click()
    expect(page).to_have_url(re.compile(r"\bmodality=MR\b"))
    expect(page).to_have_url(re.compile(r"\bq=knee\b"))  # the search survives the filter
    expect(filters.get_by_role("link", name="remove filter")).to_have_count(1)
    expect(results).to_have_count(1)
    filtered_url = page.url
    pages.shot(page, "filtered")

    # The URL is the whole state: a fresh visit to it shows the same page.
    shared = pages.open()
    shared.goto(filtered_url)
    expect(shared.get_by_role("searchbox", name="Search")).to_have_value("knee")
    expect(shared.get_by_role("complementary", name="Filters")).to_contain_text("MR")
    expect(shared.locator("article.result")).to_have_count(1)

    page.get_by_role("link", name=published["name"]).click()
    expect(page).to_have_url(f"{platform.portal}/datasets/{published['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text(published["name"])
    expect(page.get_by_role("link", name="CC-BY-4.0")).to_be_visible()
    expect(page.get_by_role("link", name="Sign in to request access")).to_be_visible()
    json_ld = json.loads(page.locator("head script[type='application/ld+json']").text_content()
                         or "null")
    assert json_ld["@type"] == "Dataset" and json_ld["name"] == published["name"]
    assert json_ld["@id"].endswith("/pid/" + published["id"])
    pages.shot(page, "landing")

    page.go_back()
    expect(page).to_have_url(filtered_url)
    page.goto(json_ld["@id"])  # the persistent identifier resolves to the landing page
    expect(page).to_have_url(f"{platform.portal}/datasets/{published['id']}")

    for visited in (page, shared):
        assert pages.problems(visited) == [], "no console errors, no CSP violations"


def test_local_account_signs_in_and_out(platform: Platform, pages: Pages, page: Page) -> None:
    sign_in(page, platform.portal, "admin", "not-the-password")
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_text("Signed in as")).to_have_count(0)
    pages.shot(page, "refused")

    sign_in(page, platform.portal, "admin", ADMIN_PASSWORD)
    expect(page.get_by_role("banner")).to_contain_text("Signed in as admin")
    expect(page.get_by_role("link", name="My datasets")).to_be_visible()
    pages.shot(page, "signed-in")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("navigation", name="Main").get_by_role(
        "link", name="Sign in")).to_be_visible()
    expect(page.get_by_text("Signed in as")).to_have_count(0)
    pages.shot(page, "signed-out")
    # The refused attempt answers 401, which Chromium logs; nothing else may be logged.
    assert [p for p in pages.problems(page) if "status of 401" not in p] == []


def test_steward_creates_releases_and_publishes_and_history_is_verified(
        platform: Platform, pages: Pages, page: Page) -> None:
    name = "Thoracic and abdominal CT"
    sign_in(page, platform.portal, "admin", ADMIN_PASSWORD)  # steward of the demo project
    page.goto(platform.portal + "/my/datasets")
    page.get_by_role("link", name="New dataset from a study query").click()
    expect(page).to_have_url(platform.portal + "/datasets/new")

    page.get_by_label("Project", exact=True).select_option("demo")
    page.get_by_label("Modality").fill("CT")
    page.get_by_role("button", name="Preview selection").click()
    selection = page.get_by_role("heading", name=re.compile(r"^Selection: "))
    expect(selection).to_have_text(re.compile(r"Selection: [1-9]\d* studies of [1-9]\d* "))
    expect(page.get_by_role("img", name=re.compile(r"^Series by modality: CT \d+$"))) \
        .to_be_visible()
    pages.shot(page, "preview")

    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Description (plain text)").fill(
        "Synthetic CT studies of the chest and abdomen.\n\nMade by a steward in the browser.")
    page.get_by_label("Licence (SPDX id; empty: the project's default)").fill("CC-BY-4.0")
    page.get_by_label("Contact name (empty: the project's default)").fill("Dana Steward")
    page.get_by_label("Contact email").fill("dana.steward@example.org")
    pages.shot(page, "described")
    page.get_by_role("button", name="Create draft").click()

    expect(page).to_have_url(re.compile(r"/datasets/[0-9a-f-]{36}/manage$"))
    dataset_id = page.url.rsplit("/", 2)[-2]
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_contain_text(name)
    expect(heading.locator(".badge")).to_have_text("draft")
    pages.shot(page, "draft")

    page.get_by_role("button", name="Release").click()
    expect(heading.locator(".badge")).to_have_text("released")
    pages.shot(page, "released")
    page.get_by_role("button", name="Publish").click()
    expect(heading.locator(".badge")).to_have_text("published")
    expect(page.get_by_role("button", name="Publish")).to_have_count(0)
    pages.shot(page, "published")
    assert pages.problems(page) == []

    visitor = pages.open()
    visitor.goto(platform.portal + "/catalogue")
    visitor.get_by_role("searchbox", name="Search").fill("thoracic")
    visitor.get_by_role("searchbox", name="Search").press("Enter")
    visitor.get_by_role("link", name=name).click()
    expect(visitor).to_have_url(f"{platform.portal}/datasets/{dataset_id}")
    expect(visitor.locator(".eyebrow .badge")).to_have_text("published")
    expect(visitor.get_by_text("Dana Steward", exact=True)).to_be_visible()
    pages.shot(visitor, "public-landing")

    visitor.get_by_role("link", name="History with verification").click()
    expect(visitor).to_have_url(f"{platform.portal}/datasets/{dataset_id}/history")
    rows = visitor.locator("table.history tbody tr")
    deadline = time.monotonic() + VERIFY_WITHIN_SECONDS
    while visitor.locator("table.history .verified").count() < 3 \
            or visitor.locator("table.history .unverified").count():
        assert time.monotonic() < deadline, \
            f"not every trace verified within {VERIFY_WITHIN_SECONDS} s:\n{rows.all_inner_texts()}"
        time.sleep(1)
        visitor.reload()
    actions = [row.locator("td").nth(1).inner_text() for row in rows.all()]
    assert actions == ["UPDATE_DATASET · PUBLISH", "UPDATE_DATASET · RELEASE",
                       "CREATE_DATASET"], actions
    for row in rows.all():
        mark = row.locator(".verified")
        expect(mark).to_have_text("✓ verified")
        expect(mark).to_have_attribute("title", re.compile(r"anchored on chain"))
    pages.shot(visitor, "history-verified")
    assert pages.problems(visitor) == []


def test_keyboard_skip_link_search_and_open_a_result(
        platform: Platform, published: dict[str, Any], pages: Pages, page: Page) -> None:
    page.goto(platform.portal + "/catalogue")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()  # hidden off-screen until focused
    pages.shot(page, "skip-link")

    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#main$"))
    page.keyboard.press("Tab")  # the first control of the main content: the search box
    search = page.get_by_role("searchbox", name="Search")
    expect(search).to_be_focused()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.type("knee")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"\bq=knee\b"))
    expect(page.locator("article.result")).to_have_count(1)
    pages.shot(page, "searched-by-keyboard")

    for _ in range(40):  # tab on until the result's link has the focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == published["name"]:
            break
    else:
        pytest.fail("the result's link cannot be reached with Tab")
    pages.shot(page, "result-focused")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{platform.portal}/datasets/{published['id']}")
    assert pages.problems(page) == []


def test_landing_page_on_a_tablet(platform: Platform, published: dict[str, Any],
                                  pages: Pages) -> None:
    page = pages.open(viewport={"width": 768, "height": 1024}, has_touch=True)
    page.goto(f"{platform.portal}/datasets/{published['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text(published["name"])
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways at 768 px: {width}"
    # One column: the licence panel comes below the description, not beside it.
    about = page.locator("section[aria-labelledby=about]").bounding_box()
    panel = page.locator("aside.panel").bounding_box()
    assert about and panel and panel["y"] > about["y"] + about["height"]
    # Every chart's numbers are inside the chart's drawing, not cut off at its edge.
    clipped = page.evaluate("""() => [...document.querySelectorAll('figure.chart svg')]
        .flatMap((svg) => {
          const box = svg.viewBox.baseVal;
          return [...svg.querySelectorAll('text')].map((t) => [svg, t, t.getBBox()])
            .filter(([, , b]) => b.y < box.y || b.y + b.height > box.y + box.height)
            .map(([s, t]) => s.getAttribute('aria-label').split(':')[0] + ': ' + t.textContent);
        })""")
    pages.shot(page, "tablet-landing")
    assert clipped == [], f"chart labels drawn outside their chart: {clipped}"
    assert pages.problems(page) == []
