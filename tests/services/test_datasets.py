"""Datasets from ingested studies: created, released, published and invalidated, each traced
by the real tracer once it committed; grants decide what a workload mounts."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import sqlalchemy as sa

from dataset_service import datasets as ds
from dataset_service.models import CatalogueGeneration, Dataset, Instance, Project, Series
from tests.dataset_helpers import DATASET, create, grant
from tests.helpers import auth


def test_creating_a_dataset_traces_its_content_hash(platform, steward) -> None:
    service, auditor = platform
    dataset = create(service, steward)
    assert dataset["state"] == "draft" and dataset["content_hash"].startswith("sha256:")
    stats = dataset["statistics"]
    assert stats["studies"] >= 1 and set(stats["modalities"]) == {"CT"}
    traces = list(auditor.query(dataset=dataset["id"]))
    assert [t["action"] for t in traces] == ["CREATE_DATASET"]
    assert traces[0]["datasets"] == [{"id": dataset["id"], "hash": dataset["content_hash"]}]


def test_release_publish_and_the_public_record(platform, steward) -> None:
    service, auditor = platform
    dataset = create(service, steward)
    client = service.test_client()
    assert client.get(f"/api/v1/datasets/{dataset['id']}").status_code == 404, \
        "a draft is not public"
    released = client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    assert released.status_code == 200 and released.get_json()["state"] == "released"
    assert client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward
                       ).get_json()["error"]["code"] == "wrong_state"
    assert client.post(f"/api/v1/datasets/{dataset['id']}/publish", headers=steward
                       ).status_code == 200
    public = client.get(f"/api/v1/datasets/{dataset['id']}")
    assert public.status_code == 200 and public.get_json()["state"] == "published"
    updates = [t["details"].get("update") for t in auditor.query(dataset=dataset["id"])]
    assert updates == [None, "RELEASE", "PUBLISH"]
    ttl = client.get(f"/api/v1/datasets/{dataset['id']}/metadata?format=dcat-ttl")
    assert ttl.status_code == 200 and ttl.mimetype == "text/turtle"
    datacite = client.get(f"/api/v1/datasets/{dataset['id']}/metadata",
                          headers={"Accept": "application/vnd.datacite.datacite+json"})
    assert datacite.get_json()["titles"][0]["title"] == "Chest CT pilot"
    bad = client.get(f"/api/v1/datasets/{dataset['id']}/metadata?format=pdf")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "unknown_format"
    landing = client.get(f"/api/v1/datasets/{dataset['id']}/landing").get_json()
    assert landing["dataset"] == public.get_json()
    assert landing["schemaorg"] == client.get(
        f"/api/v1/datasets/{dataset['id']}/metadata?format=schemaorg").get_json()


def test_a_landing_is_shown_to_whom_the_record_is(platform, steward, token) -> None:
    service, _ = platform
    client = service.test_client()
    draft = create(service, steward)
    path = f"/api/v1/datasets/{draft['id']}/landing"
    assert client.get(path).status_code == 404, "a draft is not public"
    outsider = auth(token("res-9", "researcher"))
    assert client.get(path, headers=outsider).status_code == 404
    own = client.get(path, headers=steward)
    assert own.status_code == 200 and own.get_json()["dataset"]["state"] == "draft"
    assert own.get_json()["schemaorg"]["name"] == draft["name"]
    assert client.get("/api/v1/datasets/no-such-id/landing").status_code == 404


def test_a_grant_mounts_exactly_the_dataset_read_only(platform, steward, portal,
                                                     config) -> None:
    service, auditor = platform
    dataset = create(service, steward)
    service.test_client().post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    response = grant(service, portal, "res-1", dataset["id"])
    assert response.status_code == 201, response.get_json()
    mount = response.get_json()["mounts"][0]
    assert mount["read_only"] is True and mount["tree"] == f"datasets/{dataset['id']}"
    assert mount["version"] == dataset["version"]
    assert mount["content_hash"] == dataset["content_hash"]
    tree = config.repository_path / mount["tree"]
    files = [p for p in tree.rglob("*.dcm")]
    assert len(files) == dataset["statistics"]["instances"]
    assert (tree / "index.json").is_file()
    assert all(p.stat().st_mode & 0o222 == 0 for p in files), "files are read-only"
    assert tree.stat().st_mode & 0o222 == 0, "the tree cannot be written"
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            (tree / "new-file").write_text("x")
    use = [t for t in auditor.query(dataset=dataset["id"]) if t["action"] == "USE_DATASETS"]
    assert use[0]["actor"] == "res-1"
    assert use[0]["details"]["workload_id"] == "desktop-res-1"
    assert use[0]["details"]["image"] == "vre/desktop:1"


def test_grants_are_refused_with_the_dataset_and_the_reason(platform, steward,
                                                            portal) -> None:
    service, _ = platform
    dataset = create(service, steward)
    draft = grant(service, portal, "steward-1", dataset["id"], roles=("steward",))
    assert draft.status_code == 403
    refused = draft.get_json()["error"]["details"]["refused"]
    assert refused[dataset["id"]]["code"] == "draft_not_usable"
    client = service.test_client()
    client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    outsider = grant(service, portal, "res-2", dataset["id"])
    assert outsider.get_json()["error"]["details"]["refused"][dataset["id"]]["code"] == \
        "not_a_member"
    client.put(f"/api/v1/datasets/{dataset['id']}/access", headers=steward,
               json={"user_id": "res-2"})
    assert grant(service, portal, "res-2", dataset["id"]).status_code == 201
    client.put("/api/v1/revoked-users/res-2", headers=portal, json={"reason": "left"})
    assert grant(service, portal, "res-2", dataset["id"]).get_json()["error"]["details"][
        "refused"][dataset["id"]]["code"] == "user_revoked"
    unknown = grant(service, portal, "res-1", "no-such-dataset")
    assert unknown.get_json()["error"]["details"]["refused"]["no-such-dataset"]["code"] == \
        "not_found"


def test_a_grant_does_not_confirm_a_dataset_the_user_may_not_see(platform, steward,
                                                                  portal) -> None:
    service, _ = platform
    draft = create(service, steward)  # a draft: hidden from members who did not write it
    hidden = grant(service, portal, "res-1", draft["id"])
    unknown = grant(service, portal, "res-1", "no-such-dataset")
    assert hidden.status_code == unknown.status_code == 403
    assert hidden.get_json()["error"]["details"]["refused"][draft["id"]] == \
        unknown.get_json()["error"]["details"]["refused"]["no-such-dataset"]
    assert hidden.get_json()["error"]["message"].replace(draft["id"], "no-such-dataset") == \
        unknown.get_json()["error"]["message"]


def test_an_invalidated_dataset_resolves_but_cannot_be_used(platform, steward,
                                                            portal) -> None:
    service, _ = platform
    dataset = create(service, steward)
    client = service.test_client()
    client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    client.post(f"/api/v1/datasets/{dataset['id']}/publish", headers=steward)
    gone = client.post(f"/api/v1/datasets/{dataset['id']}/invalidate", headers=steward,
                       json={"reason": "a series was mislabelled"})
    assert gone.status_code == 200
    record = client.get(f"/api/v1/datasets/{dataset['id']}", headers=steward).get_json()
    assert record["state"] == "invalidated"
    assert record["invalidation_reason"] == "a series was mislabelled"
    refused = grant(service, portal, "res-1", dataset["id"]).get_json()["error"]
    assert refused["details"]["refused"][dataset["id"]]["code"] == "dataset_invalidated"


@pytest.mark.parametrize("change,code,field", [
    ({"studies": ["no-such-study"], "query": None}, "unknown_studies", "studies"),
    ({"query": {"modality": "PET"}}, "no_studies", "query"),
    ({"license_id": "Custom-1"}, "validation_error", None),
    ({"contact_email": "not-an-email"}, "validation_error", "contact_email"),
    ({"project": "nope"}, "not_found", "project"),
])
def test_bad_dataset_requests_are_refused(platform, steward, change: dict, code: str,
                                          field: str | None) -> None:
    service, _ = platform
    body = {**DATASET, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = service.test_client().post("/api/v1/datasets", headers=steward, json=body)
    assert response.status_code in (404, 422), response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code
    if field:
        assert error["field"] == field


def test_researchers_cannot_create_or_release(platform, steward, token) -> None:
    service, _ = platform
    researcher = auth(token("res-1", "researcher"))
    assert service.test_client().post("/api/v1/datasets", headers=researcher,
                                      json=DATASET).status_code == 403
    dataset = create(service, steward)
    member_steward_role = auth(token("res-1", "steward"))
    response = service.test_client().post(f"/api/v1/datasets/{dataset['id']}/release",
                                          headers=member_steward_role)
    assert response.status_code in (403, 404)




def test_integrity_check_finds_a_changed_file(platform, steward) -> None:
    service, _ = platform
    dataset = create(service, steward)
    client = service.test_client()
    report = client.get(f"/api/v1/datasets/{dataset['id']}/integrity", headers=steward)
    assert report.status_code == 200, report.get_json()
    assert report.get_json()["ok"] is True
    assert report.get_json()["traced_hash"] == dataset["content_hash"]
    repository = service.extensions["dataset.repository"]
    with service.extensions["vre.db"].session() as session:
        study_id = ds.study_ids_of(session, dataset["id"])[0]
        sha = session.scalar(sa.select(Instance.sha256).join(
            Series, Series.id == Instance.series_id).where(Series.study_id == study_id))
    blob = repository.blob_path(sha)
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes() + b"tampered")
    report = client.get(f"/api/v1/datasets/{dataset['id']}/integrity",
                        headers=steward).get_json()
    assert report["ok"] is False
    assert report["recomputed_hash"] != report["traced_hash"]
    assert any("changed" in p for p in report["problems"])


def test_published_datasets_are_found_in_the_public_catalogue(platform, steward) -> None:
    service, _ = platform
    client = service.test_client()
    hidden = create(service, steward, name="Draft never published")
    shown = create(service, steward, name="Chest CT pilot", keywords=["thorax"])
    for step in ("release", "publish"):
        client.post(f"/api/v1/datasets/{shown['id']}/{step}", headers=steward)
    found = client.get("/api/v1/catalogue?q=thorax").get_json()
    assert [r["id"] for r in found["results"]] == [shown["id"]]
    assert found["facets"]["modality"] == {"CT": 1}
    everything = client.get("/api/v1/catalogue").get_json()
    assert hidden["id"] not in [r["id"] for r in everything["results"]]
    assert client.get("/api/v1/catalogue?modality=MR").get_json()["total"] == 0
    assert client.get('/api/v1/catalogue?q="NEAR(').status_code == 200
    assert client.get("/api/v1/catalogue?per_page=1000").status_code == 422
    client.post(f"/api/v1/datasets/{shown['id']}/invalidate", headers=steward,
                json={"reason": "withdrawn by the hospital"})
    assert client.get("/api/v1/catalogue?q=thorax").get_json()["total"] == 0


def test_catalogue_answers_are_kept_until_the_catalogue_changes(platform, steward) -> None:
    service, _ = platform
    client = service.test_client()
    shown = create(service, steward, name="Chest CT pilot", keywords=["thorax"])
    for step in ("release", "publish"):
        client.post(f"/api/v1/datasets/{shown['id']}/{step}", headers=steward)

    def names() -> list[str]:
        return [r["name"] for r in client.get("/api/v1/catalogue?q=thorax")
                .get_json()["results"]]

    assert names() == ["Chest CT pilot"]
    # A change behind the service's back (not a catalogue change): the kept answer stands.
    with service.extensions["vre.db"].session() as session:
        session.execute(sa.update(Dataset).where(Dataset.id == shown["id"])
                        .values(name="Renamed behind its back"))
    assert names() == ["Chest CT pilot"]
    # Any catalogue change (here an edit of the published dataset) is seen at once.
    edited = client.patch(f"/api/v1/datasets/{shown['id']}", headers=steward,
                          json={"description": "Low-dose chest CT."})
    assert edited.status_code == 200, edited.get_json()
    assert names() == ["Renamed behind its back"]
    other = create(service, steward, name="Second thorax set", keywords=["thorax"])
    for step in ("release", "publish"):
        client.post(f"/api/v1/datasets/{other['id']}/{step}", headers=steward)
    assert sorted(names()) == ["Renamed behind its back", "Second thorax set"]
    client.post(f"/api/v1/datasets/{other['id']}/invalidate", headers=steward,
                json={"reason": "withdrawn by the hospital"})
    assert names() == ["Renamed behind its back"]
    # Were the generation's row lost, the next change would start counting again.
    with service.extensions["vre.db"].session() as session:
        session.execute(sa.delete(CatalogueGeneration))
    assert names() == ["Renamed behind its back"]
    client.patch(f"/api/v1/datasets/{shown['id']}", headers=steward,
                 json={"name": "Chest CT pilot, second edition"})
    assert names() == ["Chest CT pilot, second edition"]


def test_landing_answers_are_kept_until_a_public_record_changes(platform, steward) -> None:
    service, _ = platform
    client = service.test_client()
    db = service.extensions["vre.db"]
    shown = create(service, steward, name="Chest CT pilot")
    for step in ("release", "publish"):
        client.post(f"/api/v1/datasets/{shown['id']}/{step}", headers=steward)
    path = f"/api/v1/datasets/{shown['id']}/landing"

    def landing(**headers: str) -> dict:
        answer = client.get(path, headers=headers)
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()["dataset"]

    def behind_its_back(dataset_id: str, name: str) -> None:
        with db.session() as session:  # a Core statement: no flush, not a catalogue change
            session.execute(sa.update(Dataset).where(Dataset.id == dataset_id)
                            .values(name=name))

    assert landing()["name"] == "Chest CT pilot"
    behind_its_back(shown["id"], "Renamed behind its back")
    assert landing()["name"] == landing(**steward)["name"] == "Chest CT pilot", \
        "a public record reads the same for everyone, kept"
    # Starting a new version links the published one to it: a change a reader sees.
    draft = client.post(f"/api/v1/datasets/{shown['id']}/versions", headers=steward,
                        json={"version": "2.0"})
    assert draft.status_code == 201, draft.get_json()
    seen = landing()
    assert (seen["name"], seen["next_id"]) == ("Renamed behind its back",
                                               draft.get_json()["id"])
    # A change made through the models to a public record moves the catalogue on too.
    with db.session() as session:
        session.get(Dataset, shown["id"]).keywords = ["thorax"]
    assert landing()["keywords"] == ["thorax"]
    client.post(f"/api/v1/datasets/{shown['id']}/invalidate", headers=steward,
                json={"reason": "labels were wrong"})
    assert landing()["state"] == "invalidated"
    # A draft's landing depends on who asks, so it is never kept.
    draft_path = f"/api/v1/datasets/{draft.get_json()['id']}/landing"
    assert client.get(draft_path, headers=steward).status_code == 200
    behind_its_back(draft.get_json()["id"], "Second edition, renamed")
    assert client.get(draft_path, headers=steward).get_json()["dataset"]["name"] == \
        "Second edition, renamed"
    assert client.get(draft_path).status_code == 404


def test_public_answers_carry_an_etag_that_holds_until_the_catalogue_changes(
        platform, steward) -> None:
    service, _ = platform
    client = service.test_client()
    shown = create(service, steward, name="Chest CT pilot", keywords=["thorax"])
    for step in ("release", "publish"):
        client.post(f"/api/v1/datasets/{shown['id']}/{step}", headers=steward)
    paths = ("/api/v1/catalogue?q=thorax", f"/api/v1/datasets/{shown['id']}/landing")
    first = {path: client.get(path) for path in paths}
    tags = {path: answer.headers["ETag"] for path, answer in first.items()}
    assert len(set(tags.values())) == 2
    for path, tag in tags.items():
        held = client.get(path, headers={"If-None-Match": tag})
        assert held.status_code == 304 and held.data == b"" and held.headers["ETag"] == tag
        assert client.get(path, headers={"If-None-Match": '"another"'}).status_code == 200
    client.patch(f"/api/v1/datasets/{shown['id']}", headers=steward,
                 json={"description": "Low-dose chest CT."})
    for path, tag in tags.items():
        moved = client.get(path, headers={"If-None-Match": tag})
        assert moved.status_code == 200 and moved.headers["ETag"] != tag
    draft = create(service, steward)
    answer = client.get(f"/api/v1/datasets/{draft['id']}/landing", headers=steward)
    assert answer.status_code == 200 and "ETag" not in answer.headers, \
        "what depends on who asks is not named for everyone"


def test_access_requests_are_decided_by_stewards_and_traced(platform, steward, portal,
                                                            token) -> None:
    service, auditor = platform
    dataset = create(service, steward)
    client = service.test_client()
    client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    outsider = auth(token("res-9", "researcher"))
    asked = client.post(f"/api/v1/datasets/{dataset['id']}/requests", headers=outsider,
                        json={"purpose": "train a nodule detector"})
    assert asked.status_code == 201, asked.get_json()
    again = client.post(f"/api/v1/datasets/{dataset['id']}/requests", headers=outsider,
                        json={"purpose": "train a nodule detector"})
    assert again.status_code == 409
    request_id = asked.get_json()["id"]
    assert client.post(f"/api/v1/requests/{request_id}/approve", headers=outsider,
                       json={}).status_code == 403, "nobody approves their own request"
    assert grant(service, portal, "res-9", dataset["id"]).status_code == 403
    approved = client.post(f"/api/v1/requests/{request_id}/approve", headers=steward,
                           json={"note": "fits the project"})
    assert approved.get_json()["state"] == "approved"
    assert grant(service, portal, "res-9", dataset["id"]).status_code == 201
    assert client.post(f"/api/v1/requests/{request_id}/reject", headers=steward,
                       json={}).status_code == 409
    mine = client.get(f"/api/v1/datasets/{dataset['id']}/requests", headers=outsider)
    assert [r["state"] for r in mine.get_json()] == ["approved"]
    actions = [t["action"] for t in auditor.query(dataset=dataset["id"])]
    assert "ACCESS_REQUESTED" in actions and "ACCESS_APPROVED" in actions


def test_metadata_edits_and_new_versions_are_traced_and_linked(platform, steward) -> None:
    service, auditor = platform
    dataset = create(service, steward)
    client = service.test_client()
    client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    edited = client.patch(f"/api/v1/datasets/{dataset['id']}", headers=steward,
                          json={"license_id": "CC-BY-NC-4.0", "keywords": ["lung"]})
    assert edited.status_code == 200, edited.get_json()
    assert edited.get_json()["license_url"].endswith("/by-nc/4.0/")
    updates = [t["details"].get("update") for t in auditor.query(dataset=dataset["id"])]
    assert updates[-1] == "LICENSE_UPDATED"
    nothing = client.patch(f"/api/v1/datasets/{dataset['id']}", headers=steward, json={})
    assert nothing.status_code == 422
    second = client.post(f"/api/v1/datasets/{dataset['id']}/versions", headers=steward,
                         json={"version": "2.0"})
    assert second.status_code == 201, second.get_json()
    new = second.get_json()
    assert new["state"] == "draft" and new["previous_id"] == dataset["id"]
    assert new["content_hash"] == dataset["content_hash"], "same studies, same hash"
    old = client.get(f"/api/v1/datasets/{dataset['id']}", headers=steward).get_json()
    assert old["next_id"] == new["id"]
    again = client.post(f"/api/v1/datasets/{dataset['id']}/versions", headers=steward,
                        json={"version": "3.0"})
    assert again.status_code == 409


def test_project_defaults_fill_licence_and_contact(platform, steward) -> None:
    service, _ = platform
    client = service.test_client()
    made = client.post("/api/v1/projects", headers=steward, json={
        "name": "brain", "title": "Brain", "default_license_id": "CC-BY-NC-4.0",
        "default_contact_name": "Brain team", "default_contact_email": "brain@h.example"})
    assert made.status_code == 201, made.get_json()
    # The brain project has no studies; the defaults are what is tested, on lung's studies.
    body = {k: v for k, v in DATASET.items()
            if k not in ("license_id", "contact_name", "contact_email")}
    refused = client.post("/api/v1/datasets", headers=steward, json=body)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["field"] == "license_id"
    with service.extensions["vre.db"].session() as session:
        lung = session.scalar(sa.select(Project).where(Project.name == "lung"))
        lung.default_license_id, lung.default_license_url = "CC0-1.0", None
        lung.default_contact_name, lung.default_contact_email = "Lung", "lung@h.example"
    made = client.post("/api/v1/datasets", headers=steward, json=body)
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["license_id"] == "CC0-1.0"
    assert made.get_json()["contact_name"] == "Lung"


def test_a_published_pid_keeps_resolving_after_invalidation(platform, steward) -> None:
    service, _ = platform
    client = service.test_client()
    published_one, released_one = create(service, steward), create(service, steward)
    for dataset, actions in ((published_one, ("release", "publish")),
                             (released_one, ("release",))):
        for action in (*actions, "invalidate"):
            body = {"reason": "labels were wrong"} if action == "invalidate" else None
            assert client.post(f"/api/v1/datasets/{dataset['id']}/{action}", headers=steward,
                               json=body).status_code == 200
    record = client.get(f"/api/v1/datasets/{published_one['id']}")
    assert record.status_code == 200
    assert record.get_json()["invalidation_reason"] == "labels were wrong"
    assert client.get(f"/api/v1/datasets/{published_one['id']}/metadata").status_code == 200
    landing = client.get(f"/api/v1/datasets/{published_one['id']}/landing").get_json()
    assert landing["dataset"]["invalidation_reason"] == "labels were wrong"
    assert client.get(f"/api/v1/datasets/{released_one['id']}").status_code == 404, \
        "never public, so not public now"


def test_trees_are_made_at_release_and_retired_at_invalidation(platform, steward, portal,
                                                               config) -> None:
    service, _ = platform
    client = service.test_client()
    dataset = create(service, steward)
    tree = config.repository_path / "datasets" / dataset["id"]
    assert not tree.exists(), "a draft has no tree"
    client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    assert (tree / "index.json").is_file(), "the release lays out the tree"
    # A tree lost since (a repository restored without its trees) is laid out again before
    # the grant, outside its transaction; the grant itself only names it.
    shutil.rmtree(tree)
    assert grant(service, portal, "res-1", dataset["id"]).status_code == 201
    assert (tree / "index.json").is_file()
    invalidated = client.post(f"/api/v1/datasets/{dataset['id']}/invalidate",
                              headers=steward, json={"reason": "consent withdrawn"})
    assert invalidated.status_code == 200
    assert not tree.exists(), "an invalidated dataset's tree is retired"
    refused = grant(service, portal, "res-1", dataset["id"])
    assert refused.status_code == 403 and not tree.exists()


def test_a_grant_is_ended_by_its_holder_and_traced_once(platform, steward, portal,
                                                        token) -> None:
    service, auditor = platform
    client = service.test_client()
    dataset = create(service, steward)
    client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)
    made = grant(service, portal, "res-1", dataset["id"]).get_json()
    path = f"/api/v1/grants/{made['id']}"
    # Another service, the researcher and the dataset's steward may not end it.
    for caller in (auth(token("service:tracer", "service")), auth(token("res-1", "researcher")),
                   steward):
        refused = client.delete(path, headers=caller)
        assert refused.status_code == 403, refused.get_json()
    assert client.delete(path, headers=portal).status_code == 200
    again = client.delete(path, headers=auth(token("admin-1", "admin")))
    assert again.status_code == 200
    ended = [t for t in auditor.query(dataset=dataset["id"]) if t["action"] == "GRANT_ENDED"]
    assert len(ended) == 1, "ended once, traced once"
    assert ended[0]["actor"] == "service:portal"
    assert ended[0]["details"]["workload_id"] == made["workload_id"]
    assert ended[0]["details"]["subject_user"] == "res-1"
    assert ended[0]["datasets"] == [{"id": dataset["id"], "hash": dataset["content_hash"]}]
    assert client.delete("/api/v1/grants/no-such-grant", headers=portal).status_code == 404


def test_grants_asked_together_are_each_decided_alone_in_one_transaction(
        platform, steward, portal, token) -> None:
    """The batch of grants of jobs submitted together: each granted or refused as a grant
    asked alone would be (a refusal that grant's answer alone), each with its USE_DATASETS
    trace; only a service may ask."""
    service, auditor = platform
    dataset = create(service, steward)
    client = service.test_client()
    client.post(f"/api/v1/datasets/{dataset['id']}/release", headers=steward)

    def body(user: str, *ids: str) -> dict:
        return {"user_id": user, "user_roles": ["researcher"], "workload_id": f"j-{user}",
                "purpose": "job", "datasets": list(ids), "tool": "pytorch"}

    asks = [body("res-1", dataset["id"]), body("res-2", dataset["id"]),
            body("res-1", "no-such-dataset"), body("res-1", dataset["id"], dataset["id"])]
    answer = client.post("/api/v1/grants/batch", headers=portal, json={"grants": asks})
    assert answer.status_code == 200, answer.get_json()
    mine, outsider, unknown, again = answer.get_json()["grants"]
    alone = grant(service, portal, "res-2", dataset["id"]).get_json()["error"]
    assert outsider == {"grant": None, "error": {
        "code": alone["code"], "message": alone["message"], "status": 403,
        "details": alone["details"]}}
    assert unknown["error"]["details"]["refused"]["no-such-dataset"]["code"] == "not_found"
    for made in (mine, again):
        assert made["error"] is None
        assert [m["content_hash"] for m in made["grant"]["mounts"]] == \
            [dataset["content_hash"]]
    assert mine["grant"]["id"] != again["grant"]["id"]
    open_ids = {g["id"] for g in client.get("/api/v1/grants/open", headers=portal)
                .get_json()["grants"]}
    assert {mine["grant"]["id"], again["grant"]["id"]} <= open_ids
    # A job's grant is traced in the outbox's next batch, a moment after it answered.
    deadline = time.monotonic() + 10
    while True:
        used = [t["details"]["workload_id"] for t in auditor.query(dataset=dataset["id"])
                if t["action"] == "USE_DATASETS"]
        if len(used) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert used == ["j-res-1", "j-res-1"]
    researcher = auth(token("res-1", "researcher"))
    refused = client.post("/api/v1/grants/batch", headers=researcher, json={"grants": asks})
    assert refused.status_code == 403
    for wrong in ({"grants": []}, {"grants": [{"user_id": "x"}]}, {"grant": asks}):
        bad = client.post("/api/v1/grants/batch", headers=portal, json=wrong)
        assert bad.status_code in (400, 422), bad.get_json()
