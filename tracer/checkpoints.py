"""Signed checkpoints of the log (tree size, root, time): a small text note signed with the
tracer's Ed25519 key, so anyone holding the public key can check a root came from the tracer."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class CheckpointError(ValueError):
    """A checkpoint note is malformed or its signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """The log's state at one moment, as the tracer vouches for it."""

    origin: str
    tree_size: int
    root: bytes
    timestamp: datetime

    def note(self) -> bytes:
        """The exact bytes that are signed: origin, size, base64 root, RFC 3339 time."""
        when = self.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"{self.origin}\n{self.tree_size}\n"
                f"{base64.b64encode(self.root).decode()}\n{when}\n").encode()

    @classmethod
    def parse(cls, note: bytes) -> Checkpoint:
        try:
            origin, size, root, when, tail = note.decode().split("\n")
            if tail or not origin or not size.isdigit():
                raise ValueError("bad layout")
            return cls(origin, int(size), base64.b64decode(root, validate=True),
                       datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC))
        except ValueError as exc:
            raise CheckpointError(f"malformed checkpoint note: {exc}") from exc


def key_id(public: Ed25519PublicKey) -> str:
    """Short stable name of a public key: first 8 bytes of SHA-256 of its raw form, hex."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_b64(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_public_key(b64: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
    except ValueError as exc:
        raise CheckpointError(f"not an Ed25519 public key: {exc}") from exc


class CheckpointSigner:
    """Holds the tracer's private key; signs checkpoints."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = key.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def from_file(cls, path: Path) -> CheckpointSigner:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(key)

    @staticmethod
    def generate(path: Path) -> None:
        """Write a new Ed25519 private key (PEM, mode 0600)."""
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(pem)

    def sign(self, checkpoint: Checkpoint) -> bytes:
        return self._key.sign(checkpoint.note())

    def derived_secret(self, purpose: str) -> bytes:
        """A secret for one purpose, derived from the private key (so it lives as long as
        the tracer's identity and needs no other secret kept beside it)."""
        raw = self._key.private_bytes(serialization.Encoding.Raw,
                                      serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
        return hmac.new(raw, purpose.encode(), hashlib.sha256).digest()


def verify_checkpoint(checkpoint: Checkpoint, signature: bytes,
                      public: Ed25519PublicKey) -> None:
    """Raise CheckpointError unless the signature is the key's over this checkpoint."""
    try:
        public.verify(signature, checkpoint.note())
    except InvalidSignature as exc:
        raise CheckpointError(
            f"checkpoint at tree size {checkpoint.tree_size} has a bad signature") from exc
