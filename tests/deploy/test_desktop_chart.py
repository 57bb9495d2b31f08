"""The desktop chart (vre_charts/desktop): one researcher's desktop pod mounts exactly its
granted datasets read-only, has no Kubernetes token, runs as a non-root user on a read-only
root, may talk to nobody but the platform's API, and shows its VNC port to the portal only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from portal.compute import DatasetMount, Resources, WorkloadSpec, dataset_folders
from portal.compute.charts import desktop_values
from portal.compute.sandbox import HOME, SandboxPlan, binds_of
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

RELEASE, NAMESPACE = "desktop-7f3a", "vre-workloads"
GRANTED: dict[str, Any] = {
    "desktop": {"id": "7f3a", "owner": "u-42"},
    "datasets": [{"id": "ds-0001", "folder": "Chest-CT", "subPath": "datasets/ds-0001"},
                 {"id": "ds-0002", "folder": "ds-0002", "subPath": "datasets/ds-0002"}],
    "token": {"existingSecret": "desktop-7f3a-token"},
    "vnc": {"existingSecret": "desktop-7f3a-vnc"},
    "home": {"existingClaim": "home-u-42"},
    "platform": {"apiIP": "10.96.14.2"},
    "resources": {"requests": {"cpu": "2", "memory": "8Gi"},
                  "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1}},
}
CASES: dict[str, dict[str, Any] | None] = {"defaults": None, "granted": GRANTED}


@pytest.fixture(scope="module")
def rendered(helm_home: Path) -> dict[str, list[Manifest]]:
    return {case: parse(template(helm_home, "desktop", RELEASE, NAMESPACE, values).stdout)
            for case, values in CASES.items()}


@pytest.fixture(scope="module")
def granted(rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    return rendered["granted"]


def _pod(manifests: list[Manifest]) -> dict[str, Any]:
    return named(manifests, "Deployment", RELEASE)["spec"]["template"]


def _container(manifests: list[Manifest], name: str) -> dict[str, Any]:
    """The display (the VNC server alone) or the session (the researcher's programs)."""
    return next(c for c in _pod(manifests)["spec"]["containers"] if c["name"] == name)


def _portal_labels(helm_home: Path) -> dict[str, str]:
    platform = parse(template(helm_home, "platform", "vre", "vre").stdout)
    return named(platform, "Deployment", "vre-portal")["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_chart_lints_strictly(helm_home: Path, case: str) -> None:
    args = ["lint", "--strict", str(CHARTS / "desktop")]
    values = CASES[case]
    if values:
        args += ["--values", str(values_file(helm_home, f"lint-desktop-{case}", values))]
    assert "0 chart(s) failed" in run_helm(args, helm_home).stdout


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(rendered: dict[str, list[Manifest]], case: str,
                                            version: str) -> None:
    for manifest in rendered[case]:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_granted_datasets_are_mounted_read_only_and_nothing_else(
        granted: list[Manifest]) -> None:
    spec = _pod(granted)["spec"]
    repository = next(v for v in spec["volumes"] if v["name"] == "repository")
    assert repository["persistentVolumeClaim"] == {"claimName": "vre-repository",
                                                   "readOnly": True}
    mounts = [m for m in _container(granted, "session")["volumeMounts"]
              if m["name"] == "repository"]
    assert mounts == [
        {"name": "repository", "mountPath": "/home/researcher/datasets/Chest-CT",
         "subPath": "datasets/ds-0001", "readOnly": True},
        {"name": "repository", "mountPath": "/home/researcher/datasets/ds-0002",
         "subPath": "datasets/ds-0002", "readOnly": True},
    ]
    # Every mount but the persistent folder and scratch space is read-only.
    writable = {m["mountPath"] for m in _container(granted, "session")["volumeMounts"]
                if not m.get("readOnly")}
    assert writable == {"/home/researcher", "/home/researcher/persistent", "/tmp"}
    display = {m["name"] for m in _container(granted, "display")["volumeMounts"]}
    assert display == {"display-tmp", "x11", "vnc-password"}, "no data reaches the display"


def test_without_grants_no_repository_is_mounted(rendered: dict[str, list[Manifest]]) -> None:
    spec = _pod(rendered["defaults"])["spec"]
    assert "repository" not in {v["name"] for v in spec["volumes"]}


@pytest.mark.parametrize("sub_path", ["../secrets", "datasets/../../etc", "/datasets/ds-1"])
def test_a_sub_path_outside_the_repository_is_refused(helm_home: Path, sub_path: str) -> None:
    result = template(helm_home, "desktop", RELEASE, NAMESPACE, {"datasets": [
        {"id": "ds-1", "folder": "ds-1", "subPath": sub_path}]}, check=False)
    assert result.returncode != 0
    assert "subPath" in result.stderr or "does not match pattern" in result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_desktop_has_no_token_and_no_root(rendered: dict[str, list[Manifest]],
                                              case: str) -> None:
    spec = _pod(rendered[case])["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert {c["name"] for c in spec["containers"]} == {"display", "session"}
    for container in spec["containers"]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    display = _container(rendered[case], "display")
    assert display["readinessProbe"] and display["livenessProbe"]


def test_the_flavor_sets_the_resources(granted: list[Manifest]) -> None:
    assert _container(granted, "session")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in _container(granted, "display")["resources"]["limits"]


def test_egress_goes_only_to_the_platform_api(granted: list[Manifest],
                                              helm_home: Path) -> None:
    policy = named(granted, "NetworkPolicy", RELEASE)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert selects(policy["spec"]["podSelector"], _pod(granted)["metadata"]["labels"])
    portal = _portal_labels(helm_home)
    [rule] = policy["spec"]["egress"]
    assert rule["ports"] == [{"port": 8600, "protocol": "TCP"}]
    [peer] = rule["to"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "vre"}}
    assert selects(peer["podSelector"], portal)
    # The portal is known by address: no DNS at all, so no queries leave either.
    spec = _pod(granted)["spec"]
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"] == {"nameservers": ["127.0.0.1"]}
    assert spec["hostAliases"] == [{"ip": "10.96.14.2", "hostnames": ["vre-portal.vre.svc"]}]


def test_without_the_portal_address_dns_is_the_only_other_way_out(
        rendered: dict[str, list[Manifest]]) -> None:
    policy = named(rendered["defaults"], "NetworkPolicy", RELEASE)
    api, dns = policy["spec"]["egress"]
    assert api["ports"] == [{"port": 8600, "protocol": "TCP"}]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


def test_vnc_is_exposed_to_the_portal_only(granted: list[Manifest], helm_home: Path) -> None:
    [service] = of_kind(granted, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("vnc", 5901)]
    policy = named(granted, "NetworkPolicy", RELEASE)
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5901, "protocol": "TCP"}]
    [peer] = rule["from"]
    assert selects(peer["podSelector"], _portal_labels(helm_home))
    assert not selects(peer["podSelector"], {"vre.io/workload": "desktop"})


