"""Fixtures of the browser tests: the platform started with `vre up` in a temporary data
directory, headless Chromium (Debian's, driven by Playwright; Playwright never downloads a
browser of its own), pages that record console errors and CSP violations, and screenshots
under test-artifacts/screenshots/ at the repository root, one per step, named after the test.

Needs `apt-get install chromium` and the `test` extra (playwright); `scripts/setup.sh --test`
installs both. A missing browser fails the tests with that hint instead of skipping them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from dataset_service.bootstrap import DEMO_DATASET
from tests.helpers import auth
from tests.platform import platform_env, start_vre_up, stop_vre_up

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium"))
# No network beyond loopback here: Chromium must not try to phone home or update itself.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL_HINT = ("install Debian's chromium and the test extra: `scripts/setup.sh --test` "
                "(or `apt-get install -y --no-install-recommends chromium` and "
                "`.venv/bin/pip install -e .[test]`)")
ADMIN_PASSWORD = "browser-admin-password"
TIMEOUT_MS = 10_000
# Reported to the console by every page: CSP violations, as the page itself sees them.
CSP_REPORTER = """
document.addEventListener('securitypolicyviolation', (e) => {
  console.error('CSP violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline'));
});
"""


# -- the platform ---------------------------------------------------------------------------

@dataclass
class Platform:
    """A running `vre up`: its data directory, environment and process."""

    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def portal(self) -> str:
        """Base URL of the portal."""
        return f"http://127.0.0.1:{self.env['VRE_PORTAL_PORT']}"

    @property
    def dataset_service(self) -> str:
        """Base URL of the dataset service."""
        return f"http://127.0.0.1:{self.env['VRE_DATASET_PORT']}"

    def admin_token(self) -> str:
        """A bearer token of the first administrator (steward of the demo project)."""
        response = requests.post(self.portal + "/api/v1/tokens", timeout=10, json={
            "grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def api(self, method: str, path: str, **body: Any) -> dict[str, Any]:
        """Call the dataset service as the administrator; the JSON answer."""
        response = requests.request(method, self.dataset_service + path, timeout=30,
                                    headers=auth(self.admin_token()),
                                    json=None if method == "GET" else body)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return dict(response.json())

    def stop(self) -> None:
        """Ctrl-C, as an operator stops it; then kill whatever is left."""
        stop_vre_up(self.process, grace=30)
        state = self.home / "run" / "state.json"
        if state.is_file():  # a supervisor that died could not stop its children
            for child in json.loads(state.read_text()).get("processes", []):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child["pid"], signal.SIGKILL)


def start_platform(workdir: Path, **settings: str) -> Platform:
    """`vre up` in a fresh data directory on free ports (SQLite), waiting for its banner."""
    env = platform_env(
        workdir, ADMIN_PASSWORD, VRE_ANCHOR_INTERVAL_SECONDS="1",
        # Every test signs in from 127.0.0.1, many times a minute: the limit that guards a
        # real portal would lock later tests out (it is tested on its own).
        VRE_SIGNIN_LIMIT_PER_ADDRESS="1000", VRE_SIGNIN_LIMIT_PER_USER="1000", **settings)
    try:  # each process may take a while on a loaded machine
        process, log = start_vre_up(env, workdir, seconds=300)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    platform = Platform(Path(env["VRE_HOME"]), env, process, log)
    ready = requests.get(platform.portal + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    return platform


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The whole platform with its demo data, the anchor worker anchoring every second."""
    running = start_platform(tmp_path_factory.mktemp("vre-up"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def published(platform: Platform) -> dict[str, Any]:
    """The demo dataset of the demo project's knee MR studies, published by the first start."""
    found = platform.api("GET", "/api/v1/catalogue?q=knee")["results"]
    assert [d["name"] for d in found] == [DEMO_DATASET["name"]], found
    return platform.api("GET", f"/api/v1/datasets/{found[0]['id']}")


# -- the browser ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, with a fresh profile (Playwright makes a new user data
    directory for every launch and deletes it on close)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright package is missing: {INSTALL_HINT}")
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                          args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Pages:
    """Opens pages in fresh browser contexts (no cookies shared), records each page's
    console errors, uncaught exceptions and CSP violations, and takes the test's
    screenshots."""

    browser: Browser
    test_name: str
    contexts: list[BrowserContext] = field(default_factory=list)
    problems_of: dict[int, list[str]] = field(default_factory=dict)
    _steps: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def open(self, **context_options: Any) -> Page:
        """A new page in a new context (a separate visitor); options as Playwright's."""
        context = self.browser.new_context(**{"viewport": {"width": 1280, "height": 800},
                                              "locale": "en-GB", **context_options})
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(CSP_REPORTER)
        self.contexts.append(context)
        page = context.new_page()
        problems: list[str] = []
        self.problems_of[id(page)] = problems

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                where = message.location.get("url", "")
                problems.append(f"console error: {message.text}" + (f" ({where})" if where else ""))

        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        return page

    def problems(self, page: Page) -> list[str]:
        """Console errors and CSP violations this page reported so far."""
        return list(self.problems_of[id(page)])

    def shot(self, page: Page, step: str) -> Path:
        """A full-page screenshot: <test>-<NN>-<step>.png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.test_name}-{next(self._steps):02d}-{slug(step)}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def close(self, failed: bool) -> None:
        """Close every context; on failure first keep a screenshot of each open page."""
        for context in self.contexts:
            if failed:
                for page in context.pages:
                    # A page that died must not hide the test's own failure.
                    with contextlib.suppress(Exception):
                        self.shot(page, "failed")
            context.close()


def slug(text: str) -> str:
    """A file-name-safe form of a test or step name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test, so fixtures can tell a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def pages(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Pages]:
    """This test's pages; its earlier screenshots are removed first."""
    name = slug(request.node.name)
    for old in SCREENSHOTS.glob(f"{name}-[0-9][0-9]-*.png"):
        old.unlink()
    opened = Pages(browser, name)
    yield opened
    report = getattr(request.node, "report_call", None)
    opened.close(failed=report is None or report.failed)


@pytest.fixture
def page(pages: Pages) -> Page:
    """One page of an anonymous visitor."""
    return pages.open()


def sign_in(page: Page, base_url: str, username: str, password: str) -> None:
    """Sign in with the portal's own form (local accounts)."""
    page.goto(base_url + "/signin")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()

