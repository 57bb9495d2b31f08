"""The portal's JSON API: tokens (the one-machine issuer) and their revocation, its public
keys, and users."""

from __future__ import annotations

import hmac
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from portal.accounts import USERNAME_PATTERN, authenticate, create_account
from portal.identity import identity_of
from portal.models import User
from portal.ratelimit import limiter_of
from portal.revocations import changed, revoke_token, revoke_workload
from vre.api import PUBLIC, current_principal, endpoint
from vre.db import utcnow
from vre.errors import ApiError, Conflict, Forbidden, NotFound, Unprocessable
from vre.services import SERVICES, derive_service_secret
from vre.tokens import WORKLOAD_SCOPE, TokenError, TokenIssuer
from vre.web import config_of, db_of

bp = Blueprint("portal_api", __name__)

WORKLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")


class TokenRequest(BaseModel):
    """OAuth2-style token request: client credentials for services, password for people."""

    model_config = ConfigDict(extra="forbid")
    grant_type: Literal["client_credentials", "password"]
    client_id: str | None = Field(None, max_length=64)
    client_secret: str | None = Field(None, max_length=256)
    username: str | None = Field(None, max_length=64)
    password: str | None = Field(None, max_length=256)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    roles: list[str]
    active: bool
    identity_provider: str = Field(description='"local", or the OIDC issuer it comes from.')
    groups: list[str] = Field(description="The provider's groups (project memberships).")

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(id=user.id, username=user.username, display_name=user.display_name,
                   roles=list(user.roles), active=user.active,
                   identity_provider=user.identity_provider, groups=list(user.groups or []))


