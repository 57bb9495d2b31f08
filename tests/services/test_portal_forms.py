"""Every form of the portal's pages, posted with what the JSON API refuses (a NUL character,
a whole number past 64 bits, a value longer than any field): each answers 422 with a message
that says what was wrong, never 500, and leaves nothing changed in the portal or the dataset
service."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.dataset_helpers import create
from tests.portal_helpers import post, signed_in
from vre.api import MAX_FORM_VALUE

HOSTILE = {
    "nul": ("a\x00b", "invalid_character", "without the NUL character"),
    "past_64_bits": ("9" * 30, "out_of_range", "integer out of range"),
    "below_64_bits": ("-9223372036854775809", "out_of_range", "integer out of range"),
    "thousands_of_digits": ("7" * 5000, "out_of_range", "integer out of range"),
    "too_long": ("x" * (MAX_FORM_VALUE + 1), "value_too_long",
                 f"longer than {MAX_FORM_VALUE} characters"),
}
# Every field a portal form reads.
FIELDS = (
    "active", "allowed_projects", "allowed_roles", "authors", "body_part", "command",
    "confirm_password", "contact_email", "contact_name", "cpu_hours_per_month", "cpus",
    "create", "current_password", "decision", "description", "diagnosis", "display_name",
    "email", "enabled", "gpu_hours_per_month", "gpu_model", "gpus", "id", "image",
    "image_digest", "keywords", "kind", "license_id", "max_desktops", "max_gpus", "max_jobs",
    "max_runtime_hours", "memory_gib", "modality", "name", "new_password", "note", "password",
    "project", "provenance", "public_use", "public_use_shown", "purpose", "reason", "remove",
    "role", "roles", "scope", "sex", "age_min", "age_max", "subject", "title", "user",
    "user_id", "username", "version",
)


def form_routes(app: Flask, dataset_id: str) -> list[str]:
    """Every page route that takes a form, with its path filled in."""
    fill = {"dataset_id": dataset_id, "action": "release", "user_id": "res-1",
            "name": "lung", "app_id": "desktop", "quota_id": "none", "request_id": "none"}
    paths = []
    for rule in app.url_map.iter_rules():
        if "POST" not in (rule.methods or ()) or rule.rule.startswith("/api/"):
            continue
        paths.append(rule.rule.replace("<", "{").replace(">", "}").format(
            **{arg: fill.get(arg, "none") for arg in rule.arguments}))
    return sorted(paths)


def state_of(*apps: Flask) -> list[Any]:
    """Every row of every table of the services, to compare before and after."""
    rows = []
    for app in apps:
        engine = app.extensions["vre.db"].engine
        with engine.connect() as conn:
            for name in sorted(sa.inspect(engine).get_table_names()):
                if name in ("browser_sessions", "alembic_version"):
                    continue
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
                rows.append((name, sorted(map(repr, conn.execute(table.select())))))
    return rows


@pytest.mark.parametrize("kind", HOSTILE)
def test_every_form_refuses_what_the_api_refuses(site: dict[str, Any], steward, kind: str
                                                 ) -> None:
    value, code, words = HOSTILE[kind]
    portal_app, datasets = site["portal"], site["datasets"]
    draft = create(datasets, steward)["id"]
    routes = form_routes(portal_app, draft)
    assert len(routes) > 20, routes
    before = state_of(portal_app, datasets)
    wrong = []
    for role in ("admin-1", "steward-1"):
        client = signed_in(portal_app, role)
        for n, path in enumerate(routes):
            # Every field at once, but for the longest values: one field each time, in turn
            # (all of them would pass the size limit of a request, a refusal of its own).
            fields = FIELDS if len(value) < 10_000 else (FIELDS[n % len(FIELDS)],)
            response = post(client, path, {field: value for field in fields})
            page = response.get_data(as_text=True)
            if response.status_code != 422 or words not in page or code not in page:
                wrong.append(f"{role} {path}: {response.status_code}")
    assert not wrong, wrong
    assert state_of(portal_app, datasets) == before, "a refused form changed something"


@pytest.mark.parametrize("number", ["1e30", "inf", "-inf", "nan", "1e400"])
def test_numbers_no_database_stores_are_refused(site: dict[str, Any], number: str) -> None:
    """Numbers a form sends as floats that become whole numbers past 64 bits, or none."""
    portal_app = site["portal"]
    client = signed_in(portal_app, "admin-1")
    before = state_of(portal_app)
    quota = post(client, "/admin/quotas", scope="user", subject="res-1", max_desktops=number)
    flavor = post(client, "/admin/flavors", name="huge", description="", cpus="1",
                  memory_gib=number, max_runtime_hours="1", enabled="on")
    for response in (quota, flavor):
        assert response.status_code == 422, response.get_data(as_text=True)[:500]
    assert state_of(portal_app) == before
