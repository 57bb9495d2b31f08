"""Results leave through review, in a real browser against the whole platform started with
`vre up`: a researcher's job on the demo dataset writes a table and a figure, the researcher
asks through the API for both to leave, the two stewards of the demo project each sign in,
find the request waiting for their review, look at the previews and approve every file from
the page, and the researcher signs in and downloads a file whose SHA-256 is the one pinned at
submission. Screenshots show each step."""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.browser.conftest import ADMIN_PASSWORD, Pages, Platform, sign_in
from tests.helpers import auth

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")]

RESEARCHER, STEWARD = "export-researcher", "export-steward"
PASSWORD = "export-browser-password"
JOB_SECONDS = 120


def figure() -> bytes:
    """A 2x2 PNG, as a plotting library would write one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"\x00\xff\x00\x00\x00\x00\xff" * 2
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


WRITE_RESULTS = f"""
import os, pathlib
out = pathlib.Path(os.environ["VRE_JOB_OUTPUT"])
(out / "results.csv").write_text("group,n\\nA,40\\nB,25\\n")
(out / "figure.png").write_bytes({figure()!r})
print("written")
"""


def token_of(platform: Platform, username: str, password: str) -> str:
    answer = requests.post(platform.portal + "/api/v1/tokens", timeout=10, json={
        "grant_type": "password", "username": username, "password": password})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def account(platform: Platform, username: str, *roles: str) -> str:
    """A local account with a known password (made once per platform); its user id."""
    admin = auth(platform.admin_token())
    users = requests.get(platform.portal + "/api/v1/users", timeout=10, headers=admin).json()
    found = next((u for u in users if u["username"] == username), None)
    if found is None:
        made = requests.post(platform.portal + "/api/v1/users", timeout=10, headers=admin,
                             json={"username": username, "roles": list(roles),
                                   "password": PASSWORD})
        assert made.status_code == 201, made.text
        found = made.json()
    return str(found["id"])


def the_request(platform: Platform, published: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The researcher's job writes its results; they ask for them to leave. The request and
    the researcher's token."""
    researcher = account(platform, RESEARCHER, "researcher")
    steward = account(platform, STEWARD, "steward", "researcher")
    project = published["project_id"]
    for user_id, role in ((researcher, "researcher"), (steward, "steward")):
        platform.api("PUT", f"/api/v1/projects/{project}/members", user_id=user_id, role=role)
    headers = auth(token_of(platform, RESEARCHER, PASSWORD))
    job = requests.post(platform.portal + "/api/v1/jobs", timeout=30, headers=headers, json={
        "command": [sys.executable, "-c", WRITE_RESULTS], "datasets": [published["id"]]})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    deadline = time.monotonic() + JOB_SECONDS
    while (state := requests.get(f"{platform.portal}/api/v1/jobs/{job_id}", timeout=10,
                                 headers=headers).json())["state"] not in (
            "succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"the job did not end: {state}"
        time.sleep(0.5)
    assert state["state"] == "succeeded", requests.get(
        f"{platform.portal}/api/v1/jobs/{job_id}/logs", timeout=10, headers=headers).text
    asked = requests.post(platform.portal + "/api/v1/exports", timeout=60, headers=headers,
                          json={"title": "Table and figure for the paper",
                                "purpose": "Group counts and the figure of the results",
                                "files": [f"jobs/{job_id}/results.csv",
                                          f"jobs/{job_id}/figure.png"]})
    assert asked.status_code == 201, asked.text
    export = asked.json()
    assert export["state"] == "in_review", export
    assert all(f["verdict"] != "refuse" for f in export["files"]), export["files"]
    return export, job_id


def review(pages: Pages, page: Page, platform: Platform, export: dict[str, Any],
           username: str, password: str, who: str) -> None:
    """A steward signs in, finds the request waiting, sees its previews and approves every
    file from the page."""
    sign_in(page, platform.portal, username, password)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Exports").click()
    expect(page.get_by_role("heading", name="Waiting for my review")).to_be_visible()
    pages.shot(page, f"{who}-waiting")
    page.get_by_role("link", name=export["title"]).click()
    expect(page).to_have_url(f"{platform.portal}/exports/{export['id']}")
    expect(page.get_by_role("heading", level=1)).to_have_text(export["title"])
    expect(page.get_by_role("cell", name="40", exact=True)).to_be_visible()  # the table
    image = page.get_by_role("img", name=re.compile("^Preview of .*figure.png$"))
    expect(image).to_be_visible()
    assert image.evaluate("(img) => img.complete && img.naturalWidth") == 2
    for item in export["files"]:
        expect(page.get_by_text(item["sha256"])).to_be_visible()
    pages.shot(page, f"{who}-previews")
    for item in export["files"]:
        form = page.get_by_role("group", name=f"Your vote on {item['path']}")
        form.get_by_label("Approve").check()
        form.get_by_role("textbox", name="Comment").fill(f"checked by {who}")
        form.get_by_role("button", name=re.compile("^Vote")).click()
        expect(page.get_by_role("status")).to_contain_text("Your vote (approve) was recorded.")
    expect(page.get_by_role("group", name=re.compile("^Your vote on"))).to_have_count(0)
    pages.shot(page, f"{who}-approved")
    assert pages.problems(page) == [], "no console errors, no CSP violations"


def test_two_reviewers_approve_in_the_browser(platform: Platform, published: dict[str, Any],
                                              pages: Pages) -> None:
    export, _ = the_request(platform, published)

    review(pages, pages.open(), platform, export, "admin", ADMIN_PASSWORD, "steward-a")
    review(pages, pages.open(), platform, export, STEWARD, PASSWORD, "steward-b")

    page = pages.open(accept_downloads=True)
    sign_in(page, platform.portal, RESEARCHER, PASSWORD)
    page.goto(f"{platform.portal}/exports")
    row = page.get_by_role("row", name=re.compile(re.escape(export["title"])))
    expect(row.locator(".badge")).to_have_text("approved")
    pages.shot(page, "requester-list")
    row.get_by_role("link", name=export["title"]).click()
    table = next(f for f in export["files"] if f["path"].endswith("results.csv"))
    expect(page.get_by_text(table["sha256"])).to_be_visible()
    pages.shot(page, "requester-approved")
    with page.expect_download() as started:
        page.get_by_role("button", name=f"Download {table['path']}").click()
    download = started.value
    assert download.suggested_filename == "results.csv"
    data = Path(download.path()).read_bytes()
    assert hashlib.sha256(data).hexdigest() == table["sha256"]
    assert data == b"group,n\nA,40\nB,25\n"
    page.reload()
    expect(page.locator("#export-state .badge")).to_have_text("released")
    pages.shot(page, "requester-downloaded")
    assert "/api/v1/exports/download/" not in page.content(), "no link shows in a page"
    assert pages.problems(page) == []
