"""A workload spec as the agent's API carries it and the database keeps it."""

from __future__ import annotations

import json
from dataclasses import asdict

from portal.compute import DatasetMount, Resources, WorkloadSpec, spec_from_json, spec_to_json

SPEC = WorkloadSpec(
    workload_id="w1", owner="alice", kind="job", application="terminal",
    command=("python", "-m", "train"), image="registry.example/app@sha256:" + "a" * 64,
    resources=Resources(cpus=2, memory_mib=4096, gpus=1, gpu_ids=("0",), gpu_share=2),
    mounts=(DatasetMount("d1", "Chest CT", "1.0", "sha256:" + "0" * 64, "datasets/d1", "lung"),
            DatasetMount("d2", "Knee MR", "2.1", "sha256:" + "1" * 64, "datasets/d2")),
    environment={"EPOCHS": "3"}, token="secret", clipboard_out=True)


def test_the_json_is_every_field_as_asdict_answers_it() -> None:
    assert spec_to_json(SPEC) == asdict(SPEC) | {"environment": {"EPOCHS": "3"}}


def test_a_spec_comes_back_whole_through_json() -> None:
    assert spec_from_json(json.loads(json.dumps(spec_to_json(SPEC)))) == SPEC


def test_changing_the_json_leaves_the_spec_alone() -> None:
    data = spec_to_json(SPEC)
    data["resources"]["cpus"] = 64
    data["mounts"][0]["tree"] = "/etc"
    data["environment"]["EPOCHS"] = "99"
    data.pop("token")
    assert SPEC.resources.cpus == 2 and SPEC.mounts[0].tree == "datasets/d1"
    assert SPEC.environment["EPOCHS"] == "3" and SPEC.token == "secret"
