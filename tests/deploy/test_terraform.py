"""The Terraform module (terraform/), read statically since Terraform and its providers do
not install here: it parses, every name it uses is declared, the charts it installs exist,
and the values it hands them are values those charts have."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from tests.deploy.charts import CHARTS, REPO

MODULE = REPO / "terraform"
EXAMPLE = MODULE / "examples" / "existing-cluster"


def _parse(path: Path) -> dict[str, list[Any]]:
    return hcl2.loads(path.read_text(), serialization_options=hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True))


def _load(folder: Path) -> dict[str, list[Any]]:
    """Every top-level block of the .tf files in one folder, merged by block type."""
    blocks: dict[str, list[Any]] = {}
    for path in sorted(folder.glob("*.tf")):
        for kind, items in _parse(path).items():
            blocks.setdefault(kind, []).extend(items)
    return blocks


def _text(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("*.tf")))


@pytest.fixture(scope="module")
def module() -> dict[str, list[Any]]:
    return _load(MODULE)


def _variables(blocks: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    return {name: body for item in blocks.get("variable", []) for name, body in item.items()}


def _locals(blocks: dict[str, list[Any]]) -> dict[str, Any]:
    return {name: value for item in blocks.get("locals", []) for name, value in item.items()}


def _resources(blocks: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for item in blocks.get("resource", []):
        for kind, named in item.items():
            for name, body in named.items():
                found[f"{kind}.{name}"] = body
    return found


def test_every_file_parses() -> None:
    files = sorted(MODULE.rglob("*.tf"))
    assert {p.name for p in files} >= {"versions.tf", "variables.tf", "main.tf", "outputs.tf"}
    for path in files:
        _parse(path)


def test_providers_are_kubernetes_and_helm_pinned(module: dict[str, list[Any]]) -> None:
    [terraform] = module["terraform"]
    [required] = terraform["required_providers"]
    assert set(required) == {"kubernetes", "helm"}
    for name, spec in required.items():
        assert spec["source"] == f"hashicorp/{name}"
        assert re.match(r"~> \d+\.\d+", spec["version"])
    # A module leaves the providers' configuration to its caller.
    assert "provider" not in module


def test_every_variable_used_is_declared_and_every_declared_one_used(
        module: dict[str, list[Any]]) -> None:
    text = _text(MODULE)
    used = set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)", text))
    declared = set(_variables(module))
    assert used <= declared, f"undeclared: {sorted(used - declared)}"
    assert declared <= used, f"never used: {sorted(declared - used)}"
    for name, body in _variables(module).items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"


def test_every_local_and_resource_used_is_defined(module: dict[str, list[Any]]) -> None:
    text = _text(MODULE)
    assert set(re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_]*)", text)) <= set(_locals(module))
    resources = set(_resources(module))
    for kind, name in re.findall(r"\b((?:kubernetes|helm)_[a-z0-9_]+)\.([a-z0-9_]+)\b", text):
        assert f"{kind}.{name}" in resources, f"{kind}.{name} is not defined"


def test_secrets_are_sensitive_and_stay_out_of_helm_values(
        module: dict[str, list[Any]]) -> None:
    variables = _variables(module)
    for name in ("database_url", "elasticsearch_url", "keycloak_client_secret"):
        assert variables[name].get("sensitive") is True, name
    values = str(_locals(module)["platform_values"])
    for name in ("database_url", "elasticsearch_url", "keycloak_client_secret"):
        assert f"var.{name}}}" not in values, f"{name} is passed as a Helm value"


def test_the_charts_it_installs_exist(module: dict[str, list[Any]]) -> None:
    charts = _locals(module)["charts"]
    assert charts == "${path.module}/../vre_charts"
    releases = {k: v for k, v in _resources(module).items() if k.startswith("helm_release.")}
    assert set(releases) == {"helm_release.platform", "helm_release.besu"}
    for body in releases.values():
        chart = re.fullmatch(r"\$\{local\.charts\}/(\w+)", body["chart"])
        assert chart, body["chart"]
        assert (CHARTS / chart.group(1) / "Chart.yaml").is_file()
        assert body["create_namespace"] is False


def test_namespaces_enforce_the_restricted_pod_standard(module: dict[str, list[Any]]) -> None:
    namespace = _resources(module)["kubernetes_namespace_v1.this"]
    labels = namespace["metadata"][0]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    text = str(_locals(module)["namespaces"])
    for name in ("platform_namespace", "workloads_namespace", "chain_namespace"):
        assert f"var.{name}" in text


def _unknown_keys(given: Any, chart: Any, where: str = "") -> list[str]:
    """Keys of `given` that the chart's values.yaml does not have (maps only)."""
    if not isinstance(given, dict) or not isinstance(chart, dict):
        return []
    unknown = []
    for key, value in given.items():
        if key not in chart:
            unknown.append(f"{where}{key}")
        elif chart[key]:
            unknown += _unknown_keys(value, chart[key], f"{where}{key}.")
    return unknown


@pytest.mark.parametrize("chart,local", [("platform", "platform_values"),
                                         ("besu", "besu_values")])
def test_values_given_to_a_chart_are_values_it_has(module: dict[str, list[Any]], chart: str,
                                                   local: str) -> None:
    defaults = yaml.safe_load((CHARTS / chart / "values.yaml").read_text())
    assert _unknown_keys(_locals(module)[local], defaults) == []


def test_the_chain_url_names_the_besu_rpc_service(module: dict[str, list[Any]]) -> None:
    chain_url = _locals(module)["chain_url"]
    assert "-rpc.${var.chain_namespace}.svc:8545" in chain_url
    besu = yaml.safe_load((CHARTS / "besu" / "values.yaml").read_text())
    assert besu["rpc"]["port"] == 8545
    services = (CHARTS / "besu" / "templates" / "services.yaml").read_text()
    assert 'printf "%s-rpc" (include "besu.fullname" .)' in services


def test_the_example_gives_every_required_input_and_only_known_ones(
        module: dict[str, list[Any]]) -> None:
    example = _load(EXAMPLE)
    [call] = [body for item in example["module"] for body in item.values()]
    assert (EXAMPLE / call["source"]).resolve() == MODULE.resolve()
    inputs = set(call) - {"source"}
    variables = _variables(module)
    assert inputs <= set(variables)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= inputs
    providers = {name for item in example["provider"] for name in item}
    assert providers == {"kubernetes", "helm"}
    outputs = {name for item in module["output"] for name in item}
    assert set(re.findall(r"module\.vre\.(\w+)", _text(EXAMPLE))) <= outputs
