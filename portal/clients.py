"""How the portal's pages reach the other services: the dataset service with the signed-in
user's token (so its policy decides), anonymously for public pages, and the tracer with the
portal's own service token; one HTTP connection pool per portal process."""

from __future__ import annotations

import threading
import time

import requests
from flask import Flask, current_app
from flask_login import current_user

from dataset_service.client import DatasetClient
from tracer.chain import chain_client, contract_address
from tracer.client import TracerClient, TraceVerifier
from vre.service_auth import StaticToken
from vre.tokens import TokenIssuer
from vre.web import config_of

SERVICE_SUBJECT = "service:portal"


class SelfIssuedToken:
    """The portal's own service token, signed by its issuer and renewed before it expires."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self._issuer = issuer
        self._token = ""
        self._renew_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if time.monotonic() >= self._renew_at:
                self._token, ttl = self._issuer.issue(SERVICE_SUBJECT, ["service"],
                                                      client="portal")
                self._renew_at = time.monotonic() + 0.8 * ttl
            return self._token


def install(app: Flask) -> None:
    """One pooled HTTP session and one service token per portal app."""
    http = requests.Session()
    http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))
    http.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=32))
    app.extensions["portal.http"] = http
    app.extensions["portal.service_token"] = SelfIssuedToken(app.extensions["vre.issuer"])


def datasets(as_user: bool = True) -> DatasetClient:
    """The dataset service as the signed-in user (anonymous when nobody is signed in)."""
    from portal.identity import access_token

    tokens = StaticToken(access_token()) if as_user and current_user.is_authenticated \
        else None
    return DatasetClient(config_of().url_of("dataset_service"), tokens,
                         session=current_app.extensions["portal.http"])


def tracer() -> TracerClient:
    """The tracer as the portal service: only after the dataset policy allowed the read."""
    return TracerClient(config_of().url_of("tracer"),
                        current_app.extensions["portal.service_token"],
                        session=current_app.extensions["portal.http"])


def trace_verifier() -> TraceVerifier:
    """Checks traces against the chain, not against the tracer's word."""
    config = config_of()
    return TraceVerifier(tracer(), chain_client(config, contract_address(config)))
