"""The compute contract mapped to the desktop chart (vre_charts/desktop): the values a
Kubernetes backend installs a desktop's release with. Pure: a spec in, values out, so what a
pod mounts is tested against what a local sandbox binds, and the two cannot drift apart."""

from __future__ import annotations

import math
from typing import Any

from portal.compute import WorkloadSpec, dataset_folders

# A label value: letters, digits, - _ . (the chart puts the desktop's id and owner in labels).
_LABEL_MAX = 63


def _image(reference: str) -> dict[str, str]:
    """`repository[:tag]` as the chart's image values (a digest stays in the repository)."""
    if "@" in reference:
        return {"repository": reference}
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:
        return {"repository": reference}
    return {"repository": repository, "tag": tag}


def desktop_values(spec: WorkloadSpec, *, home_claim: str, token_secret: str,
                   vnc_secret: str, repository_claim: str = "vre-repository") -> dict[str, Any]:
    """The desktop chart's values for one desktop: its granted trees at the same folders
    under ~/datasets as on one machine, read-only from the repository claim; the flavor's
    resources as limits; the owner's persistent claim; the secrets the backend made."""
    if spec.kind != "desktop":
        raise ValueError(f"workload {spec.workload_id} is a {spec.kind}, not a desktop")
    resources = spec.resources
    limits: dict[str, Any] = {"cpu": f"{resources.cpus:g}",
                              "memory": f"{resources.memory_mib}Mi"}
    if resources.gpus:
        # A flavor that shares its GPU asks for a time-sliced one: the NVIDIA device plugin
        # offers those as nvidia.com/gpu.shared where sharing is set up with renamed replicas.
        limits["nvidia.com/gpu.shared" if resources.gpu_share > 1 else "nvidia.com/gpu"] = \
            resources.gpus
    values: dict[str, Any] = {
        "desktop": {"id": spec.workload_id[:_LABEL_MAX], "owner": spec.owner[:_LABEL_MAX]},
        "datasets": [{"id": mount.dataset_id, "folder": folder, "subPath": mount.tree}
                     for mount, folder in zip(spec.mounts, dataset_folders(spec.mounts),
                                              strict=True)],
        "repository": {"claimName": repository_claim},
        "home": {"existingClaim": home_claim},
        "token": {"existingSecret": token_secret},
        "vnc": {"existingSecret": vnc_secret},
        # Requests at the flavor's share, so the scheduler places the desktop where it fits.
        "resources": {"requests": {"cpu": f"{max(0.1, resources.cpus / 2):g}",
                                   "memory": f"{math.ceil(resources.memory_mib / 2)}Mi"},
                      "limits": limits},
    }
    if spec.image:
        values["image"] = _image(spec.image)
    return values
