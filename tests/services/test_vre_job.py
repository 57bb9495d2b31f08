"""`vre-job` against a real portal over HTTP: the flavor and application catalogues as a
researcher inside a desktop sees them, and clear failures without a valid token."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from batch_tools.cli import main
from portal.catalogues import seed_defaults
from tests.helpers import serving


@pytest.fixture
def portal_url(make_app: Callable[[str], Flask]) -> Iterator[str]:
    app = make_app("portal")
    with app.extensions["vre.db"].session() as session:
        seed_defaults(session)
    with serving(app) as url:
        yield url


def test_flavors_lists_the_catalogue_with_what_fits(portal_url, token, capsys) -> None:
    assert main(["--portal", portal_url, "--token", token("res-1", "researcher"),
                 "flavors"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["FLAVOR", "CPUS", "MEMORY", "GPUS", "MAX", "RUN", "USABLE"]
    names = [line.split()[0] for line in out[1:]]
    assert {"no-gpu", "small-gpu", "medium-gpu", "large-gpu", "desktop"} <= set(names)


def test_applications_as_json(portal_url, token, capsys) -> None:
    assert main(["--portal", portal_url, "--token", token("res-1", "researcher"),
                 "applications", "--kind", "batch", "--json"]) == 0
    apps = json.loads(capsys.readouterr().out)
    assert apps and {a["kind"] for a in apps} == {"batch"}


def test_a_missing_or_forged_token_is_a_clear_failure(portal_url, rogue_issuer,
                                                      capsys) -> None:
    assert main(["--portal", portal_url, "flavors"]) == 1
    assert capsys.readouterr().err == "vre-job: a bearer token is required (token_missing)\n"
    forged = rogue_issuer.issue("res-1", ["researcher"])[0]
    assert main(["--portal", portal_url, "--token", forged, "flavors"]) == 1


def test_the_console_script_is_installed(portal_url, token) -> None:
    script = Path(sys.executable).with_name("vre-job")
    env = {"VRE_TOKEN": token("res-1", "researcher"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(script), "--portal", portal_url, "applications"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "APPLICATION" in done.stdout
