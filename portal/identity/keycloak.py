"""Keycloak over OpenID Connect (python-keycloak): authorization code flow with PKCE, tokens
checked against the realm's keys, roles and groups mapped, accounts mirrored, refresh, and
sign-out at the provider.

What the realm needs: a client for the portal (confidential, standard flow, PKCE S256,
redirect URI <portal>/signin/callback, post-logout redirect URI <portal>/), an audience
mapper that puts the platform's audience (VRE_TOKEN_AUDIENCE, "vre") into access tokens, and
a group membership mapper ("groups" claim) for project groups. Realm roles and the portal
client's roles are mapped to platform roles by VRE_OIDC_ROLE_MAP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask, current_app, session
from jwcrypto import jwk
from jwcrypto.common import JWException
from keycloak import KeycloakOpenID
from keycloak.exceptions import KeycloakError
from sqlalchemy.orm import Session

from portal.accounts import SignInError
from portal.identity import Identity, SignedIn
from portal.models import ProviderSession, User
from vre.config import Config, ConfigError, env_name
from vre.db import utcnow
from vre.tokens import ALGORITHMS, TokenError
from vre.web import db_of

SCOPE = "openid profile email"
PENDING_KEY = "vre_oidc_pending"  # state, nonce and PKCE verifier of a sign-in under way
SESSION_KEY = "vre_oidc_session"  # handle of the server-side ProviderSession
PENDING_TTL_SECONDS = 600
RENEW_BEFORE_SECONDS = 30
LEEWAY_SECONDS = 30
KEY_REFETCH_SECONDS = 10.0
DEFAULT_SESSION_SECONDS = 86400  # when the provider does not say how long a refresh lasts


def platform_roles(claims: Mapping[str, Any], client_id: str,
                   role_map: Mapping[str, str]) -> list[str]:
    """Platform roles from the realm's roles and the portal client's roles in a token."""
    names = set((claims.get("realm_access") or {}).get("roles") or [])
    client = (claims.get("resource_access") or {}).get(client_id) or {}
    names.update(client.get("roles") or [])
    return sorted({role_map[n] for n in names if isinstance(n, str) and n in role_map})


def groups_of(*claim_sets: Mapping[str, Any]) -> list[str]:
    """The provider's group paths, from the first token that carries a groups claim."""
    for claims in claim_sets:
        groups = claims.get("groups")
        if isinstance(groups, list):
            return sorted({g for g in groups if isinstance(g, str) and g})
    return []


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _hash_handle(handle: str) -> str:
    return hashlib.sha256(handle.encode()).hexdigest()


