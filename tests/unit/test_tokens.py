"""The one token validator: signature against the JWKS, issuer, audience, expiry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest

from vre.config import load_config
from vre.tokens import (
    WORKLOAD_SCOPE,
    TokenError,
    TokenIssuer,
    TokenValidator,
    bearer_token,
    generate_signing_key,
)
from vre.web import validator_for


@pytest.fixture
def pair(tmp_path: Path) -> tuple[TokenIssuer, TokenValidator]:
    generate_signing_key(tmp_path / "k.pem")
    issuer = TokenIssuer.from_file(tmp_path / "k.pem", "http://iss", "vre", 60)
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    return issuer, TokenValidator("http://iss", "vre", (tmp_path / "jwks.json").as_uri())


def test_valid_token_gives_the_principal(pair: tuple[TokenIssuer, TokenValidator]) -> None:
    issuer, validator = pair
    token, ttl = issuer.issue("alice", ["researcher"], client="cli")
    principal = validator.validate(token)
    assert principal.subject == "alice" and principal.roles == {"researcher"}
    assert principal.client == "cli" and ttl == 60


def test_keycloak_realm_roles_are_read(pair: tuple[TokenIssuer, TokenValidator]) -> None:
    issuer, validator = pair
    token, _ = issuer.issue("bob", [], realm_access={"roles": ["steward"]})
    assert validator.validate(token).roles == {"steward"}


@pytest.mark.parametrize("claims,code", [
    ({"exp": int(time.time()) - 300}, "token_expired"),
    ({"aud": "other"}, "token_invalid"),
    ({"iss": "http://evil"}, "token_invalid"),
])
def test_bad_claims_are_refused(pair: tuple[TokenIssuer, TokenValidator], claims: dict,
                                code: str) -> None:
    issuer, validator = pair
    token, _ = issuer.issue("alice", [], **claims)
    with pytest.raises(TokenError) as err:
        validator.validate(token)
    assert err.value.code == code


def test_unsigned_and_garbage_tokens_are_refused(
        pair: tuple[TokenIssuer, TokenValidator]) -> None:
    _, validator = pair
    none_alg = jwt.encode({"sub": "x", "aud": "vre", "iss": "http://iss",
                           "exp": time.time() + 60, "iat": time.time()}, None, algorithm="none")
    for token in (none_alg, "garbage", "a.b.c"):
        with pytest.raises(TokenError):
            validator.validate(token)
    with pytest.raises(TokenError) as err:
        validator.validate(None)
    assert err.value.code == "token_missing"


def test_authorization_header_parsing() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer abc") == "abc"
    with pytest.raises(TokenError):
        bearer_token("Basic dXNlcjpwYXNz")


@pytest.fixture
def realm_and_portal(tmp_path: Path) -> tuple[TokenIssuer, TokenIssuer, TokenValidator]:
    """An identity provider's realm that signs people in, and the portal beside it."""
    keys = {}
    for name in ("realm", "portal"):
        generate_signing_key(tmp_path / f"{name}.pem")
        keys[name] = TokenIssuer.from_file(tmp_path / f"{name}.pem", f"http://{name}", "vre", 60)
        (tmp_path / f"{name}.json").write_text(json.dumps(keys[name].jwks()))
    validator = TokenValidator("http://realm", "vre", (tmp_path / "realm.json").as_uri(),
                               platform=("http://portal", (tmp_path / "portal.json").as_uri()))
    return keys["realm"], keys["portal"], validator


def test_the_portal_is_trusted_beside_the_realm_for_what_it_makes(
        realm_and_portal: tuple[TokenIssuer, TokenIssuer, TokenValidator]) -> None:
    realm, portal, validator = realm_and_portal
    assert validator.validate(realm.issue("alice", ["researcher"])[0]).subject == "alice"
    workload = portal.issue("alice", ["researcher"], scope=WORKLOAD_SCOPE, wid="d1")[0]
    assert validator.validate(workload).workload_id == "d1"
    service = portal.issue("service:tracer", ["service"])[0]
    assert validator.validate(service).is_service


def test_the_portal_makes_no_person_tokens_beside_a_realm(
        realm_and_portal: tuple[TokenIssuer, TokenIssuer, TokenValidator],
        tmp_path: Path) -> None:
    realm, portal, validator = realm_and_portal
    refused = [
        portal.issue("alice", ["admin"])[0],  # a person's, unscoped
        portal.issue("alice", ["admin"], scope="openid profile")[0],  # OIDC scopes limit nothing
        # The realm's key cannot pass as the portal's, nor the portal's as the realm's.
        realm.issue("alice", ["researcher"], iss="http://portal", scope=WORKLOAD_SCOPE)[0],
        portal.issue("alice", ["researcher"], iss="http://realm")[0],
    ]
    for token in refused:
        with pytest.raises(TokenError) as caught:
            validator.validate(token)
        assert caught.value.code == "token_invalid"


def test_with_a_realm_the_portal_signs_as_itself(tmp_path: Path) -> None:
    local = load_config(env={}, home=tmp_path, portal_url="https://vre.example.org")
    assert local.portal_issuer == local.issuer == "https://vre.example.org"
    realm = "https://id.example.org/realms/vre"
    oidc = load_config(env={}, home=tmp_path, portal_url="https://vre.example.org",
                       identity="oidc", oidc_server_url="https://id.example.org",
                       oidc_realm="vre", oidc_client_id="vre-portal",
                       oidc_client_secret="x" * 32)
    assert oidc.issuer == realm
    assert oidc.portal_issuer == "https://vre.example.org"
    assert oidc.portal_jwks == "https://vre.example.org/.well-known/jwks.json"
    validator = validator_for(oidc)
    assert validator.issuer == realm and validator.platform is not None
    assert validator.platform[0] == "https://vre.example.org"


def test_a_token_checked_before_is_refused_once_it_expires(
        pair: tuple[TokenIssuer, TokenValidator], monkeypatch: pytest.MonkeyPatch) -> None:
    issuer, validator = pair
    token, _ = issuer.issue("alice", ["researcher"])
    assert validator.validate(token).subject == "alice"  # its signature is now remembered
    later = time.time() + 3600
    monkeypatch.setattr("vre.tokens.time.time", lambda: later)
    with pytest.raises(TokenError) as err:
        validator.validate(token)
    assert err.value.code == "token_expired"


def test_a_remembered_token_vouches_for_no_other_bytes(
        pair: tuple[TokenIssuer, TokenValidator]) -> None:
    issuer, validator = pair
    token, _ = issuer.issue("alice", ["researcher"])
    validator.validate(token)
    head, body, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    forged_body = jwt.utils.base64url_encode(
        json.dumps({**claims, "sub": "mallory", "roles": ["admin"]}).encode()).decode()
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for forged in (f"{head}.{forged_body}.{signature}", f"{head}.{body}.{flipped}"):
        with pytest.raises(TokenError):
            validator.validate(forged)
