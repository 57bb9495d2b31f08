#!/usr/bin/env python3
"""`vre-platform-secrets`: make the platform's Secret for a Kubernetes install, with the same
code the one-machine mode uses for its keys.

    vre-platform-secrets ensure --name vre-secrets   # in a pod: create it, or add missing keys
    vre-platform-secrets print --name vre-secrets    # a Secret manifest for `kubectl apply -f -`

Existing keys are never replaced: the tracer's checkpoint key and chain account are the
ledger's identity. The service client secrets are not keys of their own but HMACs of the
root secret (what the portal checks), so they are always brought in line with it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from vre.services import derive_service_secret

ROOT = "secret-key"
DERIVED = {"dataset-service-secret": "dataset_service", "tracer-service-secret": "tracer"}
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _pem(write: Callable[[Path], None]) -> str:
    """Run one of the platform's key generators (they write a 0600 file) and read the PEM."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "key.pem"
        write(path)
        return path.read_text()


def _signing_key() -> str:
    from vre.tokens import generate_signing_key

    return _pem(generate_signing_key)


def _tracer_key() -> str:
    from tracer.checkpoints import CheckpointSigner

    return _pem(CheckpointSigner.generate)


def _chain_key() -> str:
    from eth_account import Account

    return "0x" + bytes(Account.create().key).hex()


GENERATORS: dict[str, Callable[[], str]] = {
    ROOT: lambda: secrets.token_urlsafe(48),
    "signing-key.pem": _signing_key,
    "tracer-key.pem": _tracer_key,
    "chain-private-key": _chain_key,
}


def complete(existing: Mapping[str, str]) -> dict[str, str]:
    """Every key the platform needs: the existing ones kept, the missing ones generated,
    the derived ones (service client secrets, chain address) computed from the others."""
    from eth_account import Account

    values = dict(existing)
    for key, generate in GENERATORS.items():
        if not values.get(key):
            values[key] = generate()
    for key, client in DERIVED.items():
        values[key] = derive_service_secret(values[ROOT], client)
    values["chain-address"] = Account.from_key(values["chain-private-key"]).address
    return values


def changes(existing: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """The keys to write so that the Secret holds `wanted`."""
    return {k: v for k, v in wanted.items() if existing.get(k) != v}


def manifest(name: str, namespace: str | None, values: Mapping[str, str]) -> dict[str, Any]:
    """A Secret object with these values; labelled as the platform's, owned by no release."""
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/part-of": "vre",
                   "app.kubernetes.io/managed-by": "vre-platform-secrets"},
    }
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "data": _encode(values)}


def _encode(values: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())}


def _decode(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


class SecretsApi:
    """The three calls on one namespace's Secrets this tool makes, over the pod's own
    service account (no client library: the services image has requests)."""

    def __init__(self, namespace: str, base_url: str | None = None,
                 session: requests.Session | None = None) -> None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.url = f"{base_url or f'https://{host}:{port}'}/api/v1/namespaces/{namespace}/secrets"
        self.namespace = namespace
        self.session = session or requests.Session()
        if session is None:
            self.session.headers["Authorization"] = \
                f"Bearer {(SA_DIR / 'token').read_text().strip()}"
            self.session.verify = str(SA_DIR / "ca.crt")

    def get(self, name: str) -> dict[str, Any] | None:
        response = self.session.get(f"{self.url}/{name}", timeout=30)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def create(self, body: dict[str, Any]) -> None:
        self.session.post(self.url, json=body, timeout=30).raise_for_status()

    def patch(self, name: str, data: Mapping[str, str]) -> None:
        response = self.session.patch(
            f"{self.url}/{name}", data=json.dumps({"data": _encode(data)}), timeout=30,
            headers={"Content-Type": "application/merge-patch+json"})
        response.raise_for_status()


def ensure(api: SecretsApi, name: str) -> list[str]:
    """Create the Secret, or add what it lacks; returns the keys written (never values)."""
    current = api.get(name)
    if current is None:
        values = complete({})
        api.create(manifest(name, api.namespace, values))
        return sorted(values)
    existing = _decode(current.get("data"))
    todo = changes(existing, complete(existing))
    if todo:
        api.patch(name, todo)
    return sorted(todo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vre-platform-secrets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["ensure", "print"])
    parser.add_argument("--name", required=True, help="name of the Secret")
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"),
                        help="its namespace (default: $POD_NAMESPACE)")
    args = parser.parse_args(argv)
    if args.action == "print":
        json.dump(manifest(args.name, args.namespace, complete({})), sys.stdout, indent=2)
        print()
        return 0
    if not args.namespace:
        parser.error("--namespace (or POD_NAMESPACE) is required to ensure a Secret")
    try:
        written = ensure(SecretsApi(args.namespace), args.name)
    except requests.RequestException as exc:
        print(f"vre-platform-secrets: Kubernetes API: {exc}", file=sys.stderr)
        return 1
    print(f"secret {args.namespace}/{args.name}: "
          + (f"wrote {', '.join(written)}" if written else "complete, nothing to do"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
