"""Small-cell suppression: the statistics anyone may read of a published dataset (its record,
its landing answer, its FAIR metadata, its landing page) show a count below the threshold as
"< N", so no small group of people can be singled out; those who may see the studies
themselves see exact counts."""

from __future__ import annotations

import json
import re
from typing import Any

from dataset_service.datasets import public_statistics
from tests.dataset_helpers import create
from tests.helpers import auth
from tests.portal_helpers import published
from vre.config import load_config

SMALL, AT_LEAST = "< 5", "≥ 5"


def _cells(stats: dict[str, Any]) -> list[Any]:
    """Every count of a category or an age bin in a statistics record."""
    cells = [
        n
        for key in ("modalities", "body_parts", "manufacturers", "sex", "diagnoses")
        for n in (stats.get(key) or {}).values()
    ]
    return cells + [n for _lo, _hi, n in stats.get("age_histogram") or []]


def _no_small_count(stats: dict[str, Any]) -> None:
    cells = _cells(stats)
    assert cells, "the dataset has statistics to suppress"
    assert all(n in (SMALL, AT_LEAST) or (isinstance(n, int) and n >= 5) for n in cells), cells
    assert stats["suppressed_below"] == 5


def _publish(service, steward) -> dict[str, Any]:
    dataset = create(service, steward)
    for step in ("release", "publish"):
        assert (
            service.test_client()
            .post(f"/api/v1/datasets/{dataset['id']}/{step}", headers=steward)
            .status_code
            == 200
        )
    return dataset


def test_public_statistics_suppress_small_cells(platform, steward, token) -> None:
    service, _ = platform
    dataset = _publish(service, steward)
    client = service.test_client()
    outsider = auth(token("someone", "researcher"))
    for headers in ({}, outsider):
        record = client.get(f"/api/v1/datasets/{dataset['id']}", headers=headers).get_json()
        _no_small_count(record["statistics"])
        assert record["statistics"]["subjects"] == dataset["statistics"]["subjects"], (
            "the dataset's size stays exact"
        )
    landing = client.get(f"/api/v1/datasets/{dataset['id']}/landing").get_json()
    _no_small_count(landing["dataset"]["statistics"])
    exact = dataset["statistics"]
    assert min(_cells(exact)) < 5, "the demo cohort has small cells to begin with"
    if exact.get("age_min") is not None:
        assert landing["dataset"]["statistics"]["age_min"] % 10 == 0, (
            "no exact extreme age: the bounds of its age bin"
        )
    for fmt in ("datacite", "schemaorg", "dcat-ttl", "dcat-jsonld"):
        text = client.get(f"/api/v1/datasets/{dataset['id']}/metadata?format={fmt}").get_data(
            as_text=True
        )
        assert not re.search(r"\((?:[1-4])\)|: [1-4](?:[,.]|$)", text), (fmt, text[:2000])
        if fmt != "schemaorg":  # the others carry a summary of the statistics
            assert SMALL in text, fmt
    # Members who may explore the studies see exact counts.
    member = client.get(
        f"/api/v1/datasets/{dataset['id']}", headers=auth(token("res-1", "researcher"))
    ).get_json()
    assert _cells(member["statistics"]) == _cells(exact)
    assert "suppressed_below" not in member["statistics"]


def test_the_threshold_is_configurable_and_one_hidden_cell_is_not_derivable() -> None:
    stats = {
        "subjects": 14,
        "sex": {"F": 9, "M": 3, "O": 2},
        "modalities": {"CT": 9, "MR": 2},
        "age_histogram": [[30, 39, 6], [40, 49, 1], [70, 79, 7]],
        "age_min": 31,
        "age_max": 77,
    }
    shown = public_statistics(stats, 3)
    # One hidden cell beside a public total could be worked out: the next smallest is
    # shown only as at least the threshold.
    assert shown["sex"] == {"F": 9, "M": "≥ 3", "O": "< 3"}
    assert shown["modalities"] == {"CT": "≥ 3", "MR": "< 3"}
    assert shown["age_histogram"] == [[30, 39, "≥ 3"], [40, 49, "< 3"], [70, 79, 7]]
    assert (shown["age_min"], shown["age_max"]) == (30, 79), "bin bounds, not exact ages"
    assert shown["subjects"] == 14 and shown["suppressed_below"] == 3
    assert public_statistics(stats, 1) == {
        **stats,
        "age_min": 30,
        "age_max": 79,
        "suppressed_below": 1,
    }
    assert load_config(env={"VRE_SMALL_CELL_THRESHOLD": "10"}).small_cell_threshold == 10
    assert load_config(env={}).small_cell_threshold == 5


def test_the_landing_page_shows_small_cells_as_fewer_than(site, steward) -> None:
    dataset = published(site, steward)
    html = site["portal"].test_client().get(f"/datasets/{dataset['id']}").get_data(as_text=True)
    assert "&lt; 5" in html and "Subjects by sex" in html
    labels = re.findall(r'aria-label="Subjects by sex: ([^"]*)"', html)
    assert labels and all(
        re.fullmatch(r"[^,]+ &lt; 5", cell.strip()) for cell in labels[0].split(",")
    ), labels
    ld = json.loads(
        re.search(r'<script type="application/ld\+json">(.*?)</script>', html, re.S).group(1)
    )
    assert ld["@type"] == "Dataset"
