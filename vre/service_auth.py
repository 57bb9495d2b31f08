"""Tokens a program sends to the platform's services: a fixed one, or one obtained from the
issuer with client credentials (or a password) and renewed before it expires."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Protocol

import requests

from vre.config import Config
from vre.services import derive_service_secret


class TokenSource(Protocol):
    """Anything that can hand out a current bearer token."""

    def token(self) -> str: ...


class StaticToken:
    """A token given from outside (e.g. on the command line)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str:
        return self._token


class FileToken:
    """A token the platform keeps current in a file (a workload's, renewed while it runs):
    read anew at each call, so a renewal takes effect at once."""

    def __init__(self, path: str) -> None:
        self.path = path

    def token(self) -> str:
        with open(self.path, encoding="ascii") as handle:
            return handle.read().strip()


class IssuedToken:
    """A token from the portal's (or Keycloak's) token endpoint, cached until near expiry."""

    def __init__(self, token_url: str, grant: dict[str, str], timeout: float = 10.0) -> None:
        self.token_url = token_url
        self._grant = grant
        self._timeout = timeout
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    @classmethod
    def for_service(cls, portal_url: str, client_id: str, secret: str) -> IssuedToken:
        return cls(portal_url + "/api/v1/tokens", {
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})

    @classmethod
    def for_user(cls, portal_url: str, username: str, password: str) -> IssuedToken:
        return cls(portal_url + "/api/v1/tokens", {
            "grant_type": "password", "username": username, "password": password})

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires:
                response = requests.post(self.token_url, json=self._grant, timeout=self._timeout)
                if response.status_code != 200:
                    raise PermissionError(f"token request to {self.token_url} failed: "
                                          f"{response.status_code} {response.text[:200]}")
                body = response.json()
                self._token = body["access_token"]
                # Renew at 80% of the lifetime, so a token never expires in flight.
                self._expires = time.monotonic() + 0.8 * float(body.get("expires_in", 60))
            return self._token


def command_line_tokens(config: Config, token: str | None, user: str | None,
                        client: str) -> TokenSource | None:
    """Who a command acts as: a given token; a user (password read from stdin); or, on the
    platform's own machine, the service credentials derived from its root secret."""
    if token:
        return StaticToken(token)
    if user:
        password = sys.stdin.readline().rstrip("\n")
        return IssuedToken.for_user(config.url_of("portal"), user, password)
    secrets_file = config.home / "secrets" / "platform.json"
    root = config.secret_key or (json.loads(secrets_file.read_text())["secret_key"]
                                 if secrets_file.is_file() else None)
    if root:
        return IssuedToken.for_service(config.url_of("portal"), client,
                                       derive_service_secret(root, client))
    return None
