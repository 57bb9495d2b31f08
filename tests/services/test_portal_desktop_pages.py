"""The desktop pages without a browser: who may see a desktop's viewer and list (its owner;
anyone else reads it as not existing), anonymous visitors sent to sign in, the viewer's
policy naming the VNC proxy and nothing more, the session's ticket (CSRF-checked, never in a
URL), the launch form's flavors with the quota decision's reasons and the datasets the dataset
service lets the person use, the noVNC file route, and the administrators' workloads page.

Desktops here are the compute agent's records written straight into the portal's database:
these pages read those records, and starting real sandboxes is the browser test's part
(tests/browser/test_desktop.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from portal.catalogues import seed_defaults
from portal.models import Quota, Workload
from portal.vncproxy import TICKET_AUDIENCE, TICKET_PROTOCOL
from tests.conftest import ISSUER
from tests.dataset_helpers import create
from tests.portal_helpers import CSRF, make_portal, post, published, signed_in
from vre.config import Config
from vre.db import utcnow
from vre.tokens import TokenValidator


def running_desktop(app: Flask, owner: str, workload_id: str = "d0123456789abcdef",
                    state: str = "running", kind: str = "desktop") -> str:
    """A workload as the compute agent records one it started."""
    with app.extensions["vre.db"].session() as session:
        session.add(Workload(id=workload_id, owner_id=owner, kind=kind, application="desktop",
                             flavor="desktop", state=state, datasets=["ds-1"],
                             started_at=utcnow()))
    return workload_id


def text(response: Any) -> str:
    return response.get_data(as_text=True)


def test_a_desktop_is_its_owners_alone(site: dict[str, Any]) -> None:
    app = site["portal"]
    desktop = running_desktop(app, "res-1")
    owner = signed_in(app, "res-1")
    assert owner.get(f"/desktops/{desktop}").status_code == 200
    assert desktop in text(owner.get("/desktops"))
    for who in ("someone", "admin-1"):  # an administrator stops it elsewhere, never views it
        other = signed_in(app, who)
        for path in (f"/desktops/{desktop}", f"/desktops/{desktop}/state"):
            answer = other.get(path)
            assert answer.status_code == 404, (who, path)
            unknown = other.get(path.replace(desktop, "dno-such")).get_data()
            assert answer.get_data().replace(desktop.encode(), b"dno-such") == unknown
        for action in ("ticket", "extend", "stop"):
            answer = other.post(f"/desktops/{desktop}/{action}",
                                headers={"X-CSRF-Token": CSRF})
            assert answer.status_code == 404, (who, action)
        assert desktop not in text(other.get("/desktops"))
    with app.extensions["vre.db"].session() as session:
        assert session.get(Workload, desktop).state == "running", "nothing was stopped"


def test_anonymous_visitors_are_sent_to_sign_in(site: dict[str, Any]) -> None:
    app = site["portal"]
    desktop = running_desktop(app, "res-1")
    anonymous = signed_in(app, None)
    for path in ("/desktops", "/desktops/new", f"/desktops/{desktop}",
                 f"/desktops/{desktop}/state"):
        answer = anonymous.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith(
            "/signin?next="), path
    answer = post(anonymous, f"/desktops/{desktop}/stop")
    assert answer.status_code == 302 and "/signin" in answer.headers["Location"]


def test_the_viewer_may_connect_to_the_vnc_proxy_and_nowhere_else(site: dict[str, Any]) -> None:
    app = site["portal"]
    config = app.extensions["vre.config"]
    desktop = running_desktop(app, "res-1")
    page = signed_in(app, "res-1").get(f"/desktops/{desktop}")
    policy = dict(part.strip().split(" ", 1)
                  for part in page.headers["Content-Security-Policy"].split(";"))
    assert policy["connect-src"] == f"'self' ws://{config.host}:{config.vnc_proxy_port}"
    assert policy["script-src"] == "'self'", "no inline script, no other origin"
    html = text(page)
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == [], "every script is a file"
    assert 'src="/static/desktop.js"' in html and 'data-rfb="/novnc/core/rfb.js"' in html
    other = signed_in(app, "res-1").get("/desktops")
    assert f"ws://{config.host}" not in other.headers["Content-Security-Policy"], \
        "other pages keep the site's own policy"


def test_the_owners_session_gets_a_ticket_outside_any_url(site: dict[str, Any]) -> None:
    app = site["portal"]
    config = app.extensions["vre.config"]
    desktop = running_desktop(app, "res-1")
    owner = signed_in(app, "res-1")
    refused = owner.post(f"/desktops/{desktop}/ticket")
    assert refused.status_code == 400 and "csrf_failed" in text(refused)
    answer = owner.post(f"/desktops/{desktop}/ticket",
                        headers={"X-CSRF-Token": CSRF, "Accept": "application/json"})
    assert answer.status_code == 200, text(answer)
    ticket = answer.get_json()
    assert ticket["url"] == f"ws://{config.host}:{config.vnc_proxy_port}/vnc"
    assert ticket["protocol"].startswith(TICKET_PROTOCOL)
    assert answer.headers["Cache-Control"] == "no-store"
    validator = TokenValidator(ISSUER, TICKET_AUDIENCE, config.jwks)
    claims = validator.validate(ticket["protocol"][len(TICKET_PROTOCOL):]).claims
    assert claims["sub"] == "res-1" and claims["wid"] == desktop
    stopped = running_desktop(app, "res-1", "dstopped0000000", state="stopped")
    late = owner.post(f"/desktops/{stopped}/ticket",
                      headers={"X-CSRF-Token": CSRF, "Accept": "application/json"})
    assert late.status_code == 409 and late.get_json()["error"]["code"] == \
        "desktop_not_running"


def test_the_launch_form_offers_what_the_person_may_start_and_use(
        site: dict[str, Any], steward: dict[str, str]) -> None:
    app = site["portal"]
    # A host large enough for every default flavor but GPUs, whatever machine runs this.
    app.extensions["vre.config"] = app.extensions["vre.config"].model_copy(
        update={"host_cpus": 16, "host_memory_mib": 65536, "host_gpus": 0})
    with app.extensions["vre.db"].session() as session:
        seed_defaults(session)
        # 20 CPU-hours a month: a desktop (2 CPUs for 8 h) fits, small-gpu (4 for 8) does not,
        # and that quota refusal comes before the host's (which has no GPU).
        session.add(Quota(scope="user", subject="res-1", cpu_hours_per_month=20))
    usable = published(site, steward, name="Lung CT usable")
    draft = create(site["datasets"], steward, name="Lung CT draft")
    form = text(signed_in(app, "res-1").get("/desktops/new"))
    assert re.search(r'name="flavor" value="desktop" checked', form)
    assert re.search(r'name="flavor" value="no-gpu" required', form)
    gpu = re.search(r'value="small-gpu" disabled.*?Unavailable: (.*?) <span class="muted">'
                    r'\((\w+)\)', form, re.S)
    assert gpu and gpu.group(2) == "quota_budget" and "20 left" in gpu.group(1)
    assert re.search(r'value="large-gpu" disabled', form)
    assert 'value="desktop" checked' in form and 'value="pytorch"' not in form, \
        "desktop applications only"
    assert f'value="{usable["id"]}"' in form and f'value="{draft["id"]}"' not in form
    outsider = text(signed_in(app, "someone").get("/desktops/new"))
    assert f'value="{usable["id"]}"' not in outsider, "not a member of its project"


def test_a_refused_launch_shows_the_reason_and_starts_nothing(
        site: dict[str, Any], steward: dict[str, str]) -> None:
    app = site["portal"]
    with app.extensions["vre.db"].session() as session:
        seed_defaults(session)
    dataset = published(site, steward)
    client = signed_in(app, "res-1")
    empty = post(client, "/desktops/new", flavor="desktop", application="desktop")
    assert empty.status_code == 422 and "datasets" in text(empty)
    # No compute agent runs for this portal: the API's own refusal is what the form shows.
    down = post(client, "/desktops/new", flavor="desktop", application="desktop",
                datasets=dataset["id"])
    assert down.status_code == 503 and "agent_unavailable" in text(down)
    assert 'role="alert"' in text(down)
    with app.extensions["vre.db"].session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Workload)) == 0


@pytest.fixture
def novnc(tmp_path: Path, config: Config) -> Flask:
    """A portal whose noVNC folder is a small stand-in, with a secret file beside it."""
    folder = tmp_path / "novnc"
    (folder / "core").mkdir(parents=True)
    (folder / "core" / "rfb.js").write_text("export default class RFB {}\n")
    (folder / "core" / "notes.txt").write_text("not a script\n")
    (folder / "vnc.html").write_text("<script>inline()</script>\n")
    (tmp_path / "secret.js").write_text("the secret\n")
    return make_portal(config.model_copy(update={"novnc_path": folder}))


def test_novnc_files_come_from_its_folder_and_nowhere_else(novnc: Flask) -> None:
    client = novnc.test_client()
    script = client.get("/novnc/core/rfb.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"
    assert text(script) == "export default class RFB {}\n"
    for path in ("/novnc/core/../../secret.js", "/novnc/core/%2e%2e/%2e%2e/secret.js",
                 "/novnc/core/..%2f..%2fsecret.js", "/novnc/..%2fsecret.js",
                 "/novnc/%2fsecret.js", "/novnc/core/%2f..%2f..%2fsecret.js",
                 "/novnc/core/notes.txt", "/novnc/vnc.html",
                 "/novnc/core/missing.js", "/novnc/core/%00.js"):
        answer = client.get(path, follow_redirects=True)  # doubled slashes are merged first
        assert answer.status_code == 404, path
        assert "the secret" not in text(answer)


def test_administrators_see_and_stop_every_running_workload(site: dict[str, Any]) -> None:
    app = site["portal"]
    running_desktop(app, "res-1", "dres1running0000")
    running_desktop(app, "someone", "jsomeone00000000", kind="job")
    running_desktop(app, "res-1", "dres1stopped0000", state="stopped")
    page = text(signed_in(app, "admin-1").get("/admin/workloads"))
    assert "dres1running0000" in page and "jsomeone00000000" in page
    assert "dres1stopped0000" not in page, "running ones only"
    assert re.search(r"<td>res-1</td>", page) and re.search(r"<td>job</td>", page)
    assert signed_in(app, "res-1").get("/admin/workloads").status_code == 403
    assert post(signed_in(app, "admin-1"), "/admin/workloads/dno-such/stop").status_code \
        == 404
    # The agent is not running here: the stop is refused with its reason, and nothing changes.
    refused = signed_in(app, "admin-1")
    answer = post(refused, "/admin/workloads/dres1running0000/stop")
    assert answer.status_code == 302
    assert "agent_unavailable" in text(refused.get(answer.headers["Location"]))


def test_extend_answers_as_the_api_does_for_the_owner_alone(site: dict[str, Any]) -> None:
    app = site["portal"]
    desktop = running_desktop(app, "res-1")
    headers = {"X-CSRF-Token": CSRF, "Accept": "application/json"}
    other = signed_in(app, "someone").post(f"/desktops/{desktop}/extend", headers=headers)
    assert other.status_code == 404
    owner = signed_in(app, "res-1")
    assert owner.post(f"/desktops/{desktop}/extend").status_code == 400, "CSRF"
    # No compute agent runs for this portal: its refusal comes back as the API's error.
    down = owner.post(f"/desktops/{desktop}/extend", headers=headers)
    assert down.status_code == 503 and down.get_json()["error"]["code"] == "agent_unavailable"