class UserCreate(BaseModel):
    """A local account an administrator creates; a password is generated when none is given."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME_PATTERN)
    display_name: str = Field("", max_length=200)
    email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    roles: list[Literal["researcher", "steward", "admin", "auditor"]] = ["researcher"]
    password: str | None = Field(None, max_length=256)


class UserCreated(UserOut):
    initial_password: str | None = Field(
        description="The generated password, shown this once; null when one was given.")


class Me(BaseModel):
    subject: str
    roles: list[str]
    client: str | None


def issuer() -> TokenIssuer:
    return current_app.extensions["vre.issuer"]


def _service_token(body: TokenRequest) -> TokenResponse:
    limiter_of(current_app).check_client(request.remote_addr, body.client_id)
    names = {s.name for s in SERVICES if s.name != "portal"}
    secret = config_of().secret_key or ""
    expected = derive_service_secret(secret, body.client_id or "")
    if body.client_id not in names or not hmac.compare_digest(
            expected, body.client_secret or ""):
        raise ApiError("unknown client or wrong client secret", code="invalid_client",
                       status=401)
    token, ttl = issuer().issue(f"service:{body.client_id}", ["service"],
                                client=body.client_id)
    return TokenResponse(access_token=token, expires_in=ttl)


def _user_token(body: TokenRequest) -> TokenResponse:
    if not body.username or not body.password:
        raise ApiError("username and password are required", code="missing_field",
                       field="username" if not body.username else "password", status=422)
    limiter_of(current_app).check(request.remote_addr, body.username)
    with db_of().session() as session:
        user = authenticate(session, body.username, body.password)
        token, ttl = issuer().issue(user.id, list(user.roles), client="vre-cli",
                                    preferred_username=user.username)
    return TokenResponse(access_token=token, expires_in=ttl)


@bp.post("/api/v1/tokens")
@endpoint("Obtain an access token", body=TokenRequest, response=TokenResponse, roles=PUBLIC,
          tags=["tokens"])
def create_token(body: TokenRequest) -> TokenResponse:
    if body.grant_type == "client_credentials":
        return _service_token(body)
    return _user_token(body)


class TokenRevocation(BaseModel):
    """A token to refuse from now on (RFC 7009 in spirit): whoever holds it may revoke it."""

    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=8192)


class TokenRevoked(BaseModel):
    revoked: bool


@bp.post("/api/v1/tokens/revoke")
@endpoint("Revoke an access token before it expires", body=TokenRevocation,
          response=TokenRevoked, roles=PUBLIC, tags=["tokens"])
def revoke_access_token(body: TokenRevocation) -> TokenRevoked:
    try:
        claims = current_app.extensions["vre.validator"].validate(body.token).claims
    except TokenError as exc:
        if exc.code in ("token_revoked", "token_expired"):
            return TokenRevoked(revoked=True)  # refused already
        raise
    if not claims.get("jti"):
        raise Unprocessable("this token has no id (jti) to revoke it by",
                            code="token_not_revocable", field="token")
    with db_of().session() as session:
        revoke_token(session, str(claims["jti"])[:64],
                     datetime.fromtimestamp(float(claims["exp"]), UTC))
    changed(current_app)
    return TokenRevoked(revoked=True)


class WorkloadRevocation(BaseModel):
    """Refuse the tokens of a stopped workload until the last of them has expired."""

    model_config = ConfigDict(extra="forbid")
    until: datetime = Field(description="When the workload's last token expires (UTC).")


class WorkloadRevoked(BaseModel):
    workload_id: str
    until: datetime


MAX_WORKLOAD_REVOCATION = timedelta(days=31)


@bp.put("/api/v1/revoked-workloads/<workload_id>")
@endpoint("Revoke every token of a workload (its wid claim), as its desktop or job stops",
          body=WorkloadRevocation, response=WorkloadRevoked, roles=["service", "admin"],
          tags=["tokens"])
def revoke_workload_tokens(workload_id: str, body: WorkloadRevocation) -> WorkloadRevoked:
    if not WORKLOAD_ID.fullmatch(workload_id):
        raise Unprocessable(f"{workload_id[:64]!r} is not a workload id", field="workload_id")
    until = body.until if body.until.tzinfo else body.until.replace(tzinfo=UTC)
    now = utcnow()
    if not now < until <= now + MAX_WORKLOAD_REVOCATION:
        raise Unprocessable("until must lie in the future, within 31 days",
                            code="validation_error", field="until")
    with db_of().session() as session:
        row = revoke_workload(session, workload_id, until)
        out = WorkloadRevoked(workload_id=row.workload_id, until=row.until)
    changed(current_app)
    return out


@bp.get("/.well-known/jwks.json")
def jwks() -> Any:
    """The public keys tokens are signed with, for every service's validator."""
    response = jsonify(issuer().jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/.well-known/openid-configuration")
def openid_configuration() -> Any:
    base = config_of().url_of("portal")
    return jsonify(issuer=issuer().issuer, jwks_uri=base + "/.well-known/jwks.json",
                   token_endpoint=base + "/api/v1/tokens",
                   id_token_signing_alg_values_supported=["RS256"])


@bp.get("/api/v1/me")
@endpoint("Who the token belongs to", response=Me, tags=["users"], scopes=[WORKLOAD_SCOPE])
def me() -> Me:
    principal = current_principal()
    assert principal is not None
    return Me(subject=principal.subject, roles=sorted(principal.roles),
              client=principal.client)


@bp.get("/api/v1/users")
@endpoint("List users", response=list[UserOut], roles=["admin"], tags=["users"])
def list_users() -> list[UserOut]:
    with db_of().session() as session:
        users = session.scalars(sa.select(User).order_by(User.username)).all()
        return [UserOut.of(u) for u in users]


@bp.post("/api/v1/users")
@endpoint("Create a local account", body=UserCreate, response=UserCreated, status=201,
          roles=["admin"], tags=["users"])
def create_user(body: UserCreate) -> UserCreated:
    if not identity_of().manages_passwords:
        raise Conflict("accounts are managed by the identity provider",
                       code="accounts_managed_externally")
    with db_of().session() as session:
        user, generated = create_account(
            session, body.username, display_name=body.display_name, email=body.email,
            roles=body.roles, password=body.password)
        return UserCreated(**UserOut.of(user).model_dump(), initial_password=generated)


@bp.get("/api/v1/users/<user_id>")
@endpoint("One user", response=UserOut, tags=["users"])
def get_user(user_id: str) -> UserOut:
    principal = current_principal()
    assert principal is not None
    with db_of().session() as session:
        user = session.get(User, user_id)
        # One's own record is the one whose tokens one holds (User.token_subject); to anyone
        # else a missing user reads as another's.
        if not principal.has_any("admin") and (
                user is None or user.token_subject != principal.subject):
            raise Forbidden("only administrators may read other users")
        if user is None:
            raise NotFound(f"no user with id {user_id!r}", field="user_id")
        return UserOut.of(user)
