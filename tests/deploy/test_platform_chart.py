"""The platform chart (vre_charts/platform): it lints, renders manifests that Kubernetes'
own schemas accept, and keeps the platform's promises in what it renders: probes and
resources on every workload, non-root read-only pods, secrets only from Secrets, default
deny networking, and a portal allowed to manage desktops and jobs in the workloads
namespace and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.charts import (
    KUBE_VERSIONS,
    Manifest,
    component,
    named,
    of_kind,
    parse,
    pod_specs,
    run_helm,
    selects,
    template,
    values_file,
)
from vre.config import Config, load_config

RELEASE, NAMESPACE = "vre", "vre"
DB_PASSWORD = "db-pass-7Hq2xZ"
ES_PASSWORD = "es-pass-9Kw4yV"
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SECRET_SETTINGS = {"VRE_SECRET_KEY", "VRE_SERVICE_SECRET", "VRE_DATABASE_URL",
                   "VRE_CHAIN_PRIVATE_KEY", "VRE_ADMIN_PASSWORD", "VRE_ELASTICSEARCH_URL",
                   "VRE_OIDC_CLIENT_SECRET"}
HTTP_SERVICES = {"portal": ("portal", 8600), "dataset-service": ("dataset_service", 8601),
                 "tracer": ("tracer", 8602)}

# A production-like install: Keycloak, Elasticsearch, the chain, NFS, an import folder.
PRODUCTION: dict[str, Any] = {
    "image": {"tag": "0.1.0"},
    "database": {"url": f"postgresql://vre:{DB_PASSWORD}@db.internal:5432/vre"},
    "elasticsearch": {"enabled": True, "url": f"https://vre:{ES_PASSWORD}@es.internal:9200"},
    "identity": {"provider": "keycloak",
                 "keycloak": {"url": "https://login.example.org", "realm": "research",
                              "clientSecret": {"existingSecret": "keycloak-client"}}},
    "chain": {"url": "http://vre-besu-rpc.vre-chain.svc:8545", "contract": CONTRACT},
    "repository": {"nfs": {"server": "nfs.internal", "path": "/exports/vre"}},
    "importVolume": {"existingClaim": "dicom-inbox"},
    "ingress": {"className": "nginx", "host": "vre.example.org"},
    "config": {"extra": {"VRE_INGEST_WORKERS": "4"}},
}
# Everything secret managed outside the chart.
EXISTING_SECRETS: dict[str, Any] = {
    "secrets": {"existingSecret": "vre-keys"},
    "database": {"existingSecret": "vre-db", "existingSecretKey": "dsn"},
    "chain": {"url": "http://chain.internal:8545", "deployContract": True},
    "workloads": {"namespace": "research-workloads"},
}
CASES = {"defaults": None, "production": PRODUCTION, "existing-secrets": EXISTING_SECRETS}


@pytest.fixture(scope="module")
def rendered(helm_home: Path) -> dict[str, list[Manifest]]:
    return {case: parse(template(helm_home, "platform", RELEASE, NAMESPACE, values).stdout)
            for case, values in CASES.items()}


@pytest.fixture(scope="module")
def production(rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    return rendered["production"]


def _container(manifests: list[Manifest], name: str) -> dict[str, Any]:
    return named(manifests, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _config_map(manifests: list[Manifest]) -> dict[str, str]:
    return named(manifests, "ConfigMap", f"{RELEASE}-config")["data"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_chart_lints_strictly(helm_home: Path, case: str) -> None:
    args = ["lint", "--strict", str(Path(__file__).parents[2] / "vre_charts" / "platform")]
    if CASES[case]:
        args += ["--values", str(values_file(helm_home, f"lint-{case}", CASES[case]))]
    assert "0 chart(s) failed" in run_helm(args, helm_home).stdout


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(rendered: dict[str, list[Manifest]], case: str,
                                            version: str) -> None:
    for manifest in rendered[case]:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_all_parts_are_rendered(production: list[Manifest]) -> None:
    deployments = {component(d) for d in of_kind(production, "Deployment")}
    assert deployments == {"portal", "dataset-service", "tracer", "anchor-worker"}
    assert {component(s) for s in of_kind(production, "Service")} == set(HTTP_SERVICES)
    migrate = named(production, "Job", f"{RELEASE}-migrate")
    assert migrate["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "vre", "migrate", "--seed"], "accounts are Keycloak's: no local administrator"
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


def test_services_are_served_by_vre_serve(production: list[Manifest]) -> None:
    for name, (service, port) in HTTP_SERVICES.items():
        container = _container(production, f"{RELEASE}-{name}")
        assert container["args"] == ["serve", service]
        assert container["ports"][0]["containerPort"] == port
    worker = _container(production, f"{RELEASE}-anchor-worker")
    assert worker["command"] == ["python", "-m", "tracer", "worker"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_deployment_has_probes_and_resources(rendered: dict[str, list[Manifest]],
                                                   case: str) -> None:
    for deployment in of_kind(rendered[case], "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            assert container.get("readinessProbe") and container.get("livenessProbe"), where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where
            if component(deployment) in HTTP_SERVICES:
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pod_is_non_root_on_a_read_only_root(rendered: dict[str, list[Manifest]],
                                                   case: str) -> None:
    for workload, spec in pod_specs(rendered[case]):
        assert spec["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] > 0
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"]


def test_only_the_portal_and_the_key_maker_get_an_api_token(
        rendered: dict[str, list[Manifest]]) -> None:
    for manifests in rendered.values():
        for workload, spec in pod_specs(manifests):
            wants_token = component(workload) in ("portal", "keygen")
            assert spec["automountServiceAccountToken"] is wants_token, \
                workload["metadata"]["name"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_maps_hold_no_secret(rendered: dict[str, list[Manifest]], case: str) -> None:
    for config_map in of_kind(rendered[case], "ConfigMap"):
        data = config_map.get("data", {})
        assert not SECRET_SETTINGS & set(data), config_map["metadata"]["name"]
        for value in data.values():
            assert DB_PASSWORD not in value and ES_PASSWORD not in value


@pytest.mark.parametrize("case", sorted(CASES))
def test_secret_settings_come_only_from_secrets(rendered: dict[str, list[Manifest]],
                                                case: str) -> None:
    for _workload, spec in pod_specs(rendered[case]):
        for container in spec["containers"]:
            for env in container.get("env", []):
                if env["name"] in SECRET_SETTINGS:
                    assert "value" not in env, env["name"]
                    assert env["valueFrom"]["secretKeyRef"]["name"]


def test_each_pod_mounts_only_its_own_keys(production: list[Manifest]) -> None:
    def secret_items(name: str) -> set[str]:
        spec = named(production, "Deployment", f"{RELEASE}-{name}")["spec"]["template"]["spec"]
        keys = {item["key"] for v in spec["volumes"] if "secret" in v
                for item in v["secret"]["items"]}
        refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in spec["containers"][0]["env"]
                if "valueFrom" in e and e["valueFrom"]["secretKeyRef"]["name"].endswith("-secrets")}
        return keys | refs

    assert secret_items("portal") == {"signing-key.pem", "secret-key"}
    assert secret_items("dataset-service") == {"dataset-service-secret"}
    assert secret_items("tracer") == {"tracer-key.pem", "tracer-service-secret"}
    assert secret_items("anchor-worker") == {"tracer-key.pem", "chain-private-key"}


def _service_env(manifests: list[Manifest], name: str) -> dict[str, str]:
    """What a service process would see: its ConfigMap, its own values, and stand-ins for
    the values the cluster fills in from Secrets."""
    stand_ins = {"VRE_SECRET_KEY": "k" * 48, "VRE_SERVICE_SECRET": "s" * 64,
                 "VRE_DATABASE_URL": "postgresql://vre:pw@db:5432/vre",
                 "VRE_CHAIN_PRIVATE_KEY": "0x" + "1" * 64,
                 "VRE_ELASTICSEARCH_URL": "https://es:9200",
                 "VRE_OIDC_CLIENT_SECRET": "c" * 32}
    env = dict(_config_map(manifests))
    for item in _container(manifests, f"{RELEASE}-{name}").get("env", []):
        if item["name"].startswith("VRE_"):
            env[item["name"]] = item.get("value", stand_ins.get(item["name"], "?"))
    return env


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", [*HTTP_SERVICES, "anchor-worker"])
def test_each_service_configuration_loads(rendered: dict[str, list[Manifest]], case: str,
                                          name: str) -> None:
    """Every VRE_* variable a pod gets is a known setting with a valid value: the
    configuration loader would stop the service otherwise."""
    manifests = rendered[case]
    if name == "anchor-worker" and not any(
            component(d) == name for d in of_kind(manifests, "Deployment")):
        return
    env = _service_env(manifests, name)
    assert all(key.removeprefix("VRE_").lower() in Config.model_fields for key in env)
    config = load_config(env=env)
    assert str(config.home) == "/var/lib/vre"
    assert config.host == "0.0.0.0"


def test_every_service_trusts_the_same_issuer(production: list[Manifest],
                                              rendered: dict[str, list[Manifest]]) -> None:
    realm = "https://login.example.org/realms/research"
    for name in HTTP_SERVICES:
        config = load_config(env=_service_env(production, name))
        assert config.identity == "oidc"
        assert (config.issuer, config.jwks) == (realm, realm + "/protocol/openid-connect/certs")
    local = {load_config(env=_service_env(rendered["defaults"], n)).issuer
             for n in HTTP_SERVICES}
    assert local == {"https://vre.example.org"}
    tracer = load_config(env=_service_env(rendered["defaults"], "tracer"))
    assert tracer.identity == "local"
    assert tracer.jwks == "http://vre-portal.vre.svc:8600/.well-known/jwks.json"
    assert tracer.url_of("portal") == "http://vre-portal.vre.svc:8600"
    assert tracer.pid_base == "https://vre.example.org/pid"


def test_with_keycloak_every_service_may_fetch_the_realm_keys(
        production: list[Manifest], rendered: dict[str, list[Manifest]]) -> None:
    identity = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                "ports": [{"port": 443, "protocol": "TCP"}]}
    for name in HTTP_SERVICES:
        policy = named(production, "NetworkPolicy", f"{RELEASE}-{name}")
        assert identity in policy["spec"]["egress"], name
        local = named(rendered["defaults"], "NetworkPolicy", f"{RELEASE}-{name}")
        assert identity not in local["spec"]["egress"], name


def test_only_the_portal_holds_the_oidc_client_secret(production: list[Manifest]) -> None:
    portal = _env(_container(production, f"{RELEASE}-portal"))
    assert portal["VRE_OIDC_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "keycloak-client", "key": "client-secret"}
    config = load_config(env=_service_env(production, "portal"))
    assert (config.oidc_client_id, config.oidc_realm) == ("vre-portal", "research")
    for name in ("dataset-service", "tracer", "anchor-worker"):
        assert "VRE_OIDC_CLIENT_SECRET" not in _env(_container(production, f"{RELEASE}-{name}"))


def test_secret_settings_in_values_are_refused(helm_home: Path) -> None:
    result = template(helm_home, "platform", RELEASE, NAMESPACE,
                      {"config": {"extra": {"VRE_SECRET_KEY": "x" * 40}}}, check=False)
    assert result.returncode != 0
    assert "config.extra.VRE_SECRET_KEY is secret" in result.stderr


def test_migrations_run_before_the_services_and_after_the_secrets(
        production: list[Manifest]) -> None:
    def weight(kind: str, name: str) -> int:
        annotations = named(production, kind, name)["metadata"]["annotations"]
        assert "pre-install" in annotations["helm.sh/hook"]
        return int(annotations.get("helm.sh/hook-weight", "0"))

    assert weight("Secret", f"{RELEASE}-connections") < weight("Job", f"{RELEASE}-keygen") \
        < weight("Job", f"{RELEASE}-migrate")
    keygen = named(production, "Job", f"{RELEASE}-keygen")["spec"]["template"]["spec"]
    assert keygen["containers"][0]["command"] == ["vre-platform-secrets"]
    assert keygen["containers"][0]["args"] == ["ensure", "--name", f"{RELEASE}-secrets"]


def test_without_a_database_nothing_hangs_and_the_notes_say_why(helm_home: Path) -> None:
    defaults = parse(template(helm_home, "platform", RELEASE, NAMESPACE).stdout)
    assert not [j for j in of_kind(defaults, "Job") if component(j) == "migrate"]
    notes = run_helm(["install", RELEASE, str(Path(__file__).parents[2] / "vre_charts/platform"),
                      "--dry-run=client", "--namespace", NAMESPACE], helm_home).stdout
    assert "ACTION NEEDED: no database is configured" in notes


def test_an_existing_secret_replaces_the_key_maker(
        rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["existing-secrets"]
    assert not [m for m in manifests if component(m) == "keygen"]
    env = _env(_container(manifests, f"{RELEASE}-portal"))
    assert env["VRE_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "vre-keys"
    assert env["VRE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "vre-db",
                                                                   "key": "dsn"}
    assert not of_kind(manifests, "Secret")


def test_the_key_maker_may_touch_only_its_secret(production: list[Manifest]) -> None:
    role = named(production, "Role", f"{RELEASE}-keygen")
    named_rules = [r for r in role["rules"] if "resourceNames" in r]
    assert named_rules == [{"apiGroups": [""], "resources": ["secrets"],
                            "resourceNames": [f"{RELEASE}-secrets"], "verbs": ["get", "patch"]}]
    assert [r["verbs"] for r in role["rules"] if "resourceNames" not in r] == [["create"]]


def test_the_portal_manages_desktops_and_jobs_in_the_workloads_namespace_only(
        rendered: dict[str, list[Manifest]]) -> None:
    for case, workloads in (("production", "vre-workloads"),
                            ("existing-secrets", "research-workloads")):
        manifests = rendered[case]
        assert not of_kind(manifests, "ClusterRole") and not of_kind(manifests,
                                                                      "ClusterRoleBinding")
        role = named(manifests, "Role", f"{RELEASE}-workloads")
        assert role["metadata"]["namespace"] == workloads
        grants = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
                  for group in rule["apiGroups"] for resource in rule["resources"]}
        assert {"create", "delete", "get", "list", "watch"} <= grants[("batch", "jobs")]
        # A desktop is a Helm release: its objects, and its release records (Secrets).
        for needed in [("apps", "deployments"), ("", "services"), ("", "secrets"),
                       ("", "persistentvolumeclaims"), ("networking.k8s.io", "networkpolicies")]:
            assert {"create", "delete", "get", "list"} <= grants[needed]
        assert ("", "pods/log") in grants
        assert all("*" not in verbs for verbs in grants.values())
        assert all(group not in ("rbac.authorization.k8s.io", "*") for group, _ in grants)
        binding = named(manifests, "RoleBinding", f"{RELEASE}-workloads")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-portal",
                                        "namespace": NAMESPACE}]
        portal = named(manifests, "Deployment", f"{RELEASE}-portal")["spec"]["template"]["spec"]
        assert portal["serviceAccountName"] == f"{RELEASE}-portal"


def _pods(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
            for w, _spec in pod_specs(manifests)}


def _policies_for(manifests: list[Manifest], labels: dict[str, str],
                  namespace: str = NAMESPACE) -> list[Manifest]:
    return [p for p in of_kind(manifests, "NetworkPolicy")
            if p["metadata"].get("namespace", NAMESPACE) == namespace
            and selects(p["spec"]["podSelector"], labels)]


def test_every_pod_is_under_a_default_deny(production: list[Manifest]) -> None:
    for name, labels in _pods(production).items():
        policies = _policies_for(production, labels)
        deny_all = [p for p in policies if not p["spec"].get("ingress")
                    and not p["spec"].get("egress")
                    and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}]
        assert deny_all, name
        # Each component has its own policy that names it.
        assert any(component(p) == labels["app.kubernetes.io/component"] for p in policies), name


def test_only_the_ingress_controller_reaches_the_portal_from_outside(
        production: list[Manifest]) -> None:
    ingress = of_kind(production, "Ingress")
    assert [i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
            for i in ingress] == [f"{RELEASE}-portal"]
    for name in ("dataset-service", "tracer", "anchor-worker"):
        labels = _pods(production)[f"{RELEASE}-{name}"]
        for policy in _policies_for(production, labels):
            for rule in policy["spec"].get("ingress", []):
                for peer in rule["from"]:
                    assert "namespaceSelector" not in peer and "ipBlock" not in peer, name


def test_workloads_may_reach_only_the_portal_api(production: list[Manifest]) -> None:
    portal_labels = _pods(production)[f"{RELEASE}-portal"]
    desktop = {"vre.io/workload": "desktop", "app.kubernetes.io/name": "vre-desktop"}
    job = {"vre.io/workload": "job"}
    for labels in (desktop, job):
        policies = _policies_for(production, labels, namespace="vre-workloads")
        assert any(not p["spec"].get("egress") and not p["spec"].get("ingress")
                   and p["spec"]["podSelector"] == {} for p in policies)
        egress = [rule for p in policies for rule in p["spec"].get("egress", [])]
        assert egress, labels
        for rule in egress:
            assert rule["ports"] == [{"port": 8600, "protocol": "TCP"}]
            for peer in rule["to"]:
                assert peer["namespaceSelector"]["matchLabels"] == {
                    "kubernetes.io/metadata.name": NAMESPACE}
                assert selects(peer["podSelector"], portal_labels)
    # The portal's API admits exactly those workloads from that namespace.
    portal_policy = named(production, "NetworkPolicy", f"{RELEASE}-portal")
    workload_peers = [peer for rule in portal_policy["spec"]["ingress"] for peer in rule["from"]
                      if "namespaceSelector" in peer and peer["namespaceSelector"]["matchLabels"]
                      .get("kubernetes.io/metadata.name") == "vre-workloads"]
    assert len(workload_peers) == 1
    assert selects(workload_peers[0]["podSelector"], desktop)
    assert selects(workload_peers[0]["podSelector"], job)
    assert not selects(workload_peers[0]["podSelector"], {"vre.io/workload": "other"})


def test_the_repository_is_shared_read_write_here_and_read_only_for_workloads(
        rendered: dict[str, list[Manifest]]) -> None:
    defaults = rendered["defaults"]
    claim = named(defaults, "PersistentVolumeClaim", f"{RELEASE}-repository")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    production = rendered["production"]
    volumes = {v["spec"]["claimRef"]["namespace"]: v
               for v in of_kind(production, "PersistentVolume")}
    assert volumes[NAMESPACE]["spec"]["accessModes"] == ["ReadWriteMany"]
    workloads = volumes["vre-workloads"]
    assert workloads["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert workloads["spec"]["nfs"]["readOnly"] is True
    assert workloads["spec"]["claimRef"]["name"] == "vre-repository"
    dataset = named(production, "Deployment", f"{RELEASE}-dataset-service")
    mounts = {m["name"]: m for m in dataset["spec"]["template"]["spec"]["containers"][0]
              ["volumeMounts"]}
    assert mounts["repository"]["mountPath"] == "/var/lib/vre/repository"
    assert mounts["import"]["readOnly"] is True


def test_the_anchor_worker_is_one_and_never_two(production: list[Manifest],
                                                rendered: dict[str, list[Manifest]]) -> None:
    worker = named(production, "Deployment", f"{RELEASE}-anchor-worker")
    assert worker["spec"]["replicas"] == 1
    assert worker["spec"]["strategy"] == {"type": "Recreate"}
    # Without a contract there is nothing to anchor to yet.
    assert not [d for d in of_kind(rendered["defaults"], "Deployment")
                if component(d) == "anchor-worker"]
    deploy = named(rendered["existing-secrets"], "Job", f"{RELEASE}-chain-deploy")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "vre-trace", "deploy"]
