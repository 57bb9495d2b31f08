"""RFC 6962 proof verification against the published transparency-dev/merkle test vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tracer.merkle import ProofError, verify_consistency, verify_inclusion

# The vectors live in the repository, so the test passes in a fresh clone.
CONFORMANCE_DIR = Path(__file__).resolve().parents[1] / "conformance"
VECTOR_DIR = CONFORMANCE_DIR / "rfc6962"


def _vectors(kind: str) -> list[Path]:
    return sorted((VECTOR_DIR / kind).glob("**/*.json"))


INCLUSION = _vectors("inclusion")
CONSISTENCY = _vectors("consistency")


def _case_id(path: Path) -> str:
    return path.relative_to(CONFORMANCE_DIR).as_posix()


def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b64(h) for h in case.get("proof") or []]


def test_conformance_vectors_present() -> None:
    if not VECTOR_DIR.is_dir():
        pytest.fail(
            f"RFC 6962 conformance vectors not found: looked for {VECTOR_DIR} "
            f"(they are part of the repository: tests/conformance/rfc6962/)"
        )
    assert INCLUSION, f"no inclusion vectors under {VECTOR_DIR / 'inclusion'}"
    assert CONSISTENCY, f"no consistency vectors under {VECTOR_DIR / 'consistency'}"
    total = len(INCLUSION) + len(CONSISTENCY)
    assert total > 100, f"only {total} vectors found under {VECTOR_DIR}"


@pytest.mark.parametrize("path", INCLUSION, ids=_case_id)
def test_inclusion_vector(path: Path) -> None:
    case = _load(path)

    def verify() -> None:
        verify_inclusion(
            _b64(case.get("leafHash")),
            case["leafIdx"],
            case["treeSize"],
            _proof(case),
            _b64(case.get("root")),
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify()
    else:
        verify()


@pytest.mark.parametrize("path", CONSISTENCY, ids=_case_id)
def test_consistency_vector(path: Path) -> None:
    case = _load(path)

    def verify() -> None:
        verify_consistency(
            case["size1"],
            case["size2"],
            _proof(case),
            _b64(case.get("root1")),
            _b64(case.get("root2")),
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify()
    else:
        verify()
