"""What a service's failure tells a caller: what went wrong, never where the platform's
services live (host names, ports, paths), since callers pass these messages on to people."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

import dataset_service.app
from dataset_service.client import DatasetClient, DatasetUnavailable
from tests.helpers import auth, free_port
from tracer.client import TracerClient, TracerUnavailable
from vre.config import Config


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_an_unreachable_service_is_named_without_its_address() -> None:
    port = free_port()
    with pytest.raises(DatasetUnavailable) as refused:
        DatasetClient(f"http://127.0.0.1:{port}", timeout=2).dataset("d-1")
    text = str(refused.value)
    assert refused.value.code == "dataset_unavailable"
    assert "could not be reached" in refused.value.message
    assert "127.0.0.1" not in text and str(port) not in text and "/api/v1" not in text


def test_a_service_that_does_not_answer_is_named_without_its_address(silent_port: int) -> None:
    with pytest.raises(TracerUnavailable) as late:
        TracerClient(f"http://127.0.0.1:{silent_port}", timeout=0.5).get("t-1")
    text = str(late.value)
    assert late.value.code == "tracer_unavailable"
    assert "did not answer in time" in late.value.message
    assert "127.0.0.1" not in text and str(silent_port) not in text and "/api/v1" not in text


def test_an_unreachable_token_issuer_is_not_named_to_the_caller(
    config: Config, token: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    moved = config.model_copy(update={"jwks_url": f"http://127.0.0.1:{port}/jwks.json"})
    app = dataset_service.app.create_app(moved)
    try:
        response = app.test_client().get(
            "/api/v1/projects", headers=auth(token("steward-1", "steward"))
        )
    finally:
        app.extensions["vre.db"].engine.dispose()
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "issuer_unavailable"
    told = response.get_data(as_text=True) + "\n".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1" not in told and str(port) not in told
