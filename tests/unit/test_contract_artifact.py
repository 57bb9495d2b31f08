"""The committed TraceAnchor artifact is what the committed source compiles to, and fits Besu."""

from __future__ import annotations

import hashlib
import json

import pytest

from tracer.chain_jsonrpc import load_artifact
from tracer.contracts import build

EXPECTED_FUNCTIONS = {
    "anchor": (["uint64", "bytes32"], []),
    "anchorLeaf": (["uint64", "bytes32"], []),
    "anchorAt": (["uint256"], ["uint64", "bytes32", "uint64"]),
    "anchorCount": ([], ["uint256"]),
    "latest": ([], ["uint64", "bytes32", "uint64"]),
    "nextLeafIndex": ([], ["uint64"]),
    "owner": ([], ["address"]),
    "version": ([], ["string"]),
}
EXPECTED_EVENTS = {
    "Anchored": [("uint256", True), ("uint64", False), ("bytes32", False)],
    "LeafAnchored": [("uint64", True), ("bytes32", False)],
}


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads(build.ARTIFACT_PATH.read_text(encoding="utf-8"))


def test_artifact_matches_fresh_compile() -> None:
    # Deliberately fails (not skips) without solc-js: CI runs `npm ci`, and a skipped check
    # would let a stale artifact through.
    try:
        fresh = build.render_artifact(build.build_artifact())
    except build.CompileError as exc:
        pytest.fail(f"cannot compile TraceAnchor.sol: {exc}")
    assert fresh == build.ARTIFACT_PATH.read_text(encoding="utf-8"), (
        "TraceAnchor.json is stale: run `python -m tracer.contracts.build` and commit it"
    )


def test_source_hash_recorded(committed: dict) -> None:
    source = build.SOURCE_PATH.read_bytes()
    assert committed["sourceSha256"] == hashlib.sha256(source).hexdigest()


def test_abi_has_expected_interface(committed: dict) -> None:
    functions = {e["name"]: e for e in committed["abi"] if e["type"] == "function"}
    assert set(functions) == set(EXPECTED_FUNCTIONS)
    for name, (inputs, outputs) in EXPECTED_FUNCTIONS.items():
        assert [i["type"] for i in functions[name]["inputs"]] == inputs, name
        assert [o["type"] for o in functions[name]["outputs"]] == outputs, name
    for name in ("anchor", "anchorLeaf"):
        assert functions[name]["stateMutability"] == "nonpayable"
    events = {e["name"]: e for e in committed["abi"] if e["type"] == "event"}
    assert set(events) == set(EXPECTED_EVENTS)
    for name, params in EXPECTED_EVENTS.items():
        assert [(i["type"], i["indexed"]) for i in events[name]["inputs"]] == params, name


def test_settings_recorded(committed: dict) -> None:
    assert committed["evmVersion"] == "paris"
    assert committed["optimizer"] == {"enabled": True, "runs": 200}
    assert committed["compiler"]["version"].startswith("0.8.")
    assert committed["bytecode"].startswith("0x") and committed["deployedBytecode"].startswith("0x")


def _opcodes(code: bytes) -> list[int]:
    """Opcodes of EVM code, skipping PUSH immediates (so data bytes are not mistaken for ops)."""
    ops, i = [], 0
    while i < len(code):
        op = code[i]
        ops.append(op)
        i += 1 + (op - 0x5F if 0x60 <= op <= 0x7F else 0)
    return ops


def test_runtime_code_is_paris_compatible(committed: dict) -> None:
    # PUSH0 (0x5f) arrived with Shanghai; Besu networks on an older milestone reject it.
    for key in ("bytecode", "deployedBytecode"):
        code = bytes.fromhex(committed[key][2:])
        assert 0x5F not in _opcodes(code), f"{key} contains PUSH0"


def test_runtime_loader_reads_committed_artifact(committed: dict) -> None:
    assert load_artifact() == committed
