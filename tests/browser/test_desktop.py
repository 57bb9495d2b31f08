"""A desktop in a real browser, against the whole platform started with `vre up`: the first
administrator (steward of the demo project) launches a desktop with the demo dataset from the
launch form, sees its screen through noVNC and the VNC proxy, types a command into its
terminal that lists the mounted dataset into ~/persistent, finds that listing in their
persistent folder on the host, extends it, pastes text into it, disconnects and reconnects
with a fresh ticket, and stops it from the page. Screenshots, among them
test-artifacts/screenshots/desktop.png, show each step."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.browser.conftest import ADMIN_PASSWORD, SCREENSHOTS, Pages, Platform, sign_in
from tests.helpers import auth

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("Xvnc") or not shutil.which("bwrap"),
                                 reason="needs bubblewrap and TigerVNC's Xvnc")]

START_MS = 90_000  # a sandboxed X server on a loaded machine
WRITTEN_WITHIN_SECONDS = 30


def wait_for_file(path: Path, seconds: float = WRITTEN_WITHIN_SECONDS) -> str:
    """The file's text once a command in the desktop has written it and closed it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.is_file():
            first = path.read_text(errors="replace")
            time.sleep(0.5)
            if first and path.read_text(errors="replace") == first:
                return first
        time.sleep(0.5)
    raise AssertionError(f"nothing was written to {path.name} within {seconds} s")


def screen_colours(page: Page) -> int:
    """How many different colours the noVNC canvas shows (sampled): a desktop with a terminal
    and a window manager has many, a blank or unconnected screen one."""
    return int(page.evaluate("""() => {
        const canvas = document.querySelector('#screen canvas');
        if (!canvas || !canvas.width) return 0;
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const seen = new Set();
        for (let i = 0; i < data.length; i += 4 * 97) {
          seen.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
        }
        return seen.size;
    }"""))


# A point of the terminal's title bar on the remote screen: the session opens the terminal at
# +40+40, and the window manager draws its title bar there, in another colour once focused.
TITLE_BAR = (400, 48)


def title_bar_colour(page: Page) -> list[int]:
    return list(page.evaluate("""([x, y]) => Array.from(document.querySelector('#screen canvas')
        .getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3))""", list(TITLE_BAR)))


def focus_terminal(page: Page) -> None:
    """Click into the terminal and wait until the window manager shows it focused: keys sent
    before that would go to no window."""
    before = title_bar_colour(page)
    page.locator("#screen canvas").click(position={"x": 200, "y": 150})
    deadline = time.monotonic() + 10
    while title_bar_colour(page) == before:
        if time.monotonic() > deadline:
            break  # it had the focus already
        time.sleep(0.2)


def type_in_terminal(page: Page, command: str) -> None:
    """Type a command line into the focused terminal."""
    page.keyboard.type(command, delay=15)
    page.keyboard.press("Enter")


def test_researcher_works_in_a_desktop_with_the_demo_dataset(
        platform: Platform, published: dict[str, Any], pages: Pages, page: Page) -> None:
    sign_in(page, platform.portal, "admin", ADMIN_PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="My desktops").click()
    expect(page.get_by_role("heading", name="My desktops")).to_be_visible()
    page.get_by_role("link", name="Launch a desktop").click()
    expect(page).to_have_url(platform.portal + "/desktops/new")
    expect(page.get_by_role("radio", name=re.compile(r"^Research desktop"))).to_be_checked()
    page.get_by_role("radio", name=re.compile(r"^desktop \d")).check()
    page.get_by_role("checkbox", name=re.compile(re.escape(published["name"]))).check()
    pages.shot(page, "launch-form")
    page.get_by_role("button", name="Launch").click()

    expect(page).to_have_url(re.compile(r"/desktops/d[0-9a-f]{16}$"))
    desktop_id = page.url.rsplit("/", 1)[-1]
    try:
        work_in_the_desktop(platform, published, pages, page, desktop_id)
    finally:  # desktops outlive `vre up` (they are re-adopted at its next start)
        requests.delete(f"{platform.portal}/api/v1/desktops/{desktop_id}", timeout=30,
                        headers=auth(platform.admin_token()))


def work_in_the_desktop(platform: Platform, published: dict[str, Any], pages: Pages,
                        page: Page, desktop_id: str) -> None:
    """Everything done in the opened desktop, up to stopping it from the page."""
    screen = page.locator("#screen")
    expect(screen).to_have_attribute("data-connected", "true", timeout=START_MS)
    expect(page.get_by_role("status")).to_contain_text("Connected")
    deadline = time.monotonic() + 30
    while screen_colours(page) < 3:  # the first frames arrive just after connecting
        assert time.monotonic() < deadline, "the screen stays blank"
        time.sleep(0.5)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "desktop.png"))

    focus_terminal(page)
    type_in_terminal(page, "ls -R ~/datasets > ~/persistent/listing.txt")
    desktops = requests.get(platform.portal + "/api/v1/desktops", timeout=10,
                            headers=auth(platform.admin_token())).json()["desktops"]
    mine = next(d for d in desktops if d["id"] == desktop_id)
    assert mine["datasets"] == [published["id"]]
    listing = wait_for_file(platform.home / "workspaces" / mine["owner_id"] / "listing.txt")
    tree = platform.home / "repository" / "datasets" / published["id"]
    files = sorted(p.name for p in tree.rglob("*") if p.is_file())
    assert files, f"the demo dataset's tree on the host is empty: {tree}"
    assert all(name in listing for name in files), f"not every file is listed:\n{listing}"
    assert "Knee-MR" in listing, listing  # its folder under ~/datasets, named after it
    pages.shot(page, "listed")

    # The desktop stops at its expiry unless extended: the page shows the time left.
    expect(page.locator("#time-left")).to_be_visible()
    page.get_by_role("button", name="Extend").click()
    expect(page.get_by_role("status")).to_contain_text("Extended.")

    # Paste in: the text reaches the desktop's clipboard, where its programs read it (xclip
    # waits for the clipboard's owner, which fetches the text from the viewer on demand).
    page.get_by_text("Paste into the desktop").click()
    page.get_by_label("Text to send to the desktop's clipboard").fill("pasted-in from the page")
    page.get_by_role("button", name="Send to the desktop").click()
    expect(page.get_by_role("status")).to_contain_text("Sent to the desktop")
    page.get_by_text("Paste into the desktop").click()  # fold the box away again
    focus_terminal(page)
    type_in_terminal(page, "xclip -o -selection clipboard > ~/persistent/pasted.txt")
    pasted = wait_for_file(platform.home / "workspaces" / mine["owner_id"] / "pasted.txt")
    assert pasted == "pasted-in from the page"
    pages.shot(page, "pasted")

    # A fresh ticket for every connection: disconnect, then connect again.
    page.get_by_role("button", name="Disconnect").click()
    expect(screen).to_have_attribute("data-connected", "false")
    expect(page.get_by_role("status")).to_contain_text("Disconnected")
    page.get_by_role("button", name="Reconnect").click()
    expect(screen).to_have_attribute("data-connected", "true", timeout=START_MS)
    pages.shot(page, "reconnected")

    page.get_by_role("button", name="Stop desktop").click()
    expect(page).to_have_url(platform.portal + "/desktops")
    expect(page.get_by_role("status")).to_contain_text("The desktop was stopped.")
    card = page.locator("article.desktop-card", has_text=desktop_id)
    expect(card.locator(".badge")).to_have_text("stopped")
    expect(card.get_by_role("button", name=re.compile("Stop"))).to_have_count(0)
    pages.shot(page, "stopped")
    assert pages.problems(page) == []
