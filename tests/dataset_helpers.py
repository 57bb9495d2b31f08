"""A platform of real services for dataset tests: the tracer served over HTTP, the dataset
service with ingested demo studies in project "lung" (steward-1 stewards it, res-1 is a
researcher member), and the requests a steward and the portal make."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from dataset_service.demo import DemoSpec, generate_demo_data
from dataset_service.ingest import Ingestor
from dataset_service.models import Project, ProjectMember
from tests.helpers import auth, serving
from tracer.client import TracerClient
from vre.service_auth import StaticToken

SPEC = DemoSpec(seed=5, subjects=4, slices_per_series=(3, 4))
DATASET = {"project": "lung", "name": "Chest CT pilot", "description": "Pilot <b>set</b>",
           "query": {"modality": "CT"}, "license_id": "CC-BY-4.0",
           "contact_name": "Data Steward", "contact_email": "steward@hospital.example",
           "keywords": ["chest", "CT"], "authors": [{"name": "Ada Lovelace"}]}


@pytest.fixture
def platform(make_app: Callable[[str], Flask], token: Callable[..., str],
             tmp_path: Path) -> Iterator[tuple[Flask, TracerClient]]:
    tracer_app = make_app("tracer")
    service = make_app("dataset_service")
    with serving(tracer_app) as tracer_url:
        client = TracerClient(tracer_url, StaticToken(token("service:dataset_service",
                                                            "service")))
        service.extensions["dataset.tracer"] = client
        db = service.extensions["vre.db"]
        with db.session() as session:
            project = Project(name="lung", title="Lung", created_by="steward-1")
            session.add(project)
            session.flush()
            session.add_all([ProjectMember(project_id=project.id, user_id="steward-1",
                                           role="steward"),
                             ProjectMember(project_id=project.id, user_id="res-1",
                                           role="researcher")])
            project_id = project.id
        generate_demo_data(tmp_path / "in", SPEC)
        ingestor: Ingestor = service.extensions["dataset.ingestor"]
        ingestor.run(ingestor.start(project_id, tmp_path / "in", "steward-1"))
        yield service, TracerClient(tracer_url, StaticToken(token("auditor-1", "auditor")))


@pytest.fixture
def steward(token: Callable[..., str]) -> dict[str, str]:
    return auth(token("steward-1", "steward"))


@pytest.fixture
def portal(token: Callable[..., str]) -> dict[str, str]:
    return auth(token("service:portal", "service"))


def create(service: Flask, steward: dict[str, str], **changes: object) -> dict:
    response = service.test_client().post("/api/v1/datasets", headers=steward,
                                          json={**DATASET, **changes})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def grant(service: Flask, portal: dict[str, str], user: str, *ids: str,
          roles: tuple[str, ...] = ("researcher",)):
    return service.test_client().post("/api/v1/grants", headers=portal, json={
        "user_id": user, "user_roles": list(roles), "workload_id": f"desktop-{user}",
        "purpose": "desktop", "datasets": list(ids), "tool": "desktop",
        "image": "vre/desktop:1", "flavor": "desktop"})