def _token_box(secret: str) -> Fernet:
    # A key of its own for tokens at rest, derived from the portal's root secret.
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"vre-portal:provider-tokens").derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _expiry(epoch: Any) -> datetime:
    return datetime.fromtimestamp(int(epoch), UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class KeycloakIdentity(Identity):
    """Sign-in at a Keycloak realm; the portal keeps the realm's tokens per browser session."""

    manages_passwords: ClassVar[bool] = False

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        for key in ("oidc_server_url", "oidc_realm", "oidc_client_id", "secret_key"):
            if not getattr(config, key):
                raise ConfigError(env_name(key), "is required when VRE_IDENTITY is oidc")
        assert config.oidc_server_url and config.oidc_realm and config.oidc_client_id
        assert config.secret_key
        self.client_id = config.oidc_client_id
        self.issuer = config.issuer
        self.role_map = config.oidc_roles
        portal = config.url_of("portal")
        self.redirect_uri = portal + "/signin/callback"
        self.post_logout_uri = portal + "/"
        self.client = KeycloakOpenID(
            server_url=config.oidc_server_url + "/", realm_name=config.oidc_realm,
            client_id=self.client_id, client_secret_key=config.oidc_client_secret, timeout=10)
        self._box = _token_box(config.secret_key)
        self._metadata: dict[str, Any] | None = None
        self._keys: dict[str, jwk.JWK] = {}
        self._keys_at = 0.0
        self._lock = threading.Lock()

    # --- talking to the provider -------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeycloakError as exc:
            status = getattr(exc, "response_code", None)
            if status is not None and 400 <= status < 500:
                raise SignInError(f"the identity provider refused {what}",
                                  "provider_refused") from exc
            raise SignInError(f"the identity provider is unavailable ({what})",
                              "provider_unavailable", status=503) from exc

    def metadata(self) -> dict[str, Any]:
        """The realm's discovery document, fetched once and checked against the issuer."""
        if self._metadata is None:
            found = self._call("discovery", self.client.well_known)
            if found.get("issuer") != self.issuer:
                raise SignInError(
                    f"the provider's issuer {found.get('issuer')!r} is not the configured "
                    f"{self.issuer!r} ({env_name('token_issuer')})", "provider_misconfigured",
                    status=503)
            self._metadata = found
        return self._metadata

    def _key(self, kid: str) -> jwk.JWK:
        with self._lock:
            stale = time.monotonic() - self._keys_at > KEY_REFETCH_SECONDS
            if kid not in self._keys and stale:
                try:
                    certs = self._call("its keys", self.client.certs)
                finally:
                    self._keys_at = time.monotonic()
                self._keys = {c.get("kid", ""): jwk.JWK(**c) for c in certs.get("keys", [])
                              if c.get("use", "sig") == "sig"}
            if kid not in self._keys:
                raise SignInError("token signed with a key the realm does not publish",
                                  "id_token_invalid")
            return self._keys[kid]

    # --- checking tokens ---------------------------------------------------------------

    def verify_id_token(self, token: str, nonce: str | None = None) -> dict[str, Any]:
        """Claims of an ID token signed by the realm, for this client, unexpired, with the nonce
        of this sign-in (when one is given)."""
        try:
            head = token.split(".")[0]
            header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
            kid = str(header.get("kid", ""))
        except (ValueError, AttributeError) as exc:
            raise SignInError("malformed ID token", "id_token_invalid") from exc
        check = {"iss": self.issuer, "aud": self.client_id, "exp": None, "iat": None,
                 "sub": None}
        try:
            claims = self.client.decode_token(token, key=self._key(kid), check_claims=check,
                                              algs=ALGORITHMS, leeway=LEEWAY_SECONDS)
        except (JWException, ValueError) as exc:
            raise SignInError(f"ID token refused: {exc}", "id_token_invalid") from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise SignInError("ID token was issued to another client", "id_token_invalid")
        if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignInError("ID token does not belong to this sign-in (nonce)",
                              "id_token_invalid")
        return claims

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """Claims of an access token, checked exactly as every platform service checks it."""
        try:
            principal = current_app.extensions["vre.validator"].validate(token)
        except TokenError as exc:
            raise SignInError(f"access token refused: {exc.message}",
                              "access_token_invalid") from exc
        return principal.claims

    # --- accounts and the server-side session ------------------------------------------

    def mirror_user(self, db: Session, id_claims: Mapping[str, Any],
                    access_claims: Mapping[str, Any]) -> User:
        """The portal's copy of the provider's account, created or brought up to date."""
        subject = str(id_claims["sub"])
        user = db.scalar(sa.select(User).where(User.identity_provider == self.issuer,
                                               User.external_subject == subject))
        username = str(id_claims.get("preferred_username") or subject)[:64]
        taken = db.scalar(sa.select(User).where(User.username == username))
        if user is None:
            if taken is not None:
                raise SignInError(f"the user name {username!r} belongs to another account here",
                                  "account_conflict", status=409)
            user_id = subject if len(subject) <= 36 and db.get(User, subject) is None else None
            user = User(username=username, identity_provider=self.issuer,
                        external_subject=subject, password_hash=None, active=True, roles=[],
                        groups=[],
                        **({"id": user_id} if user_id else {}))
            db.add(user)
        elif taken is None:
            user.username = username
        if not user.active:
            raise SignInError("account disabled", "account_disabled", status=403)
        user.display_name = str(id_claims.get("name") or username)[:200]
        user.email = id_claims.get("email") or None
        self._apply_claims(user, id_claims, access_claims)
        db.flush()
        return user

    def _apply_claims(self, user: User, id_claims: Mapping[str, Any],
                      access_claims: Mapping[str, Any]) -> None:
        user.roles = platform_roles(access_claims, self.client_id, self.role_map)
        user.groups = groups_of(access_claims, id_claims)

    def _seal(self, tokens: Mapping[str, Any]) -> str:
        return self._box.encrypt(json.dumps(dict(tokens)).encode()).decode()

    def _open(self, sealed: str) -> dict[str, Any]:
        try:
            return json.loads(self._box.decrypt(sealed.encode()))
        except InvalidToken as exc:  # the root secret changed since
            raise SignInError("session expired; sign in again", "session_expired") from exc

    def _store(self, row: ProviderSession, tokens: Mapping[str, Any],
               access_claims: Mapping[str, Any]) -> None:
        row.tokens = self._seal({k: tokens.get(k) for k in
                                 ("access_token", "refresh_token", "id_token")})
        row.access_expires_at = _expiry(access_claims["exp"])
        if not tokens.get("refresh_token"):
            row.refresh_expires_at = row.access_expires_at
        else:  # Keycloak says 0 for offline tokens, which last until revoked
            lasts = int(tokens.get("refresh_expires_in") or DEFAULT_SESSION_SECONDS)
            row.refresh_expires_at = utcnow() + timedelta(seconds=lasts)

    def _row(self, db: Session, user: User, *, lock: bool = False) -> ProviderSession:
        handle = session.get(SESSION_KEY)
        row = db.get(ProviderSession, _hash_handle(handle), with_for_update=lock) \
            if handle else None
        if row is None or row.user_id != user.id:
            raise SignInError("session expired; sign in again", "session_expired")
        return row

    # --- the contract ------------------------------------------------------------------

    def begin_sign_in(self, next_url: str) -> str | None:
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        session[PENDING_KEY] = {"state": state, "nonce": nonce, "verifier": verifier,
                                "next": next_url, "at": int(time.time())}
        self.metadata()
        return self._call("the sign-in request", self.client.auth_url,
                          redirect_uri=quote(self.redirect_uri, safe=""),
                          scope=quote(SCOPE, safe=""), state=state, nonce=nonce,
                          code_challenge=challenge, code_challenge_method="S256")

    def complete_sign_in(self, params: Mapping[str, str]) -> SignedIn:
        pending = session.pop(PENDING_KEY, None)
        if not pending or not hmac.compare_digest(params.get("state", ""), pending["state"]):
            raise SignInError("this sign-in was not started here, or was already used; "
                              "start again", "state_mismatch", status=400)
        if time.time() - pending["at"] > PENDING_TTL_SECONDS:
            raise SignInError("the sign-in took too long; start again", "sign_in_expired",
                              status=400)
        if params.get("error"):
            reason = params.get("error_description") or params["error"]
            raise SignInError(f"the identity provider refused the sign-in: {reason}",
                              "provider_refused")
        if "iss" in params and params["iss"] != self.issuer:  # RFC 9207: mix-up defence
            raise SignInError("the answer came from another provider", "state_mismatch",
                              status=400)
        if not params.get("code"):
            raise SignInError("the provider sent no authorization code", "provider_refused",
                              status=400)
        tokens = self._call("the authorization code", self.client.token,
                            grant_type="authorization_code", code=params["code"],
                            redirect_uri=self.redirect_uri, code_verifier=pending["verifier"])
        id_claims = self.verify_id_token(tokens.get("id_token") or "", nonce=pending["nonce"])
        access_claims = self.verify_access_token(tokens.get("access_token") or "")
        if access_claims.get("sub") != id_claims["sub"]:
            raise SignInError("ID token and access token name different people",
                              "access_token_invalid")
        handle = secrets.token_urlsafe(32)
        with db_of().session() as db:
            db.execute(sa.delete(ProviderSession).where(
                ProviderSession.refresh_expires_at < utcnow()))
            user = self.mirror_user(db, id_claims, access_claims)
            row = ProviderSession(id=_hash_handle(handle), user_id=user.id)
            self._store(row, tokens, access_claims)
            db.add(row)
        return SignedIn(user=user, next_url=pending.get("next"), session={SESSION_KEY: handle})

    def sign_out(self, user: User) -> str | None:
        handle = session.pop(SESSION_KEY, None)
        id_token = None
        if handle:
            with db_of().session() as db:
                row = db.get(ProviderSession, _hash_handle(handle))
                if row is not None:
                    try:
                        id_token = self._open(row.tokens).get("id_token")
                    except SignInError:
                        id_token = None
                    db.delete(row)
        try:
            endpoint = self.metadata().get("end_session_endpoint")
        except SignInError:
            return None  # the provider is down: the portal's own session still ends
        if not endpoint:
            return None
        query = {"post_logout_redirect_uri": self.post_logout_uri, "client_id": self.client_id}
        if id_token:
            query["id_token_hint"] = id_token
        return f"{endpoint}?{urlencode(query)}"

    def access_token(self, user: User) -> str:
        with db_of().session() as db:
            row = self._row(db, user)
            if not self._stale(row):
                return self._open(row.tokens)["access_token"]
        self._renew(user, only_if_stale=True)
        with db_of().session() as db:
            return self._open(self._row(db, user).tokens)["access_token"]

    def refresh(self, user: User) -> None:
        self._renew(user, only_if_stale=False)

    @staticmethod
    def _stale(row: ProviderSession) -> bool:
        return _aware(row.access_expires_at).timestamp() - RENEW_BEFORE_SECONDS <= time.time()

    def _renew(self, user: User, *, only_if_stale: bool) -> None:
        expired: SignInError | None = None
        with db_of().session() as db:
            row = self._row(db, user, lock=True)  # one refresh at a time per session
            if only_if_stale and not self._stale(row):
                return  # another request renewed it while this one waited
            held = self._open(row.tokens)
            try:
                if not held.get("refresh_token"):
                    raise SignInError("session expired; sign in again", "session_expired")
                fresh = self._call("the refresh", self.client.refresh_token,
                                   held["refresh_token"])
            except SignInError as exc:
                if exc.code not in ("session_expired", "provider_refused"):
                    raise
                db.delete(row)  # the provider ended the session: so does the portal
                expired = SignInError("session expired; sign in again", "session_expired")
            else:
                self._accept_refresh(db, user, row, held, fresh)
        if expired is not None:
            raise expired

    def _accept_refresh(self, db: Session, user: User, row: ProviderSession,
                        held: Mapping[str, Any], fresh: Mapping[str, Any]) -> None:
        access_claims = self.verify_access_token(fresh.get("access_token") or "")
        id_claims: dict[str, Any] = {}
        if fresh.get("id_token"):
            id_claims = self.verify_id_token(fresh["id_token"])
        subject = user.external_subject
        if access_claims.get("sub") != subject or id_claims.get("sub", subject) != subject:
            raise SignInError("the refreshed tokens name another person",
                              "access_token_invalid")
        stored = db.get(User, user.id)
        if stored is not None:
            self._apply_claims(stored, id_claims, access_claims)
        self._store(row, {**held, **{k: v for k, v in fresh.items() if v}}, access_claims)

    def service_tokens(self, app: Flask) -> ClientCredentialsToken:
        return ClientCredentialsToken(self.client)


class ClientCredentialsToken:
    """The portal's service-account token from the realm (client credentials grant).

    The realm gives the portal client's service account the realm role "service", which
    is what the other services require of a platform service."""

    def __init__(self, client: KeycloakOpenID) -> None:
        self._client = client
        self._token = ""
        self._renew_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if time.monotonic() >= self._renew_at:
                try:
                    answer = self._client.token(grant_type="client_credentials",
                                                scope="openid")
                except KeycloakError as exc:
                    raise PermissionError(f"the identity provider refused the portal's "
                                          f"service credentials: {exc}") from exc
                self._token = answer["access_token"]
                self._renew_at = time.monotonic() + 0.8 * float(answer.get("expires_in", 60))
            return self._token
