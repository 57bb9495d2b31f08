"""Compile TraceAnchor.sol with solc-js into the committed artifact TraceAnchor.json.

Usage::

    npm install                                  # once, in the repository root (pins solc-js)
    python -m tracer.contracts.build             # (re)write tracer/contracts/TraceAnchor.json
    python -m tracer.contracts.build --check     # exit 1 if the committed artifact is stale

The compiler is driven through its standard-JSON interface with settings chosen for a
reproducible, Besu-compatible runtime code: evmVersion "paris" (no PUSH0, which Besu networks
on older milestones reject), optimizer on with 200 runs, and no CBOR metadata trailer
(``appendCBOR: false``, ``bytecodeHash: "none"``) so the code does not depend on source paths,
comments or the compiler build and ``check_contract`` can compare code byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "ARTIFACT_PATH", "CONTRACT_NAME", "EVM_VERSION", "SOURCE_PATH", "CompileError",
    "build_artifact", "compile_standard_json", "main", "render_artifact", "solc_module_dir",
]

CONTRACT_NAME = "TraceAnchor"
PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_PATH = PACKAGE_DIR / f"{CONTRACT_NAME}.sol"
ARTIFACT_PATH = PACKAGE_DIR / f"{CONTRACT_NAME}.json"
REPO_ROOT = PACKAGE_DIR.parents[1]
EVM_VERSION = "paris"
OPTIMIZER_RUNS = 200

# The source unit name is a bare file name, never an absolute path, so the compile (and any
# metadata) is the same on every checkout.
_SOURCE_UNIT = f"{CONTRACT_NAME}.sol"

# Reads the standard-JSON input on stdin and prints {"version", "output"}; the module path is
# passed as an argument so no shell quoting of paths is needed.
_NODE_SCRIPT = r"""
const solc = require(process.argv[1]);
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const output = JSON.parse(solc.compile(input));
  process.stdout.write(JSON.stringify({ version: solc.version(), output }));
});
"""


class CompileError(RuntimeError):
    """solc-js is missing or the contract did not compile."""


def solc_module_dir() -> Path:
    """The solc-js package directory installed by ``npm install`` in the repository root."""
    override = os.environ.get("VRE_SOLCJS_DIR")
    path = Path(override) if override else REPO_ROOT / "node_modules" / "solc"
    if not (path / "package.json").is_file():
        raise CompileError(
            f"solc-js not found at {path}: run `npm install` in {REPO_ROOT} "
            "(package.json pins the solc version)"
        )
    return path


def _standard_json_input(source: str) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {_SOURCE_UNIT: {"content": source}},
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
            "metadata": {"bytecodeHash": "none", "appendCBOR": False},
            "outputSelection": {
                _SOURCE_UNIT: {
                    CONTRACT_NAME: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"],
                },
            },
        },
    }


def compile_standard_json(standard_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Run solc-js on a standard-JSON input; returns (compiler version, standard-JSON output)."""
    node = shutil.which("node")
    if node is None:
        raise CompileError("node not found on PATH: install Node.js 20+ to compile the contract")
    proc = subprocess.run(
        [node, "-e", _NODE_SCRIPT, str(solc_module_dir())],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        raise CompileError(f"solc-js failed (exit {proc.returncode}): {proc.stderr.strip()}")
    result = json.loads(proc.stdout)
    return result["version"], result["output"]


def build_artifact() -> dict[str, Any]:
    """Compile the contract and return the artifact as a dict (nothing is written)."""
    source = SOURCE_PATH.read_text(encoding="utf-8")
    version, output = compile_standard_json(_standard_json_input(source))
    diagnostics = output.get("errors", [])
    errors = [d for d in diagnostics if d.get("severity") == "error"]
    for diag in diagnostics:
        if diag.get("severity") != "error":
            print(diag.get("formattedMessage", diag.get("message")), file=sys.stderr)
    if errors:
        raise CompileError(
            "\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors)
        )
    contract = output["contracts"][_SOURCE_UNIT][CONTRACT_NAME]
    return {
        "contractName": CONTRACT_NAME,
        "sourceName": _SOURCE_UNIT,
        "sourceSha256": hashlib.sha256(source.encode("utf-8")).hexdigest(),
        "compiler": {"name": "solc-js", "version": version},
        "evmVersion": EVM_VERSION,
        "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
    }


def render_artifact(artifact: dict[str, Any]) -> str:
    """The exact committed text of an artifact (stable formatting keeps diffs reviewable)."""
    return json.dumps(artifact, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m tracer.contracts.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the committed artifact differs from a "
                             "fresh compile")
    args = parser.parse_args(argv)
    try:
        fresh = render_artifact(build_artifact())
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        committed = ARTIFACT_PATH.read_text(encoding="utf-8") if ARTIFACT_PATH.exists() else ""
        if committed != fresh:
            print(f"{ARTIFACT_PATH} is stale: run `python -m tracer.contracts.build`",
                  file=sys.stderr)
            return 1
        print(f"{ARTIFACT_PATH.name} is up to date")
        return 0
    ARTIFACT_PATH.write_text(fresh, encoding="utf-8")
    print(f"wrote {ARTIFACT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
