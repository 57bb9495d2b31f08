"""Render the charts in vre_charts/ with the real helm binary, and read what comes out: the
deployment tests check manifests, since no Kubernetes API server installs here."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "vre_charts"
INSTALL_HINT = ("helm is needed for the deployment tests: run `scripts/setup.sh --test`, "
                "which unpacks it into .tools/bin (or put a helm v3.14+ on PATH)")
# The oldest Kubernetes the charts declare (kubeVersion), and the one helm was built for.
KUBE_VERSIONS = ("1.27.0", "1.35.0")

Manifest = dict[str, Any]


def helm_binary() -> str:
    """The helm of this checkout (.tools/bin), else one on PATH; fails with the install hint."""
    local = REPO / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail(INSTALL_HINT, pytrace=False)


def run_helm(args: list[str], home: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm offline with its caches in `home`, so a test run leaves nothing behind."""
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}",
                    pytrace=False)
    return result


def values_file(home: Path, name: str, values: Mapping[str, Any]) -> Path:
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return path


def template(home: Path, chart: str, release: str, namespace: str,
             values: Mapping[str, Any] | None = None, check: bool = True,
             ) -> subprocess.CompletedProcess[str]:
    """`helm template` one chart of vre_charts/ with these values (none: its defaults)."""
    args = ["template", release, str(CHARTS / chart), "--namespace", namespace]
    if values:
        args += ["--values", str(values_file(home, f"{chart}-{release}", values))]
    return run_helm(args, home, check=check)


def parse(rendered: str) -> list[Manifest]:
    """The objects of a multi-document YAML stream, empty documents left out."""
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def of_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: Iterable[Manifest], kind: str, name: str) -> Manifest:
    for m in manifests:
        if m["kind"] == kind and m["metadata"]["name"] == name:
            return m
    raise AssertionError(f"no {kind} {name!r} rendered")


def pod_specs(manifests: Iterable[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(workload, its pod spec) for every Deployment, StatefulSet and Job."""
    for m in manifests:
        if m["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield m, m["spec"]["template"]["spec"]


def component(manifest: Manifest) -> str | None:
    return manifest["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and In/NotIn/Exists expressions) matches."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {"In": present and value in expr.get("values", []),
              "NotIn": not present or value not in expr.get("values", []),
              "Exists": present, "DoesNotExist": not present}[expr["operator"]]
        if not ok:
            return False
    return True