def test_the_platform_policies_recognise_a_desktop(granted: list[Manifest],
                                                   helm_home: Path) -> None:
    labels = _pod(granted)["metadata"]["labels"]
    assert labels["vre.io/workload"] == "desktop"
    assert labels["vre.io/desktop"] == "7f3a" and labels["vre.io/owner"] == "u-42"
    platform = parse(template(helm_home, "platform", "vre", "vre").stdout)
    to_portal = named(platform, "NetworkPolicy", "vre-workloads-to-portal")
    assert to_portal["metadata"]["namespace"] == NAMESPACE
    assert selects(to_portal["spec"]["podSelector"], labels)
    vnc = named(platform, "NetworkPolicy", "vre-portal-to-desktops")
    assert selects(vnc["spec"]["podSelector"], labels)
    # The desktop's defaults name the platform's defaults: portal Service, port, claim.
    service = named(platform, "Service", "vre-portal")
    assert service["spec"]["ports"][0]["port"] == 8600
    assert named(platform, "Role", "vre-workloads")["metadata"]["namespace"] == NAMESPACE
    platform_values = yaml.safe_load((CHARTS / "platform" / "values.yaml").read_text())
    desktop_values = yaml.safe_load((CHARTS / "desktop" / "values.yaml").read_text())
    assert desktop_values["repository"]["claimName"] == \
        platform_values["repository"]["workloadsClaim"]
    assert desktop_values["vnc"]["port"] == platform_values["workloads"]["networkPolicy"]["vncPort"]


def test_the_desktop_reaches_its_token_and_vnc_password_read_only(
        granted: list[Manifest]) -> None:
    spec = _pod(granted)["spec"]
    session = {m["name"]: m for m in _container(granted, "session")["volumeMounts"]}
    display = {m["name"]: m for m in _container(granted, "display")["volumeMounts"]}
    assert session["token"] == {"name": "token", "mountPath": "/var/run/vre/token",
                                "readOnly": True}
    assert display["vnc-password"]["readOnly"] is True
    # The session sees the display's X11 socket read-only and never the VNC password; the
    # display never the token.
    assert session["x11"] == {"name": "x11", "mountPath": "/tmp/.X11-unix", "readOnly": True}
    assert "vnc-password" not in session and "token" not in display
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["token"]["secret"]["secretName"] == "desktop-7f3a-token"
    assert volumes["vnc-password"]["secret"]["secretName"] == "desktop-7f3a-vnc"
    assert volumes["home"]["persistentVolumeClaim"]["claimName"] == "home-u-42"
    env = {e["name"]: e.get("value") for e in _container(granted, "session")["env"]}
    assert env["VRE_PORTAL_URL"] == "http://vre-portal.vre.svc:8600"
    assert env["VRE_TOKEN_FILE"] == "/var/run/vre/token/token"
    assert not of_kind(granted, "Secret") and not of_kind(granted, "PersistentVolumeClaim")


