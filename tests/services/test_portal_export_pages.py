"""The export pages without a browser, on the airlock of tests/sandbox/test_exports.py (a job
in a real sandbox wrote the results): the requester sees their request with previews of the
pinned copies (tables and text escaped, markup never rendered, images served with a policy of
their own, a refused file never shown), the project's stewards find it waiting for them and
vote through the form, the requester's own vote is refused with a message, a steward of
another project sees nothing, approved files are downloaded by the requester alone with the
pinned hash, and notifications are listed, counted and e-mailed once committed."""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from portal.models import ExportVote, Notification, User
from portal.notifications import notify
from tests.helpers import free_port
from tests.portal_helpers import (
    add_people,
    post,
    signed_in,
    site,  # noqa: F401 - the fixture
)
from tests.sandbox.test_exports import airlock  # noqa: F401 - the fixture
from tests.sandbox.test_jobs import jobsite  # noqa: F401 - the fixture

needs_bwrap = pytest.mark.skipif(not shutil.which("bwrap"), reason="needs bubblewrap")
HOSTILE_HTML = "<html><body><script>alert('page')</script><svg onload=x()></svg></body></html>"
CSV = "group,n\nA <b>bold</b>,40\nB,25\n"


def png() -> bytes:
    """A valid 1x1 PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def text(response: Any) -> str:
    return response.get_data(as_text=True)


@pytest.fixture
def asked(airlock: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    """The job's results with a figure and a page beside them, asked for by res-1."""
    add_people(airlock["portal"], {"steward-2": ["steward", "researcher"],
                                   "steward-9": ["steward", "researcher"]})
    job_id = airlock["job"]["id"]
    folder = airlock["config"].home / "workspaces" / "res-1" / "jobs" / job_id
    (folder / "figure.png").write_bytes(png())
    (folder / "page.html").write_text(HOSTILE_HTML)
    (folder / "table.csv").write_text(CSV)
    names = ["model.bin", "notes.txt", "figure.png", "page.html", "table.csv"]
    answer = airlock["portal"].test_client().post("/api/v1/exports", headers=airlock["alice"],
                                                  json={"title": "Figures <i>for</i> paper",
                                                        "purpose": "Tables & figures",
                                                        "files": [f"jobs/{job_id}/{n}"
                                                                  for n in names]})
    assert answer.status_code == 201, answer.get_json()
    export = answer.get_json()
    files = {f["path"].rsplit("/", 1)[-1]: f for f in export["files"]}
    assert files["notes.txt"]["verdict"] == "refuse"
    assert all(files[n]["verdict"] != "refuse" for n in names if n != "notes.txt"), files
    return {**airlock, "export": export, "files": files, "folder": folder}


