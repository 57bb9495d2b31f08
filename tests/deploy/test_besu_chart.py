"""The Besu chart (vre_charts/besu) and its network tool: a QBFT network of validators whose
genesis lists exactly their addresses, with free gas, node permissioning, and a JSON-RPC
Service that only the platform's tracer may call."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import rlp
from eth_account import Account

from tests.deploy.charts import (
    CHARTS,
    KUBE_VERSIONS,
    Manifest,
    named,
    of_kind,
    parse,
    run_helm,
    selects,
    template,
    values_file,
)

RELEASE, NAMESPACE = "vre-besu", "vre-chain"
TRACER_ACCOUNT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def _tool() -> ModuleType:
    path = CHARTS / "besu" / "tools" / "besu_network.py"
    spec = importlib.util.spec_from_file_location("besu_network", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


besu_network = _tool()


@pytest.fixture(scope="module")
def network() -> list[Any]:
    return [besu_network.Validator.generate() for _ in range(4)]


@pytest.fixture(scope="module")
def network_values(network: list[Any]) -> dict[str, Any]:
    return {**besu_network.values(network), "permissions": {"accounts": [TRACER_ACCOUNT]}}


@pytest.fixture(scope="module")
def rendered(helm_home: Path, network_values: dict[str, Any]) -> dict[str, list[Manifest]]:
    return {"defaults": parse(template(helm_home, "besu", RELEASE, NAMESPACE).stdout),
            "network": parse(template(helm_home, "besu", RELEASE, NAMESPACE,
                                      network_values).stdout)}


def _config(manifests: list[Manifest]) -> dict[str, str]:
    return named(manifests, "ConfigMap", RELEASE)["data"]


def test_the_tool_makes_consistent_validators(network: list[Any]) -> None:
    for validator in network:
        account = Account.from_key(validator.private_key)
        assert account.address == validator.address
        assert len(bytes.fromhex(validator.public_key[2:])) == 64
    assert len({v.address for v in network}) == len(network)


def test_the_tool_writes_a_secret_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    assert besu_network.main(["--validators", "4", "--release", RELEASE,
                              "--namespace", NAMESPACE, "--out", str(tmp_path)]) == 0
    secret = json.loads((tmp_path / "node-keys.json").read_text())
    assert secret["metadata"]["name"] == "vre-besu-node-keys"
    assert sorted(secret["data"]) == [f"validator-{i}" for i in range(4)]
    assert (tmp_path / "node-keys.json").stat().st_mode & 0o077 == 0
    kubernetes_validate.validate(secret, KUBE_VERSIONS[-1], strict=True)
    values = json.loads((tmp_path / "values.yaml").read_text())
    assert len(values["validators"]) == 4
    assert besu_network.main(["--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("with_network", [False, True])
def test_chart_lints_strictly(helm_home: Path, network_values: dict[str, Any],
                              with_network: bool) -> None:
    args = ["lint", "--strict", str(CHARTS / "besu")]
    if with_network:
        args += ["--values", str(values_file(helm_home, "lint-besu", network_values))]
    assert "0 chart(s) failed" in run_helm(args, helm_home).stdout


@pytest.mark.parametrize("case", ["defaults", "network"])
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(rendered: dict[str, list[Manifest]], case: str,
                                            version: str) -> None:
    for manifest in rendered[case]:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_one_validator_pod_per_validator(rendered: dict[str, list[Manifest]]) -> None:
    assert named(rendered["defaults"], "StatefulSet", RELEASE)["spec"]["replicas"] == 0
    statefulset = named(rendered["network"], "StatefulSet", RELEASE)
    assert statefulset["spec"]["replicas"] == 4
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert statefulset["spec"]["serviceName"] == f"{RELEASE}-headless"
    budget = named(rendered["network"], "PodDisruptionBudget", RELEASE)
    assert budget["spec"]["maxUnavailable"] == 1


def test_genesis_extra_data_lists_the_validators(rendered: dict[str, list[Manifest]],
                                                 network: list[Any]) -> None:
    genesis = json.loads(_config(rendered["network"])["genesis.json"])
    addresses = [bytes.fromhex(v.address[2:]) for v in network]
    expected = rlp.encode([b"\x00" * 32, addresses, [], 0, []])
    assert genesis["extraData"] == "0x" + expected.hex()
    vanity, listed, votes, round_, seals = rlp.decode(bytes.fromhex(genesis["extraData"][2:]))
    assert listed == addresses and vanity == b"\x00" * 32
    assert (votes, round_, seals) == ([], b"", [])
    empty = json.loads(_config(rendered["defaults"])["genesis.json"])
    assert empty["extraData"] == "0x" + rlp.encode([b"\x00" * 32, [], [], 0, []]).hex()


def test_extra_data_for_a_large_network_uses_long_rlp_headers(helm_home: Path) -> None:
    network = [besu_network.Validator.generate() for _ in range(13)]
    manifests = parse(template(helm_home, "besu", RELEASE, NAMESPACE,
                               besu_network.values(network)).stdout)
    genesis = json.loads(_config(manifests)["genesis.json"])
    addresses = [bytes.fromhex(v.address[2:]) for v in network]
    assert genesis["extraData"] == "0x" + rlp.encode([b"\x00" * 32, addresses, [], 0, []]).hex()


def test_gas_is_free_and_consensus_is_qbft(rendered: dict[str, list[Manifest]]) -> None:
    data = _config(rendered["network"])
    options = tomllib.loads(data["config.toml"])
    assert options["min-gas-price"] == 0
    genesis = json.loads(data["genesis.json"])
    assert genesis["config"]["zeroBaseFee"] is True
    assert set(genesis["config"]["qbft"]) == {"blockperiodseconds", "epochlength",
                                               "requesttimeoutseconds"}
    assert "ethash" not in genesis["config"] and "clique" not in genesis["config"]
    assert options["rpc-http-api"] == ["ETH", "NET", "WEB3", "QBFT"]


def test_only_the_validators_may_join_and_only_the_tracer_may_send(
        rendered: dict[str, list[Manifest]], network: list[Any]) -> None:
    data = _config(rendered["network"])
    options = tomllib.loads(data["config.toml"])
    permissions = tomllib.loads(data["permissions_config.toml"])
    enodes = [f"enode://{v.public_key[2:].lower()}@{RELEASE}-{i}.{RELEASE}-headless."
              f"{NAMESPACE}.svc.cluster.local:30303" for i, v in enumerate(network)]
    assert permissions["nodes-allowlist"] == enodes
    assert options["bootnodes"] == enodes
    assert options["permissions-nodes-config-file-enabled"] is True
    assert permissions["accounts-allowlist"] == [TRACER_ACCOUNT]
    assert options["permissions-accounts-config-file-enabled"] is True


def test_each_pod_runs_the_validator_of_its_ordinal(rendered: dict[str, list[Manifest]]) -> None:
    spec = named(rendered["network"], "StatefulSet", RELEASE)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert "--node-private-key-file=/keys/validator-${HOSTNAME##*-}" in container["args"][0]
    assert "--config-file=/config/config.toml" in container["args"][0]
    keys = next(v for v in spec["volumes"] if v["name"] == "keys")
    assert keys["secret"]["secretName"] == f"{RELEASE}-node-keys"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"].startswith("/readiness")
    assert container["livenessProbe"]["httpGet"]["path"] == "/liveness"


def test_json_rpc_is_for_the_tracer_only(rendered: dict[str, list[Manifest]],
                                         helm_home: Path) -> None:
    manifests = rendered["network"]
    rpc = named(manifests, "Service", f"{RELEASE}-rpc")
    assert [(p["name"], p["port"]) for p in rpc["spec"]["ports"]] == [("rpc", 8545)]
    policy = named(manifests, "NetworkPolicy", RELEASE)
    rpc_rules = [r for r in policy["spec"]["ingress"]
                 if {"port": 8545, "protocol": "TCP"} in r["ports"]]
    [rule] = rpc_rules
    platform = parse(template(helm_home, "platform", "vre", "vre", {
        "chain": {"url": "http://vre-besu-rpc.vre-chain.svc:8545",
                  "contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3"}}).stdout)
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in of_kind(platform, "Deployment")}
    [peer] = rule["from"]
    assert selects(peer["podSelector"], pods["vre-anchor-worker"])
    assert not selects(peer["podSelector"], pods["vre-portal"])
    assert not selects(peer["podSelector"], pods["vre-dataset-service"])
    # The platform's chain URL names this Service.
    worker_policy = named(platform, "NetworkPolicy", "vre-anchor-worker")
    assert {"port": 8545, "protocol": "TCP"} in worker_policy["spec"]["egress"][1]["ports"]


def test_notes_say_how_to_make_a_network(helm_home: Path) -> None:
    notes = run_helm(["install", RELEASE, str(CHARTS / "besu"), "--dry-run=client",
                      "--namespace", NAMESPACE], helm_home).stdout
    assert "No validators are configured" in notes
    assert "besu_network.py" in notes
