"""The one token validator of every service (signed JWT against the issuer's JWKS, audience,
expiry), and the token issuer the portal runs in one-machine mode."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vre.cache import TimedCache
from vre.errors import ApiError
from vre.jsonbody import too_deep
from vre.revocation import RevocationState, token_refusal

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "ES256", "EdDSA"]
# A token whose signature was checked is not checked again for this long (the same bearer
# token comes with each request of a client): expiry and revocation are still checked on
# each request, and a key the issuer withdraws stops its tokens within this time.
VERIFIED_SECONDS = 60.0
VERIFIED_TOKENS = 4096


class TokenError(ApiError):
    """A bearer token is missing, expired or not to be trusted (always a 401)."""

    status = 401
    code = "token_invalid"


#: Scopes of tokens the platform makes for a workload rather than a person: a token that
#: carries any scope of this prefix reaches only the routes that declare one of its scopes
#: (`vre.api.endpoint(scopes=...)`). OIDC's own scopes (openid, profile) limit nothing.
SCOPE_PREFIX = "vre:"
WORKLOAD_SCOPE = "vre:workload"  # who it is, the catalogues it reads, its own desktop
JOBS_SCOPE = "vre:jobs"  # submitting and following the workload's jobs
WORKLOAD_SCOPES = frozenset({WORKLOAD_SCOPE, JOBS_SCOPE})


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user or a service, with its roles, as the token says."""

    subject: str
    roles: frozenset[str]
    client: str | None = None
    username: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_service(self) -> bool:
        return "service" in self.roles

    def has_any(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))

    @functools.cached_property
    def scopes(self) -> frozenset[str]:
        """The platform scopes the token is limited to; empty for a person's own token."""
        scope = self.claims.get("scope")
        words = scope.split() if isinstance(scope, str) else []
        return frozenset(w for w in words if w.startswith(SCOPE_PREFIX))

    @property
    def workload_id(self) -> str | None:
        """The workload a scoped token was made for (its `wid`), or None."""
        wid = self.claims.get("wid")
        return str(wid) if self.scopes and wid else None


def _roles_of(claims: dict[str, Any]) -> frozenset[str]:
    # Our issuer puts roles at top level; Keycloak puts realm roles under realm_access.
    roles = set(claims.get("roles") or [])
    roles.update((claims.get("realm_access") or {}).get("roles") or [])
    return frozenset(str(r) for r in roles)


class KeySet:
    """Public keys of the issuer, from a JWKS URL (http or file), refreshed on unknown kid."""

    def __init__(self, url: str, min_refresh_seconds: float = 10.0) -> None:
        self.url = url
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._min_refresh = min_refresh_seconds
        self._lock = threading.Lock()

    def _fetch(self) -> dict[str, Any]:
        parts = urlsplit(self.url)
        if parts.scheme == "file":
            data = json.loads(Path(parts.path).read_text())
        else:
            response = requests.get(self.url, timeout=5)
            response.raise_for_status()
            data = response.json()
        keys = {}
        for jwk in data.get("keys", []):
            key = jwt.PyJWK.from_dict(jwk)
            keys[jwk.get("kid", "")] = key
        return keys

    def get(self, kid: str) -> Any:
        with self._lock:
            if kid not in self._keys and time.monotonic() - self._fetched_at > self._min_refresh:
                try:
                    self._keys = self._fetch()
                except (OSError, ValueError, requests.RequestException) as exc:
                    # The cause's words name the issuer's address: only its kind is told.
                    log.warning("cannot fetch the token issuer's keys (%s); VRE_JWKS_URL "
                                "says where they are", type(exc).__name__,
                                extra={"event": "issuer_unavailable"})
                    raise ApiError("cannot fetch the token issuer's keys",
                                   code="issuer_unavailable", status=503) from None
                finally:
                    self._fetched_at = time.monotonic()
            if kid not in self._keys:
                raise TokenError("token signed with an unknown key", code="token_invalid")
            return self._keys[kid]


