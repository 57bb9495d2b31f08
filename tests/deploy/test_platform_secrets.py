"""`vre-platform-secrets` (images/services/platform_secrets.py), the platform chart's key
maker: its keys are the ones the services load, the service client secrets are what the
portal checks, and an existing key is never replaced. The Kubernetes API is a recorded
stand-in here (no API server installs): the test checks the calls it would receive."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
from eth_account import Account

from tests.deploy.charts import KUBE_VERSIONS, REPO
from tracer.checkpoints import CheckpointSigner
from vre.services import derive_service_secret
from vre.tokens import TokenIssuer


def _tool() -> ModuleType:
    path = REPO / "images" / "services" / "platform_secrets.py"
    spec = importlib.util.spec_from_file_location("platform_secrets", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tool = _tool()
NEEDED = {"secret-key", "dataset-service-secret", "tracer-service-secret", "signing-key.pem",
          "tracer-key.pem", "chain-private-key", "chain-address"}


class RecordedApi:
    """Answers like the Secrets endpoint of one namespace, and records what it was asked."""

    namespace = "vre"

    def __init__(self, stored: dict[str, str] | None = None) -> None:
        self.stored = stored
        self.calls: list[tuple[str, Any]] = []

    def get(self, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", name))
        if self.stored is None:
            return None
        return {"metadata": {"name": name},
                "data": {k: base64.b64encode(v.encode()).decode()
                         for k, v in self.stored.items()}}

    def create(self, body: dict[str, Any]) -> None:
        self.calls.append(("create", body))

    def patch(self, name: str, data: dict[str, str]) -> None:
        self.calls.append(("patch", dict(data)))


@pytest.fixture(scope="module")
def made() -> dict[str, str]:
    return tool.complete({})


def test_every_key_the_platform_needs_is_made(made: dict[str, str], tmp_path: Path) -> None:
    assert set(made) == NEEDED
    assert len(made["secret-key"]) >= 32
    signing = tmp_path / "signing.pem"
    signing.write_text(made["signing-key.pem"])
    assert TokenIssuer.from_file(signing, "https://vre.example.org", "vre", 300).jwks()["keys"]
    tracer = tmp_path / "tracer.pem"
    tracer.write_text(made["tracer-key.pem"])
    CheckpointSigner.from_file(tracer)
    assert Account.from_key(made["chain-private-key"]).address == made["chain-address"]


def test_service_secrets_are_what_the_portal_checks(made: dict[str, str]) -> None:
    assert made["dataset-service-secret"] == derive_service_secret(made["secret-key"],
                                                                   "dataset_service")
    assert made["tracer-service-secret"] == derive_service_secret(made["secret-key"], "tracer")


def test_a_missing_secret_is_created_whole() -> None:
    api = RecordedApi()
    written = tool.ensure(api, "vre-secrets")
    assert set(written) == NEEDED
    kind, body = api.calls[-1]
    assert kind == "create" and body["metadata"] == {
        "name": "vre-secrets", "namespace": "vre",
        "labels": {"app.kubernetes.io/part-of": "vre",
                   "app.kubernetes.io/managed-by": "vre-platform-secrets"}}
    assert set(body["data"]) == NEEDED
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(body, version, strict=True)


def test_existing_keys_are_kept_and_only_missing_ones_added(made: dict[str, str]) -> None:
    kept = {k: made[k] for k in ("secret-key", "tracer-key.pem", "chain-private-key")}
    api = RecordedApi(kept)
    written = tool.ensure(api, "vre-secrets")
    assert set(written) == NEEDED - set(kept)
    [patch] = [body for kind, body in api.calls if kind == "patch"]
    assert not set(patch) & set(kept)
    assert patch["chain-address"] == made["chain-address"]
    assert patch["tracer-service-secret"] == made["tracer-service-secret"]


def test_a_complete_secret_is_left_alone(made: dict[str, str]) -> None:
    api = RecordedApi(dict(made))
    assert tool.ensure(api, "vre-secrets") == []
    assert [kind for kind, _ in api.calls] == ["get"]


def test_service_secrets_follow_a_new_root_secret(made: dict[str, str]) -> None:
    rotated = {**made, "secret-key": "r" * 48}
    api = RecordedApi(rotated)
    written = tool.ensure(api, "vre-secrets")
    assert written == ["dataset-service-secret", "tracer-service-secret"]


def test_print_gives_a_manifest_for_kubectl(capsys: pytest.CaptureFixture[str]) -> None:
    assert tool.main(["print", "--name", "vre-keys", "--namespace", "vre"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["metadata"]["name"] == "vre-keys"
    assert set(manifest["data"]) == NEEDED
    kubernetes_validate.validate(manifest, KUBE_VERSIONS[-1], strict=True)


def test_the_api_client_speaks_to_the_secrets_endpoint() -> None:
    """The three HTTP requests `ensure` makes, as a requests session would send them."""
    sent: list[tuple[str, str, dict[str, Any]]] = []

    class Response:
        def __init__(self, status: int, body: dict[str, Any] | None = None) -> None:
            self.status_code = status
            self._body = body or {}

        def raise_for_status(self) -> None:
            assert self.status_code < 400

        def json(self) -> dict[str, Any]:
            return self._body

    class Session:
        def get(self, url: str, **kw: Any) -> Response:
            sent.append(("GET", url, kw))
            return Response(404)

        def post(self, url: str, **kw: Any) -> Response:
            sent.append(("POST", url, kw))
            return Response(201)

        def patch(self, url: str, **kw: Any) -> Response:
            sent.append(("PATCH", url, kw))
            return Response(200)

    api = tool.SecretsApi("vre", base_url="https://10.0.0.1:443", session=Session())
    tool.ensure(api, "vre-secrets")
    assert [(m, u) for m, u, _ in sent] == [
        ("GET", "https://10.0.0.1:443/api/v1/namespaces/vre/secrets/vre-secrets"),
        ("POST", "https://10.0.0.1:443/api/v1/namespaces/vre/secrets")]
    api.patch("vre-secrets", {"chain-address": "0x0"})
    method, url, kwargs = sent[-1]
    assert (method, url) == ("PATCH",
                             "https://10.0.0.1:443/api/v1/namespaces/vre/secrets/vre-secrets")
    assert kwargs["headers"]["Content-Type"] == "application/merge-patch+json"
    assert json.loads(kwargs["data"]) == {"data": {"chain-address": "MHgw"}}
