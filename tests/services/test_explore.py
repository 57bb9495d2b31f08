"""Looking inside datasets through `DatasetClient` over real HTTP: the explorer shows metadata
and clinical variables to those who may use the data and nothing to others, the access log
lists each use, and stewards preview study queries and review requests."""

from __future__ import annotations

import json

import pytest

from dataset_service.client import DatasetClient, DatasetError
from tests.dataset_helpers import create, grant
from tests.helpers import serving
from vre.service_auth import StaticToken


@pytest.fixture
def served(platform):
    service, _ = platform
    with serving(service) as url:
        yield service, url


def client_for(url: str, token) -> DatasetClient:
    return DatasetClient(url, StaticToken(token) if token else None)


def test_the_explorer_shows_studies_series_and_clinical_data_but_no_files(
        served, steward, token) -> None:
    service, url = served
    dataset = create(service, steward)
    member = client_for(url, token("res-1", "researcher"))
    with pytest.raises(DatasetError) as refused:
        member.studies(dataset["id"])
    assert refused.value.status == 404, "a draft is hidden from members who did not write it"
    client_for(url, token("steward-1", "steward")).release(dataset["id"])
    page = member.studies(dataset["id"], per_page=2)
    assert page["total"] == dataset["statistics"]["studies"] and len(page["studies"]) <= 2
    study = page["studies"][0]
    assert study["subject"]["pseudonym"] and "age" in study["subject"]
    assert study["series"] and study["series"][0]["modality"] == "CT"
    text = json.dumps(page)
    assert "/repository" not in text and "sha256" not in text, "no paths, no file hashes"
    outsider = client_for(url, token("someone", "researcher"))
    with pytest.raises(DatasetError) as hidden:
        outsider.studies(dataset["id"])
    assert hidden.value.code == "not_a_member"
    with pytest.raises(DatasetError) as anonymous:
        client_for(url, None).studies(dataset["id"])
    assert anonymous.value.status == 401


def test_the_access_log_lists_each_use_with_tool_image_and_flavor(
        served, steward, portal, token) -> None:
    service, url = served
    dataset = create(service, steward)
    stewards = client_for(url, token("steward-1", "steward"))
    stewards.release(dataset["id"])
    assert grant(service, portal, "res-1", dataset["id"]).status_code == 201
    log = stewards.access_log(dataset["id"])
    assert [(e["user_id"], e["tool"], e["image"], e["flavor"]) for e in log] == [
        ("res-1", "desktop", "vre/desktop:1", "desktop")]
    with pytest.raises(DatasetError) as refused:
        client_for(url, token("someone", "researcher")).access_log(dataset["id"])
    assert refused.value.status in (403, 404)


def test_a_steward_previews_a_study_query_before_creating(served, token) -> None:
    _, url = served
    stewards = client_for(url, token("steward-1", "steward"))
    preview = stewards.search_studies("lung", modality="CT", limit=1)
    assert preview["studies_matched"] >= 1 and len(preview["studies"]) == 1
    assert preview["statistics"]["studies"] == preview["studies_matched"]
    assert stewards.search_studies("lung", modality="XA")["studies_matched"] == 0
    with pytest.raises(DatasetError) as refused:
        client_for(url, token("res-1", "steward")).search_studies("lung")
    assert refused.value.code == "not_a_steward"


def test_requests_to_review_and_the_access_list(served, steward, token) -> None:
    service, url = served
    dataset = create(service, steward, public_use=False)
    stewards = client_for(url, token("steward-1", "steward"))
    stewards.release(dataset["id"])
    asker = client_for(url, token("someone", "researcher"))
    asked = asker.request_access(dataset["id"], "train a nodule detector")
    assert [r["id"] for r in asker.requests()] == [asked["id"]]
    assert [r["id"] for r in stewards.requests("to_review", "pending")] == [asked["id"]]
    assert asker.requests("to_review") == [], "not a steward: nothing to review"
    stewards.decide_request(asked["id"], approve=True, note="ok")
    assert [e["user_id"] for e in stewards.access_list(dataset["id"])] == ["someone"]
    with pytest.raises(DatasetError) as refused:
        asker.access_list(dataset["id"])
    assert refused.value.status == 403