@needs_bwrap
def test_the_requester_sees_the_request_with_previews_and_outsiders_nothing(
        asked: dict[str, Any]) -> None:
    app, export, files = asked["portal"], asked["export"], asked["files"]
    url = f"/exports/{export['id']}"
    owner = signed_in(app, "res-1")
    listed = text(owner.get("/exports"))
    assert f'href="{url}"' in listed and "Figures &lt;i&gt;for&lt;/i&gt; paper" in listed
    assert 'href="/exports"' in listed, "the navigation names the exports page"
    answer = owner.get(url)
    page = text(answer)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    assert "<i>for</i>" not in page and "Tables &amp; figures" in page
    assert asked["dataset"]["content_hash"] in page
    for name, item in files.items():
        assert item["sha256"] in page, name
    # A table as rows, escaped; markup as text; a binary file by its size; nothing refused.
    assert "<td>A &lt;b&gt;bold&lt;/b&gt;</td><td>40</td>" in page
    assert "&lt;script&gt;alert(&#39;page&#39;)&lt;/script&gt;" in page
    assert "<script>alert" not in page and "<svg onload" not in page
    assert f"binary, {files['model.bin']['size']} bytes" in page
    assert "Refused by the automatic checks" in page
    for finding in files["notes.txt"]["findings"]:
        assert finding["code"] in page
    refused = f"{url}/files/{files['notes.txt']['id']}/preview"
    assert refused not in page
    image = f"{url}/files/{files['figure.png']['id']}/preview"
    assert f'src="{image}"' in page
    assert "vote-form" not in page, "the requester is offered no vote"
    assert "Withdraw request" in page and "Download" not in page

    served = owner.get(image)
    assert served.status_code == 200 and served.mimetype == "image/png"
    assert served.get_data() == png()
    assert served.headers["Content-Security-Policy"] == "default-src 'none'"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Content-Disposition"] == "inline"
    assert owner.get(refused).status_code in (403, 404), "a refused file is never shown"
    assert owner.get(f"{url}/files/{files['page.html']['id']}/preview").status_code == 404

    steward = signed_in(app, "steward-1")
    assert steward.get(image).status_code == 200, "the reviewers see the previews"
    outsider = signed_in(app, "steward-9")
    assert outsider.get(url).status_code == 404
    assert outsider.get(image).status_code == 404
    assert export["id"] not in text(outsider.get("/exports"))
    anonymous = signed_in(app, None)
    assert anonymous.get(image).status_code == 302

    # Withdrawn by its requester alone, once.
    assert post(steward, f"{url}/withdraw").status_code == 404
    withdrawn = post(owner, f"{url}/withdraw")
    assert withdrawn.status_code == 302 and withdrawn.headers["Location"] == url
    after = text(owner.get(url))
    assert "The request was withdrawn." in after and "Withdraw request" not in after
    again = post(owner, f"{url}/withdraw")
    assert "wrong_state" in text(owner.get(again.headers["Location"]))
    assert "vote-form" not in text(steward.get(url)), "nothing left to review"


@needs_bwrap
def test_stewards_vote_through_the_form_and_the_requester_downloads(
        asked: dict[str, Any]) -> None:
    app, export, files = asked["portal"], asked["export"], asked["files"]
    url = f"/exports/{export['id']}"
    owner = signed_in(app, "res-1")
    first, second = signed_in(app, "steward-1"), signed_in(app, "steward-2")

    waiting = text(first.get("/exports"))
    assert "Waiting for my review" in waiting and f'href="{url}"' in waiting
    page = text(first.get(url))
    forms = re.findall(r'action="/exports/\w+/files/(\w+)/vote"', page)
    assert sorted(forms) == sorted(f["id"] for n, f in files.items() if n != "notes.txt"), \
        "a form for every file but the refused one"

    # The requester cannot vote on their own request: a message, and no vote.
    model = files["model.bin"]["id"]
    refused = post(owner, f"{url}/files/{model}/vote", vote="approve")
    assert refused.status_code == 302
    assert "own_request" in text(owner.get(refused.headers["Location"]))
    assert first.post(f"{url}/files/{model}/vote", data={"vote": "approve"}).status_code == \
        400, "CSRF"
    with app.extensions["vre.db"].session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ExportVote)) == 0
    never = post(first, f"{url}/files/{files['notes.txt']['id']}/vote", vote="approve")
    assert "file_refused" in text(first.get(never.headers["Location"]))

    assert "Download" not in text(owner.get(url)), "nothing leaves before its review"
    assert post(owner, f"{url}/files/{model}/download").status_code == 302

    for reviewer in (first, second):
        for name, item in files.items():
            if name != "notes.txt":
                voted = post(reviewer, f"{url}/files/{item['id']}/vote", vote="approve",
                             comment="<b>fine</b>")
                assert voted.status_code == 302
        shown = text(reviewer.get(url))
        assert "Your vote (approve) was recorded." in shown
    again = post(first, f"{url}/files/{model}/vote", vote="approve")
    assert "not_in_review" in text(first.get(again.headers["Location"])), "it is decided"
    done = text(owner.get(url))
    assert "approved" in done and "&lt;b&gt;fine&lt;/b&gt;" in done
    assert "/api/v1/exports/download/" not in done, "no link appears in a page"

    assert post(first, f"{url}/files/{model}/download").status_code == 404, \
        "only the requester downloads: to anyone else it is no request of theirs"
    got = post(owner, f"{url}/files/{model}/download")
    assert got.status_code == 200, text(got)
    assert got.headers["Content-Disposition"].startswith("attachment")
    assert got.headers["Cache-Control"] == "no-store"
    assert hashlib.sha256(got.get_data()).hexdigest() == files["model.bin"]["sha256"] \
        == got.headers["X-Content-SHA256"]
    (asked["folder"] / "model.bin").write_bytes(b"changed since")
    again = post(owner, f"{url}/files/{model}/download")
    assert hashlib.sha256(again.get_data()).hexdigest() == files["model.bin"]["sha256"], \
        "the pinned copy, never the workload's folder"
    refused_file = post(owner, f"{url}/files/{files['notes.txt']['id']}/download")
    assert refused_file.status_code == 302
    assert "not_approved" in text(owner.get(refused_file.headers["Location"]))

    # Notifications: counted in the navigation, listed newest first, then read.
    home = text(owner.get("/exports"))
    assert re.search(r'href="/notifications">Notifications <span class="badge unread-count">'
                     r"(\d+)", home)
    listed = text(owner.get("/notifications"))
    assert listed.index("is approved") < listed.index("is in review")
    assert f'href="{url}"' in listed
    assert "unread-count" not in text(owner.get("/exports"))
    assert "waits for your review" in text(first.get("/notifications"))


