#!/usr/bin/env python3
"""Make a new QBFT network for the vre-besu chart: one node key per validator.

    python vre_charts/besu/tools/besu_network.py --validators 4 --release vre-besu \
        --namespace vre-chain --out besu-network

writes besu-network/node-keys.json (a Secret with the private keys: apply it, keep it
nowhere else) and besu-network/values.yaml (the validators' public addresses and keys, for
`helm install -f`). The chart computes the genesis extraData from those addresses.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_keys import keys


@dataclass(frozen=True)
class Validator:
    """One validator's node key, and what others know of it."""

    private_key: str
    address: str
    public_key: str

    @classmethod
    def from_private_key(cls, private_key: bytes) -> Validator:
        key = keys.PrivateKey(private_key)
        return cls("0x" + private_key.hex(), key.public_key.to_checksum_address(),
                   key.public_key.to_hex())

    @classmethod
    def generate(cls) -> Validator:
        import secrets

        return cls.from_private_key(secrets.token_bytes(32))


def fullname(release: str, chart: str = "vre-besu") -> str:
    """The chart's name for its objects, as its _helpers.tpl computes it."""
    return (release if chart in release else f"{release}-{chart}")[:40].rstrip("-")


def values(validators: list[Validator]) -> dict[str, Any]:
    """The chart values that describe the network (public parts only)."""
    return {"validators": [{"address": v.address, "publicKey": v.public_key}
                           for v in validators]}


def node_keys_secret(validators: list[Validator], name: str,
                     namespace: str | None) -> dict[str, Any]:
    """The Secret the validator pods read their node key from (key validator-<i>)."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "vre"}}
    if namespace:
        metadata["namespace"] = namespace
    data = {f"validator-{i}": base64.b64encode(v.private_key.encode()).decode()
            for i, v in enumerate(validators)}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "data": data}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validators", type=int, default=4,
                        help="how many validators (4 or more tolerate a faulty one)")
    parser.add_argument("--release", default="vre-besu", help="Helm release name")
    parser.add_argument("--namespace", help="namespace of the release")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    args = parser.parse_args(argv)
    if not 1 <= args.validators <= 30:
        parser.error("--validators must be between 1 and 30")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    secret_file = out / "node-keys.json"
    if secret_file.exists():
        print(f"{secret_file} exists: refusing to replace a network's keys", file=sys.stderr)
        return 1
    network = [Validator.generate() for _ in range(args.validators)]
    secret = node_keys_secret(network, f"{fullname(args.release)}-node-keys", args.namespace)
    secret_file.touch(mode=0o600)
    secret_file.write_text(json.dumps(secret, indent=2) + "\n")
    # JSON is YAML: helm reads this file with -f.
    (out / "values.yaml").write_text(json.dumps(values(network), indent=2) + "\n")
    print(f"wrote {secret_file} (private: apply it, then delete it) and {out / 'values.yaml'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
