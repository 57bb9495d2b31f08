"""What a service's failure tells a caller: what went wrong, never where the platform's
services live (host names, ports, paths), since callers pass these messages on to people."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dataset_service.client import DatasetClient, DatasetUnavailable
from tests.helpers import free_port
from tracer.client import TracerClient, TracerUnavailable


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