class TokenValidator:
    """Checks signature (issuer's JWKS), issuer, audience and expiry; yields a Principal.

    Where people sign in at an identity provider (`issuer` is the realm), the portal is
    trusted as a second issuer, `platform=(issuer, jwks_url)`, for the tokens it makes itself:
    a service's, and a workload's (scoped); never a person's."""

    def __init__(self, issuer: str, audience: str, jwks_url: str, leeway: int = 10,
                 platform: tuple[str, str] | None = None) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys = KeySet(jwks_url)
        self.leeway = leeway
        self.platform = None if platform is None or platform[0] == issuer else (
            platform[0], KeySet(platform[1]))
        # What refuses a person's token before it expires; set where the service installs it.
        self.revocations: RevocationState | None = None
        # A verified token's caller and issuer (a Principal is immutable, so one serves each
        # request the token comes with).
        self._verified: TimedCache[tuple[Principal, str]] = TimedCache(
            VERIFIED_SECONDS, VERIFIED_TOKENS)

    def validate(self, token: str | None) -> Principal:
        if not token:
            raise TokenError("a bearer token is required", code="token_missing")
        verified = self._verified.get(token)
        if verified is None:
            claims, issuer = self._verify(token)
            verified = (Principal(
                subject=str(claims["sub"]), roles=_roles_of(claims),
                client=claims.get("azp") or claims.get("client_id"),
                username=claims.get("preferred_username"), claims=claims,
            ), issuer)
            self._verified.put(token, verified)
        elif verified[0].claims["exp"] + self.leeway < time.time():
            raise TokenError("token has expired", code="token_expired")
        principal, issuer = verified
        claims = principal.claims
        if issuer != self.issuer and not (principal.is_service or principal.scopes):
            raise TokenError("people sign in at the identity provider; the platform issues "
                             "tokens for services and workloads only")
        # A service's credentials come from the platform's secrets, not from an account; the
        # feeds themselves are read with them, so they never wait on a feed.
        if self.revocations is not None and not principal.is_service:
            refusal = token_refusal(claims, self.revocations.snapshot())
            if refusal:
                raise TokenError(refusal, code="token_revoked")
        return principal

    def _verify(self, token: str) -> tuple[dict[str, Any], str]:
        """The claims of a token whose signature, issuer, audience and times hold, and the
        issuer that signed it."""
        if _header_too_deep(token):
            raise TokenError("malformed token: its header nests too deep")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token: {exc}") from exc
        if header.get("alg") not in ALGORITHMS:
            raise TokenError(f"token algorithm {header.get('alg')!r} is not accepted")
        issuer, keys = self.issuer, self.keys
        if self.platform is not None and _unverified_issuer(token) == self.platform[0]:
            issuer, keys = self.platform
        key = keys.get(header.get("kid", ""))
        try:
            claims = jwt.decode(
                token, key=key, algorithms=ALGORITHMS, audience=self.audience,
                issuer=issuer, leeway=self.leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token has expired", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"token rejected: {exc}") from exc
        return claims, issuer


def _unverified_issuer(token: str) -> str | None:
    """The `iss` a token claims, read before its signature is checked: only to choose which
    issuer's keys check it."""
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None
    return iss if isinstance(iss, str) else None


def _header_too_deep(token: str) -> bool:
    """The token's header is read before its signature is checked: refuse one nested deep
    enough to exhaust the JSON parser (a JWT's header is one flat object)."""
    head = token.partition(".")[0]
    try:
        raw = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    except ValueError:
        return False  # not base64: the JWT library says it is malformed
    return too_deep(raw)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an 'Authorization: Bearer ...' header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise TokenError("Authorization header must be 'Bearer <token>'", code="token_missing")
    return value.strip()


def generate_signing_key(path: Path) -> None:
    """Write a new RSA private key (PEM, mode 0600) for the token issuer."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(pem)


class TokenIssuer:
    """Signs tokens with the portal's key and publishes the matching JWKS (one-machine mode)."""

    def __init__(self, key_pem: bytes, issuer: str, audience: str, ttl_seconds: int) -> None:
        self._key = serialization.load_pem_private_key(key_pem, password=None)
        public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        # RFC 7638 thumbprint: the key id changes exactly when the key does.
        canonical = json.dumps({k: public_jwk[k] for k in ("e", "kty", "n")},
                               separators=(",", ":"), sort_keys=True).encode()
        self.kid = jwt.utils.base64url_encode(hashlib.sha256(canonical).digest()).decode()
        self._jwk = {**public_jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl_seconds

    @classmethod
    def from_file(cls, path: Path, issuer: str, audience: str, ttl: int) -> TokenIssuer:
        return cls(path.read_bytes(), issuer, audience, ttl)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._jwk]}

    def issue(self, subject: str, roles: list[str], *, client: str | None = None,
              ttl: int | None = None, **extra: Any) -> tuple[str, int]:
        """A signed access token and its lifetime in seconds."""
        moment = time.time()
        now = int(moment)
        lifetime = ttl or self.ttl
        claims = {
            # iat to the microsecond: a password changed within this second still tells the
            # tokens issued before it from those issued after it.
            "iss": self.issuer, "aud": self.audience, "sub": subject,
            "iat": round(moment, 6), "nbf": now, "exp": now + lifetime,
            "jti": uuid.uuid4().hex, "roles": roles,
            **({"azp": client} if client else {}), **extra,
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        return token, lifetime
