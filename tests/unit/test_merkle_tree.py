"""Property-style tests: MerkleTree agrees with the RFC 6962 reference functions and verifiers."""

from __future__ import annotations

import hashlib

import pytest

from tracer.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 70

# Leaf inputs of the Certificate Transparency reference implementation's Merkle tree tests.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(MAX_SIZE)]


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    t = MerkleTree()
    for h in LEAVES:
        t.append(h)
    return t


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]


def test_hash_primitives() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert MerkleTree().root() == EMPTY_ROOT


def test_ct_reference_roots() -> None:
    hashes = [leaf_hash(d) for d in CT_LEAVES]
    t = MerkleTree()
    for size, want in enumerate(CT_ROOTS, start=1):
        t.append(hashes[size - 1])
        assert root_from_leaf_hashes(hashes[:size]).hex() == want
        assert t.root().hex() == want
    assert t.root().hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def test_roots_match_reference(tree: MerkleTree) -> None:
    assert tree.size == MAX_SIZE
    for size in range(MAX_SIZE + 1):
        assert tree.root(size) == root_from_leaf_hashes(LEAVES[:size])
    assert tree.root() == tree.root(MAX_SIZE)


def test_append_and_extend_agree(tree: MerkleTree) -> None:
    bulk = MerkleTree(LEAVES)
    chunked = MerkleTree()
    for start in range(0, MAX_SIZE, 7):
        chunked.extend(LEAVES[start:start + 7])
    for t in (bulk, chunked):
        assert t._levels == tree._levels
        assert [t.leaf_hash_at(i) for i in range(t.size)] == LEAVES


@pytest.mark.parametrize("size", range(1, MAX_SIZE + 1))
def test_inclusion_proofs(tree: MerkleTree, size: int) -> None:
    root = tree.root(size)
    for index in range(size):
        proof = tree.inclusion_proof(index, size)
        assert proof == inclusion_proof(LEAVES, index, size)
        verify_inclusion(LEAVES[index], index, size, proof, root)


@pytest.mark.parametrize("size2", range(1, MAX_SIZE + 1))
def test_consistency_proofs(tree: MerkleTree, size2: int) -> None:
    root2 = tree.root(size2)
    for size1 in range(1, size2 + 1):
        proof = tree.consistency_proof(size1, size2)
        assert proof == consistency_proof(LEAVES, size1, size2)
        verify_consistency(size1, size2, proof, tree.root(size1), root2)


def test_default_size_is_current(tree: MerkleTree) -> None:
    assert tree.inclusion_proof(5) == tree.inclusion_proof(5, MAX_SIZE)
    assert tree.consistency_proof(9) == tree.consistency_proof(9, MAX_SIZE)


@pytest.mark.parametrize("size", [2, 3, 7, 8, 13, 64, MAX_SIZE])
def test_tampered_inclusion_proof_rejected(tree: MerkleTree, size: int) -> None:
    root = tree.root(size)
    for index in range(size):
        proof = tree.inclusion_proof(index, size)
        for i in range(len(proof)):
            for pos in (0, 17, 31):
                bad = list(proof)
                bad[i] = _flip(bad[i], pos)
                with pytest.raises(ProofError):
                    verify_inclusion(LEAVES[index], index, size, bad, root)
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], index, size, [*proof, proof[0]], root)
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], index, size, proof[:-1], root)
        with pytest.raises(ProofError):
            verify_inclusion(_flip(LEAVES[index], 3), index, size, proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(LEAVES[index], index, size, proof, _flip(root, 0))


@pytest.mark.parametrize("size2", [2, 3, 7, 8, 13, 64, MAX_SIZE])
def test_tampered_consistency_proof_rejected(tree: MerkleTree, size2: int) -> None:
    root2 = tree.root(size2)
    for size1 in range(1, size2):
        root1 = tree.root(size1)
        proof = tree.consistency_proof(size1, size2)
        for i in range(len(proof)):
            bad = list(proof)
            bad[i] = _flip(bad[i], 31)
            with pytest.raises(ProofError):
                verify_consistency(size1, size2, bad, root1, root2)
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, [*proof, proof[0]], root1, root2)
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof[:-1], root1, root2)
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof, _flip(root1, 0), root2)
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof, root1, _flip(root2, 0))


def test_verify_rejects_bad_parameters(tree: MerkleTree) -> None:
    root = tree.root(4)
    proof = tree.inclusion_proof(1, 4)
    with pytest.raises(ProofError, match="expected 32"):
        verify_inclusion(LEAVES[1][:31], 1, 4, proof, root)
    with pytest.raises(ProofError, match="out of range"):
        verify_inclusion(LEAVES[1], 4, 4, proof, root)
    with pytest.raises(ProofError, match="out of range"):
        verify_inclusion(LEAVES[1], -1, 4, proof, root)
    with pytest.raises(ProofError, match="proof hash 0"):
        verify_inclusion(LEAVES[1], 1, 4, [proof[0] + b"\x00", proof[1]], root)
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 4, [], EMPTY_ROOT, root)
    with pytest.raises(ProofError, match="greater than"):
        verify_consistency(4, 3, [], root, tree.root(3))
    with pytest.raises(ProofError, match="not empty"):
        verify_consistency(4, 4, [root], root, root)
    with pytest.raises(ProofError, match="roots differ"):
        verify_consistency(4, 4, [], root, tree.root(3))
    verify_consistency(4, 4, [], root, root)
    assert issubclass(ProofError, ValueError)


def test_tree_rejects_bad_arguments(tree: MerkleTree) -> None:
    with pytest.raises(ValueError):
        MerkleTree().append(b"short")
    with pytest.raises(ValueError):
        MerkleTree().extend([LEAVES[0], b"short"])
    with pytest.raises(IndexError):
        tree.leaf_hash_at(MAX_SIZE)
    with pytest.raises(ValueError):
        tree.root(MAX_SIZE + 1)
    with pytest.raises(ValueError):
        tree.inclusion_proof(3, 3)
    with pytest.raises(ValueError):
        tree.consistency_proof(0, 3)
    with pytest.raises(ValueError):
        tree.consistency_proof(4, 3)
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES, 0, MAX_SIZE + 1)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, 0, 1)


def test_historical_state_unchanged_after_appends() -> None:
    t = MerkleTree()
    roots: list[bytes] = []
    proofs: dict[tuple[int, int], list[bytes]] = {}
    for size in range(1, 40):
        t.append(LEAVES[size - 1])
        roots.append(t.root())
        proofs[(size - 1, size)] = t.inclusion_proof(size - 1)
    t.extend(LEAVES[39:])
    for size, root in enumerate(roots, start=1):
        assert t.root(size) == root
    for (index, size), proof in proofs.items():
        assert t.inclusion_proof(index, size) == proof
        verify_inclusion(LEAVES[index], index, size, proof, roots[size - 1])
    for size1 in range(1, 40):
        verify_consistency(size1, t.size, t.consistency_proof(size1), roots[size1 - 1], t.root())
