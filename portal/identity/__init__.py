"""Who is signed in to the portal, behind one small interface: local accounts on one machine,
Keycloak over OpenID Connect on a cluster; chosen by the `identity` setting."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flask import Flask, current_app, session
from flask_login import current_user, logout_user

from portal.models import User
from vre.config import Config
from vre.errors import ApiError
from vre.service_auth import TokenSource

# What each value of the `identity` setting names: module:class, imported only when chosen.
IMPLEMENTATIONS = {
    "local": "portal.identity.local:LocalIdentity",
    "oidc": "portal.identity.keycloak:KeycloakIdentity",
}


@dataclass
class SignedIn:
    """A completed sign-in: who, where to go next, and what to keep in the fresh session."""

    user: User
    next_url: str | None = None
    session: dict[str, Any] = field(default_factory=dict)


class Identity(ABC):
    """How people sign in to the portal, and the tokens the portal calls services with.

    Subclass this and override the six methods below; callers depend on nothing else.
    Every method runs inside a request (it may read and write the Flask session) and raises
    `portal.accounts.SignInError` for anything the person should be told.

    - `begin_sign_in(next_url)`: the URL to send the browser to for signing in (the
      provider's authorization endpoint), or None when the portal's own password form is
      the way in.
    - `complete_sign_in(params)`: finish signing in from the password form's fields or from
      the provider's callback query; returns a `SignedIn`. The caller starts a fresh session
      (against fixation), puts `SignedIn.session` into it, and logs the user in.
    - `sign_out(user)`: forget what is held for this session; returns where the browser
      goes next (the provider's logout page), or None for the portal's home page.
    - `access_token(user)`: a bearer token valid at the platform's services on the user's
      behalf, renewed when it is close to expiry.
    - `refresh(user)`: renew the session's tokens now (and with them roles and groups);
      raises SignInError when the session cannot be renewed and the user must sign in again.
    - `service_tokens(app)`: the portal's own token source, for calls it makes as the
      platform service "portal" (reading a history once the dataset policy allowed it,
      asking for grants); the only method that runs outside a request.

    `manages_passwords` says whether passwords live here (password change, accounts created
    by administrators) or at the provider.
    """

    manages_passwords: ClassVar[bool] = False

    def __init__(self, config: Config) -> None:
        self.config = config

    @abstractmethod
    def begin_sign_in(self, next_url: str) -> str | None:
        """Where to send the browser to sign in, or None for the portal's own form."""

    @abstractmethod
    def complete_sign_in(self, params: Mapping[str, str]) -> SignedIn:
        """Check the form fields or the provider's callback; the user now signed in."""

    @abstractmethod
    def sign_out(self, user: User) -> str | None:
        """Drop this session's tokens; the provider's logout URL, or None."""

    @abstractmethod
    def access_token(self, user: User) -> str:
        """A bearer token for the platform's services on behalf of the user."""

    @abstractmethod
    def refresh(self, user: User) -> None:
        """Renew this session's tokens now."""

    @abstractmethod
    def service_tokens(self, app: Flask) -> TokenSource:
        """Tokens the portal itself calls the services with, renewed before they expire."""


def make_identity(config: Config) -> Identity:
    """The implementation the configuration names."""
    module_name, _, class_name = IMPLEMENTATIONS[config.identity].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)


def install_identity(app: Flask, config: Config) -> Identity:
    """Build the configured identity and keep it on the app."""
    identity = make_identity(config)
    app.extensions["vre.identity"] = identity
    return identity


def identity_of(app: Flask | None = None) -> Identity:
    """The portal's identity implementation."""
    return (app or current_app).extensions["vre.identity"]


def access_token() -> str:
    """A bearer token for the platform's services, on behalf of the signed-in portal user."""
    if not current_user.is_authenticated:
        raise ApiError("sign in first", code="not_signed_in", status=401)
    try:
        return identity_of().access_token(current_user)
    except ApiError as exc:
        if exc.code == "session_expired":  # the provider ended it: so does the portal
            logout_user()
            session.clear()
        raise
