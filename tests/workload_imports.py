"""What a workload imports: the modules a fresh interpreter holds after importing the clients
and `vre-job`. The light-import tests and the workload images' tests both read it, so what
the images copy is what the clients load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("vre", "launcher", "portal", "dataset_service", "tracer", "batch_tools")
# What ships into desktops and jobs.
ENTRY_POINTS = ("portal.client", "dataset_service.client", "tracer.client", "batch_tools.cli")
# Server-side libraries: none of them may load with a client.
SERVER_LIBRARIES = ("flask", "flask_login", "werkzeug", "jinja2", "sqlalchemy", "alembic",
                    "psycopg", "pydicom", "web3", "eth_", "granian", "prometheus_client",
                    "rdflib", "elasticsearch", "keycloak")


def loaded_modules(*names: str, code: str = "") -> set[str]:
    """sys.modules of a fresh interpreter (no site customisation of ours) after importing
    `names` and running `code`."""
    script = ("import importlib, json, sys\n"
              f"for name in {names!r}:\n    importlib.import_module(name)\n"
              f"{code}\n"
              "print(json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def first_party(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in FIRST_PARTY}


def server_libraries(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0].startswith(SERVER_LIBRARIES)}


def module_file(name: str) -> Path:
    """The source file of a first-party module, relative to the repository."""
    path = REPO.joinpath(*name.split("."))
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(REPO)
