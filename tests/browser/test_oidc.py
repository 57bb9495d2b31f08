"""Signing in to the portal through the OpenID provider, in a real browser.

The provider is the test one of tests/oidc (npm's oidc-provider in Keycloak's URL layout);
the portal runs as its own process (`vre serve portal`) with VRE_IDENTITY=oidc. Chromium
follows the redirects, fills the provider's form, and comes back signed in."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.browser.conftest import Pages
from tests.helpers import free_port
from tests.oidc import provider as oidc
from vre.config import env_name
from vre.tokens import generate_signing_key

pytestmark = pytest.mark.integration


@dataclass
class OidcPortal:
    """The portal process signing people in at the provider."""

    url: str
    provider: oidc.OidcProvider


def _portal_env(workdir: Path, port: int, provider: oidc.OidcProvider) -> dict[str, str]:
    key = workdir / "token-signing.pem"
    generate_signing_key(key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRE_")}
    env.update({env_name(k): str(v) for k, v in provider.settings().items()})
    env.update(VRE_HOME=str(workdir / "var"), VRE_PORTAL_PORT=str(port),
               VRE_PORTAL_URL=f"http://127.0.0.1:{port}",
               VRE_SECRET_KEY=secrets.token_urlsafe(48), VRE_SIGNING_KEY_FILE=str(key),
               VRE_DEMO_DATA="false", VRE_LOG_LEVEL="WARNING", VRE_THREADS="4",
               VRE_REVOCATION_FEEDS="portal")  # the portal runs alone: its own feed only
    return env


@pytest.fixture(scope="module")
def oidc_portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcPortal]:
    """The test provider, with the portal's callback on a free port, and the portal."""
    workdir = tmp_path_factory.mktemp("oidc-portal")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        # The provider registers the portal's redirect URIs under this address.
        patch.setattr(oidc, "PORTAL_URL", url)
        with oidc.running_provider(workdir) as provider:
            env = _portal_env(workdir, port, provider)
            vre = [sys.executable, "-m", "launcher"]
            migrated = subprocess.run([*vre, "migrate", "portal"], env=env, cwd=workdir,
                                      capture_output=True, text=True, timeout=60)
            assert migrated.returncode == 0, migrated.stdout + migrated.stderr
            log = workdir / "portal.log"
            with log.open("wb") as out:
                process = subprocess.Popen([*vre, "serve", "portal"], env=env, cwd=workdir,
                                           stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            try:
                _wait_ready(url, process, log)
                yield OidcPortal(url, provider)
            finally:
                _stop(process)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the portal did not start: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def sign_in_at_provider(page: Page, provider: oidc.OidcProvider, username: str) -> None:
    """Fill the provider's sign-in form the browser was sent to."""
    expect(page).to_have_url(re.compile(re.escape(provider.issuer) + r"/login-actions/"))
    form = page.locator("form#kc-form-login")
    form.locator("input[name=username]").fill(username)
    form.locator("input[name=password]").fill(oidc.USERS[username]["password"])
    form.get_by_role("button", name="Sign in").click()


def portal_problems(pages: Pages, page: Page, provider: oidc.OidcProvider) -> list[str]:
    """Console errors and CSP violations, less the provider's own (its missing favicon)."""
    return [p for p in pages.problems(page) if provider.server_url not in p]


def test_sign_in_through_the_provider(oidc_portal: OidcPortal, pages: Pages,
                                      page: Page) -> None:
    portal, provider = oidc_portal.url, oidc_portal.provider
    page.goto(portal + "/account/password")  # needs a signed-in user: off to the provider
    expect(page.locator("form#kc-form-login")).to_be_visible()
    pages.shot(page, "provider-form")
    sign_in_at_provider(page, provider, "alice")

    expect(page).to_have_url(portal + "/account/password")  # back where the visit began
    expect(page.get_by_role("banner")).to_contain_text("Signed in as alice")
    expect(page.get_by_text("identity provider")).to_be_visible()  # no password here
    expect(page.get_by_label("Current password")).to_have_count(0)
    pages.shot(page, "signed-in")
    page.goto(portal + "/")
    expect(page.get_by_role("banner")).to_contain_text("Signed in as alice")
    assert portal_problems(pages, page, provider) == []


def test_sign_out_ends_the_provider_session_too(oidc_portal: OidcPortal, pages: Pages,
                                                page: Page) -> None:
    portal, provider = oidc_portal.url, oidc_portal.provider
    page.goto(portal + "/signin")
    sign_in_at_provider(page, provider, "bob")
    expect(page.get_by_role("banner")).to_contain_text("Signed in as bob")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(re.escape(provider.issuer)
                                        + r"/protocol/openid-connect/logout"))
    pages.shot(page, "provider-sign-out")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(portal + "/")
    expect(page.get_by_text("Signed in as")).to_have_count(0)
    pages.shot(page, "signed-out")

    # Signing in again asks for the password again: the provider's session is gone too.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sign in").click()
    expect(page.locator("form#kc-form-login")).to_be_visible()
    assert portal_problems(pages, page, provider) == [], \
        "no console errors or CSP violations on the portal's pages"
