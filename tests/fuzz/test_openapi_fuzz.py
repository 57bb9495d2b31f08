"""Schema-driven fuzzing of every service against its own OpenAPI document: generated valid and
invalid requests, with and without a token, never answer 5xx, and every answer has a declared
status, a declared content type and a body that fits its schema."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.dataset_helpers import create
from tests.helpers import auth
from tests.portal_helpers import make_portal
from vre.config import Config

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Small and fixed (derandomised), so the module stays within its time on two cores and never
# flakes; VRE_FUZZ_EXAMPLES asks for a deeper run.
EXAMPLES = int(os.environ.get("VRE_FUZZ_EXAMPLES", "8"))
EVERY_ROLE = ("admin", "steward", "researcher", "auditor", "service")
SERVICES = ("portal", "dataset_service", "tracer")


def seeded(
    name: str, request: pytest.FixtureRequest, token: Callable[..., str], config: Config
) -> Flask:
    """The service with something in it, so reads answer records, not only 404s."""
    if name == "portal":
        return make_portal(config)
    if name == "dataset_service":
        service, _ = request.getfixturevalue("platform")
        steward = auth(token("steward-1", "steward"))
        draft = create(service, steward)
        client = service.test_client()
        client.post(f"/api/v1/datasets/{draft['id']}/release", headers=steward)
        client.post(f"/api/v1/datasets/{draft['id']}/publish", headers=steward)
        return service
    app = request.getfixturevalue("make_app")("tracer")
    headers = auth(token("service:dataset_service", "service"))
    for action in ("CREATE_DATASET", "USE_DATASETS"):
        recorded = app.test_client().post(
            "/api/v1/traces",
            headers=headers,
            json={
                "actor": "steward-1",
                "action": action,
                "datasets": [{"id": "ds-1", "hash": "sha256:" + "ab" * 32}],
            },
        )
        assert recorded.status_code == 201, recorded.get_json()
    return app


@pytest.mark.parametrize("name", SERVICES)
@pytest.mark.parametrize("with_token", [False, True], ids=["anonymous", "token"])
def test_generated_requests_get_declared_answers(
    name: str,
    with_token: bool,
    request: pytest.FixtureRequest,
    token: Callable[..., str],
    config: Config,
    tmp_path: Path,
) -> None:
    app = seeded(name, request, token, config)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    headers = auth(token("fuzz-1", *EVERY_ROLE)) if with_token else {}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the document lists operations"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures.extend(_fuzz(operation, mode, headers))
    assert not failures, "\n\n".join(failures[:10])


def _fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> list[str]:
    found: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except Exception as exc:  # collect every operation's findings, then fail once
            found.append(f"{operation.label} ({mode.value}): {exc}")

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, operation.label  # nothing invalid to send
    return found