class SmtpServer:
    """A minimal SMTP server on a socket: it takes every message and keeps its text."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                conn.sendall(b"220 test ESMTP\r\n")
                for line in lines:
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        conn.sendall(b"354 go on\r\n")
                        body = []
                        for data in lines:
                            if data == b".\r\n":
                                break
                            body.append(data.decode())
                        self.messages.append("".join(body))
                        conn.sendall(b"250 kept\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        break
                    else:
                        conn.sendall(b"250 ok\r\n")

    def wait(self, count: int, seconds: float = 10) -> list[str]:
        deadline = time.monotonic() + seconds
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    yield server
    server.listener.close()


def test_notifications_are_emailed_once_committed_and_never_when_rolled_back(
        site: dict[str, Any], smtp: SmtpServer) -> None:  # noqa: F811
    app = site["portal"]
    app.extensions["vre.config"] = app.extensions["vre.config"].model_copy(update={
        "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "smtp_from": "vre@example.org"})
    with app.extensions["vre.db"].session() as session:
        session.get(User, "res-1").email = "res-1@example.org"
    with app.app_context():
        with pytest.raises(RuntimeError), app.extensions["vre.db"].session() as session:
            notify(session, "res-1", "never sent", "/exports/e1")
            raise RuntimeError("the change fails")
        with app.extensions["vre.db"].session() as session:
            notify(session, "res-1", "Your export request is approved.", "/exports/e2")
            notify(session, "someone", "nobody to mail: no address", "/exports/e3")
            assert smtp.messages == [], "nothing leaves before the commit"
    sent = smtp.wait(1)
    time.sleep(0.3)
    assert len(sent) == 1, sent
    assert "To: res-1@example.org" in sent[0] and "From: vre@example.org" in sent[0]
    assert "Your export request is approved." in sent[0] and "/exports/e2" in sent[0]
    with app.extensions["vre.db"].session() as session:
        texts = session.scalars(sa.select(Notification.text)).all()
    assert sorted(texts) == ["Your export request is approved.", "nobody to mail: no address"]


def test_a_mail_server_that_does_not_answer_loses_no_notification(
        site: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    app = site["portal"]
    app.extensions["vre.config"] = app.extensions["vre.config"].model_copy(update={
        "smtp_host": "127.0.0.1", "smtp_port": free_port()})
    with app.extensions["vre.db"].session() as session:
        session.get(User, "res-1").email = "res-1@example.org"
    with app.app_context(), app.extensions["vre.db"].session() as session:
        notify(session, "res-1", "still here", "/exports/e1")
    deadline = time.monotonic() + 10
    while "not sent" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "notification e-mails not sent" in caplog.text
    page = text(signed_in(app, "res-1").get("/notifications"))
    assert "still here" in page
