"""Start the test OpenID provider (tests/oidc/server.mjs, npm's oidc-provider in Keycloak's
URL layout) as a subprocess, and drive its sign-in form the way a browser would."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).with_name("server.mjs")
REALM = "vre"
CLIENT_ID = "vre-portal"
PORTAL_URL = "http://127.0.0.1:8600"  # the test configuration's portal address

# Test users: realm roles, roles of the portal client, and group paths, as Keycloak keeps them.
USERS: dict[str, dict[str, Any]] = {
    "alice": {"password": "alice-password", "sub": "8d7c2a52-5f8e-4f0e-9a57-0c3a2d6e1a01",
              "email": "alice@example.org", "displayName": "Alice Researcher",
              "realmRoles": ["researcher", "offline_access", "uma_authorization"],
              "clientRoles": {CLIENT_ID: ["steward"], "other-client": ["admin"]},
              "groups": ["/lung-ct", "/lung-ct/annotators"]},
    "bob": {"password": "bob-password", "sub": "bob-subject",
            "email": "bob@example.org", "realmRoles": ["auditor"], "groups": []},
    # A user federated from LDAP: Keycloak's "f:<provider id>:<name>" subject is longer than
    # the portal's ids, so the portal's id of her account is not her tokens' subject.
    "carol": {"password": "carol-password",
              "sub": "f:6a1e0f3c-2b7d-4c1e-9f5a-3d2c1b0a9e8f:carol",
              "email": "carol@example.org", "realmRoles": ["researcher"],
              "groups": ["/lung-ct"]},
    "erin": {"password": "erin-password", "sub": "0b8f5e2a-7c41-4d3e-a9b6-5e4f3a2b1c0d",
             "email": "erin@example.org", "realmRoles": ["admin"], "groups": []},
}


@dataclass
class OidcProvider:
    """A running provider: where it is, the portal's client, and the realm's signing key."""

    issuer: str
    server_url: str
    client_secret: str
    signing_key: rsa.RSAPrivateKey
    kid: str
    process: subprocess.Popen[bytes] = field(repr=False)

    def settings(self) -> dict[str, Any]:
        """Portal configuration values that point at this provider."""
        return {"identity": "oidc", "oidc_server_url": self.server_url, "oidc_realm": REALM,
                "oidc_client_id": CLIENT_ID, "oidc_client_secret": self.client_secret}

    def sign(self, claims: dict[str, Any]) -> str:
        """A token signed with the realm's own key, for tests that forge edge cases."""
        return jwt.encode(claims, self.signing_key, algorithm="RS256",
                          headers={"kid": self.kid})


def _settings(client_secret: str, key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    private_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    private_jwk.pop("key_ops", None)  # else the published public key says "sign" only
    private_jwk.update(kid=kid, use="sig", alg="RS256")
    return {
        "realm": REALM,
        "signingKey": private_jwk,
        "cookieKeys": [secrets.token_urlsafe(32)],
        "accessTokenTTL": 300,
        "clients": [{
            "client_id": CLIENT_ID, "client_secret": client_secret,
            "redirect_uris": [PORTAL_URL + "/signin/callback"],
            "post_logout_redirect_uris": [PORTAL_URL + "/"],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types": ["code"], "token_endpoint_auth_method": "client_secret_post",
        }],
        "users": USERS,
        # Realm roles of each client's service account (Keycloak's "service account roles").
        "serviceAccounts": {CLIENT_ID: {"realmRoles": ["service"]}},
    }


@contextmanager
def running_provider(workdir: Path) -> Iterator[OidcProvider]:
    """Start server.mjs on a free port; stop it on exit."""
    node = shutil.which("node")
    if node is None or not (REPO / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("the test OpenID provider needs node and `npm install` in the repository "
                    "root (oidc-provider, express)")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid, secret = "test-realm-key", secrets.token_urlsafe(32)
    settings = workdir / "oidc-settings.json"
    settings.write_text(json.dumps(_settings(secret, key, kid)))
    log = (workdir / "oidc-provider.log").open("wb")
    process = subprocess.Popen([node, str(SERVER), str(settings)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=log)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()  # "listening <issuer>"
        if not line.startswith("listening "):
            process.wait(5)
            pytest.fail(f"the test OpenID provider did not start: "
                        f"{(workdir / 'oidc-provider.log').read_text()[-2000:]}")
        issuer = line.split(" ", 1)[1]
        server_url = issuer.split("/realms/")[0]
        deadline = time.monotonic() + 10
        while requests.get(issuer + "/.well-known/openid-configuration",
                           timeout=2).status_code != 200:
            if time.monotonic() > deadline:
                pytest.fail("the test OpenID provider does not answer")
            time.sleep(0.05)
        yield OidcProvider(issuer, server_url, secret, key, kid, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def sign_in_at_provider(authorization_url: str, username: str, password: str,
                        browser: requests.Session | None = None) -> str:
    """Follow the provider's redirects, post its sign-in form, and return the URL it sends
    the browser back to (the portal's callback), without following that one."""
    browser = browser or requests.Session()
    response = browser.get(authorization_url, allow_redirects=True, timeout=10)
    form = re.search(r'<form id="kc-form-login" method="post" action="([^"]+)"', response.text)
    assert form, f"no sign-in form at {response.url}: {response.text[:500]}"
    response = browser.post(urljoin(response.url, form.group(1)), timeout=10,
                            data={"username": username, "password": password},
                            allow_redirects=False)
    while response.is_redirect:
        location = urljoin(response.url, response.headers["Location"])
        if location.startswith(PORTAL_URL):
            return location
        response = browser.get(location, allow_redirects=False, timeout=10)
    raise AssertionError(f"the provider did not send the browser back: {response.status_code} "
                         f"{response.text[:500]}")


def portal_path(url: str) -> str:
    """The path and query of a portal URL, for Flask's test client."""
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")
