"""The one token validator: signature against the JWKS, issuer, audience, expiry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest

from vre.tokens import TokenError, TokenIssuer, TokenValidator, bearer_token, generate_signing_key


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