def test_a_desktop_without_brought_secrets_makes_its_own(
        rendered: dict[str, list[Manifest]]) -> None:
    defaults = rendered["defaults"]
    [secret] = of_kind(defaults, "Secret")
    assert set(secret["data"]) == {"password"}
    [home] = of_kind(defaults, "PersistentVolumeClaim")
    assert home["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize("folder", ["../persistent", "a/b", ".hidden"])
def test_a_folder_outside_the_datasets_folder_is_refused(helm_home: Path, folder: str) -> None:
    result = template(helm_home, "desktop", RELEASE, NAMESPACE, {"datasets": [
        {"id": "ds-1", "folder": folder, "subPath": "datasets/ds-1"}]}, check=False)
    assert result.returncode != 0
    assert "folder" in result.stderr or "does not match pattern" in result.stderr


@pytest.mark.parametrize(("share", "resource"), [(1, "nvidia.com/gpu"),
                                                 (4, "nvidia.com/gpu.shared")])
def test_a_flavor_that_shares_its_gpu_asks_for_a_shared_one(share: int, resource: str) -> None:
    spec = WorkloadSpec(workload_id="d7f3a", owner="u-42", kind="desktop", application="desktop",
                        command=("desktop-session",), image="vre/desktop:0.1.0",
                        resources=Resources(cpus=2, memory_mib=4096, gpus=1, gpu_share=share))
    limits = desktop_values(spec, home_claim="h", token_secret="t",
                            vnc_secret="v")["resources"]["limits"]
    assert limits[resource] == 1 and len([k for k in limits if k.startswith("nvidia")]) == 1


def test_a_pod_mounts_what_a_local_sandbox_binds(helm_home: Path) -> None:
    """One mount contract: from the same grant, the desktop chart and the local sandbox put
    each dataset's tree at the same place, read-only, and the persistent folder beside it."""
    mounts = (DatasetMount("ds-1", "Knee MR (demo)", "1", "a" * 64, "datasets/ds-1"),
              DatasetMount("ds-2", "Knee MR (demo)", "2", "b" * 64, "datasets/ds-2"),
              DatasetMount("ds-3", "", "1", "c" * 64, "datasets/ds-3"))
    spec = WorkloadSpec(workload_id="d7f3a", owner="u-42", kind="desktop", application="desktop",
                        command=("desktop-session",), mounts=mounts, image="vre/desktop:0.1.0",
                        resources=Resources(cpus=2, memory_mib=4096, gpus=1))
    values = desktop_values(spec, home_claim="home-u-42", token_secret="d7f3a-token",
                            vnc_secret="d7f3a-vnc")
    container = _container(parse(template(helm_home, "desktop", RELEASE, NAMESPACE,
                                          values).stdout), "session")
    in_pod = {m["mountPath"]: (m["subPath"], m["readOnly"])
              for m in container["volumeMounts"] if m["name"] == "repository"}
    plan = SandboxPlan(workload_id=spec.workload_id, command=spec.command, run_dir="/run-dir",
                       etc_dir="/etc-dir", persistent="/persistent",
                       datasets=tuple((f"/repository/{m.tree}", folder) for m, folder
                                      in zip(mounts, dataset_folders(mounts), strict=True)))
    binds = binds_of(plan)
    in_sandbox = {b.target: (b.source.removeprefix("/repository/"), not b.writable)
                  for b in binds if b.source.startswith("/repository/")}
    assert in_pod == in_sandbox == {
        f"{HOME}/datasets/Knee-MR-demo": ("datasets/ds-1", True),
        f"{HOME}/datasets/ds-2": ("datasets/ds-2", True),
        f"{HOME}/datasets/ds-3": ("datasets/ds-3", True)}
    persistent = next(b.target for b in binds if b.source == "/persistent")
    assert {"name": "home", "mountPath": persistent} in container["volumeMounts"]
    assert container["image"] == "vre/desktop:0.1.0"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4096Mi",
                                                "nvidia.com/gpu": 1}
