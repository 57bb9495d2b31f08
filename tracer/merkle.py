"""RFC 6962 (Certificate Transparency) Merkle-log hashing, proofs and proof verification."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT", "HASH_SIZE", "MerkleTree", "ProofError", "consistency_proof", "inclusion_proof",
    "leaf_hash", "node_hash", "root_from_leaf_hashes", "verify_consistency", "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


class ProofError(ValueError):
    """An inclusion or consistency proof failed verification."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 section 2.1: MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 section 2.1: interior node hash SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2), the k of RFC 6962 section 2.1."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 section 2.1: MTH(D[n]) from leaf hashes, computed level by level.

    Pairing each level left to right and promoting an odd last node gives the same tree as the
    RFC's split at the largest power of two below n.
    """
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        parents = [_sha256(b"\x01" + level[i] + level[i + 1]).digest()
                   for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            parents.append(level[-1])
        level = parents
    return level[0]


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """RFC 6962 section 2.1.1: audit path PATH(index, D[size]), a direct (slow) reference."""
    if not 0 <= index < size <= len(leaf_hashes):
        raise ValueError(f"need 0 <= index ({index}) < size ({size}) <= {len(leaf_hashes)}")

    def mth(lo: int, hi: int) -> bytes:
        return root_from_leaf_hashes(leaf_hashes[lo:hi])

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        if hi - lo == 1:
            return []
        k = _split(hi - lo)
        if m < k:
            return [*path(m, lo, lo + k), mth(lo + k, hi)]
        return [*path(m - k, lo + k, hi), mth(lo, lo + k)]

    return path(index, 0, size)


def consistency_proof(leaf_hashes: Sequence[bytes], size1: int, size2: int) -> list[bytes]:
    """RFC 6962 section 2.1.2: PROOF(size1, D[size2]), a direct (slow) reference.

    Sizes must satisfy 0 < size1 <= size2: a proof from the empty tree is meaningless.
    """
    if not 0 < size1 <= size2 <= len(leaf_hashes):
        raise ValueError(f"need 0 < size1 ({size1}) <= size2 ({size2}) <= {len(leaf_hashes)}")

    def mth(lo: int, hi: int) -> bytes:
        return root_from_leaf_hashes(leaf_hashes[lo:hi])

    def subproof(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if complete else [mth(lo, hi)]
        k = _split(hi - lo)
        if m <= k:
            return [*subproof(m, lo, lo + k, complete), mth(lo + k, hi)]
        return [*subproof(m - k, lo + k, hi, False), mth(lo, lo + k)]

    return subproof(size1, 0, size2, True)


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    """Every RFC 6962 section 2.1 hash in a proof is exactly one SHA-256 output."""
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"proof hash {i} is {len(h)} bytes, expected {HASH_SIZE}")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 6962 section 2.1.1 audit path check, by the algorithm of RFC 9162 section 2.1.3.2.

    Returns None when the proof is valid and raises ProofError otherwise.
    """
    if len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is out of range for tree size {size}")
    _check_proof_hashes(proof)
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof is longer than index {index} / size {size} imply")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"inclusion proof is shorter than index {index} / size {size} imply")
    if r != root:
        raise ProofError("inclusion proof does not reproduce the expected root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 6962 section 2.1.2 consistency check, by the algorithm of RFC 9162 section 2.1.4.2.

    Returns None when the proof is valid and raises ProofError otherwise.
    """
    if size1 < 0 or size2 < 0:
        raise ProofError(f"tree sizes must be non-negative, got {size1} and {size2}")
    if size1 > size2:
        raise ProofError(f"size1 ({size1}) is greater than size2 ({size2})")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree (size1 = 0) is meaningless")
    if size1 == size2:
        if proof:
            raise ProofError(f"sizes are equal ({size1}) but the proof is not empty")
        if root1 != root2:
            raise ProofError(f"sizes are equal ({size1}) but the roots differ")
        return
    if not proof:
        raise ProofError(f"empty consistency proof from size {size1} to {size2}")
    _check_proof_hashes(proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof is longer than sizes {size1} -> {size2} imply")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"consistency proof is shorter than sizes {size1} -> {size2} imply")
    if fr != root1:
        raise ProofError("consistency proof does not reproduce root1")
    if sr != root2:
        raise ProofError("consistency proof does not reproduce root2")


class MerkleTree:
    """Append-only in-memory RFC 6962 tree keeping every level of perfect-subtree hashes.

    ``_levels[k][j]`` is MTH of leaves [j * 2**k, (j + 1) * 2**k); level 0 holds the leaf hashes.
    Roots and proofs for any historical size use only these stored hashes plus the right edge.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Create a tree, optionally pre-filled with leaf hashes (RFC 6962 section 2.1)."""
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash (RFC 6962 section 2.1), amortised O(1)."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
        levels = self._levels
        levels[0].append(leaf_hash)
        k = 0
        while len(levels[k]) % 2 == 0:
            if k + 1 == len(levels):
                levels.append([])
            levels[k + 1].append(node_hash(levels[k][-2], levels[k][-1]))
            k += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes (RFC 6962 section 2.1), O(1) amortised per leaf."""
        new = list(leaf_hashes)
        for h in new:
            if len(h) != HASH_SIZE:
                raise ValueError(f"leaf hash is {len(h)} bytes, expected {HASH_SIZE}")
        levels = self._levels
        levels[0].extend(new)
        k = 0
        while True:
            row = levels[k]
            if k + 1 == len(levels):
                if len(row) < 2:
                    break
                levels.append([])
            parents = levels[k + 1]
            start = 2 * len(parents)
            if start + 1 >= len(row):
                break
            parents.extend([_sha256(b"\x01" + row[i] + row[i + 1]).digest()
                            for i in range(start, len(row) - 1, 2)])
            k += 1

    def leaf_hash_at(self, index: int) -> bytes:
        """Leaf hash MTH({d(index)}) of RFC 6962 section 2.1."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf index {index} out of range for tree size {self.size}")
        return self._levels[0][index]

    def _check_size(self, size: int | None) -> int:
        """Resolve a historical tree size (default: current) and bound-check it."""
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} out of range for tree of size {self.size}")
        return size

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for an RFC-aligned node range (start a multiple of its top split)."""
        nodes = []
        while start < end:
            k = (end - start).bit_length() - 1
            nodes.append(self._levels[k][start >> k])
            start += 1 << k
        result = nodes.pop()
        while nodes:
            result = node_hash(nodes.pop(), result)
        return result

    def root(self, size: int | None = None) -> bytes:
        """RFC 6962 section 2.1: MTH of the first ``size`` leaves (default: all), O(log n)."""
        size = self._check_size(size)
        return self._range_hash(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 section 2.1.1: audit path for leaf ``index`` in the tree of ``size`` leaves."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} out of range for tree size {size}")
        siblings = []
        lo, hi = 0, size
        while hi - lo > 1:
            mid = lo + _split(hi - lo)
            if index < mid:
                siblings.append(self._range_hash(mid, hi))
                hi = mid
            else:
                siblings.append(self._range_hash(lo, mid))
                lo = mid
        siblings.reverse()
        return siblings

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 6962 section 2.1.2: PROOF(size1, D[size2]); needs 0 < size1 <= size2."""
        size2 = self._check_size(size2)
        if not 0 < size1 <= size2:
            raise ValueError(f"need 0 < size1 ({size1}) <= size2 ({size2})")
        siblings = []
        lo, hi, complete = 0, size2, True
        while size1 != hi:
            mid = lo + _split(hi - lo)
            if size1 <= mid:
                siblings.append(self._range_hash(mid, hi))
                hi = mid
            else:
                siblings.append(self._range_hash(lo, mid))
                lo, complete = mid, False
        siblings.reverse()
        return siblings if complete else [self._range_hash(lo, hi), *siblings]
