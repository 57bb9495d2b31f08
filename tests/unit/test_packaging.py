"""A built wheel must carry what the services read at run time: templates, static files,
Alembic histories and the contract. Files in folders without __init__.py are package data of
the package around them, so each must match a pattern of setup.cfg's package_data."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from setuptools.config.setupcfg import read_configuration

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("vre", "launcher", "portal", "dataset_service", "tracer", "batch_tools")


def owning_package(path: Path) -> Path:
    folder = path.parent
    while not (folder / "__init__.py").is_file():
        folder = folder.parent
    return folder


def test_every_data_file_of_the_packages_is_in_the_wheel() -> None:
    data = read_configuration(REPO / "setup.cfg")["options"]["package_data"]
    patterns = data.get("*") or data[""]  # "*" means every package; setuptools says ""
    missing = []
    for top in PACKAGES:
        for path in (REPO / top).rglob("*"):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(owning_package(path)).as_posix()
            if path.suffix == ".py" and "/" not in relative:
                continue  # a module of a package
            if not any(fnmatch(relative, p) and relative.count("/") == p.count("/")
                       for p in patterns):
                missing.append(path.relative_to(REPO).as_posix())
    assert not missing, f"not matched by package_data: {missing}"
