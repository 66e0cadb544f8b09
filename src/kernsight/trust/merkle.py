"""RFC 9162 (Certificate Transparency v2) SHA-256 Merkle tree for an append-only audit log.

Hashing (RFC 9162 section 2.1.1): a leaf is ``SHA-256(0x00 || entry)``, an interior node is
``SHA-256(0x01 || left || right)``, and the empty tree's root is ``SHA-256(b"")``. A tree of
``n > 1`` leaves splits at the largest power of two strictly smaller than ``n``.

:class:`MerkleTree` keeps, for every level ``k``, the hashes of all *complete* subtrees of
``2**k`` leaves (level 0 holds the leaf hashes). Appending costs one leaf hash plus, amortised,
one node hash; roots and proofs for any size up to the current one need O(log n) lookups and at
most O(log n) extra hashes for the incomplete nodes on the tree's right border.

The module-level verifiers need no tree and raise :class:`ProofError` on any failure. Besides
the RFC 9162 inclusion and consistency proofs they accept the *subtree* proofs of the Merkle
Tree Certificates draft (draft-ietf-plants-merkle-tree-certs), which reduce to the same
primitives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleTree",
    "ProofError",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
    "verify_subtree_consistency",
    "verify_subtree_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
_LEAF = b"\x00"
_NODE = b"\x01"


class ProofError(ValueError):
    """A Merkle proof (or its parameters) failed verification."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || entry)."""
    return _sha256(_LEAF + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE + left + right).digest()


def root_from_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """Root of the tree whose leaves have the given hashes (O(n); the empty tree is allowed).

    Pairing neighbours level by level and carrying an unpaired last node up unchanged gives
    exactly the RFC's "split at the largest power of two" shape.
    """
    level = list(hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


# --------------------------------------------------------------------------- tree


class MerkleTree:
    """Append-only RFC 9162 Merkle tree answering roots and proofs for any past size."""

    __slots__ = ("_levels",)

    def __init__(self, entries: Iterable[bytes] = ()) -> None:
        # _levels[k][i] = hash of the complete subtree of leaves [i * 2**k, (i + 1) * 2**k).
        self._levels: list[list[bytes]] = [[]]
        for entry in entries:
            self.append(entry)

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def __len__(self) -> int:
        return len(self._levels[0])

    def append(self, entry: bytes) -> int:
        """Append a raw entry (hashed as a leaf); return its index."""
        return self._push(_sha256(_LEAF + entry).digest())

    def append_leaf_hash(self, h: bytes) -> int:
        """Append an already computed leaf hash; return its index."""
        if len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(h)}")
        return self._push(bytes(h))

    def _push(self, h: bytes) -> int:
        levels = self._levels
        leaves = levels[0]
        index = len(leaves)
        leaves.append(h)
        # Leaf `index` completes one new subtree per trailing 1 bit of `index`.
        n, k = index, 0
        while n & 1:
            lower = levels[k]
            h = _sha256(_NODE + lower[-2] + h).digest()
            k += 1
            if k == len(levels):
                levels.append([])
            levels[k].append(h)
            n >>= 1
        return index

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} out of range [0, {self.size}]")
        return size

    def _border(self, n: int) -> list[bytes]:
        """Hashes of the right-border nodes of the size-``n`` tree, one per level (n > 0).

        ``border[k]`` covers leaves ``[((n - 1) >> k) << k, n)``; it may be incomplete, and
        the last entry is the root.
        """
        levels = self._levels
        h = levels[0][n - 1]
        border = [h]
        last, k = n - 1, 0  # `last` = index of the border node on level k
        while last:
            if last & 1:
                parent = last >> 1
                if (parent + 1) << (k + 1) <= n:  # complete: stored already
                    h = levels[k + 1][parent]
                else:
                    h = node_hash(levels[k][last - 1], h)
            # An even `last` has no right sibling: its parent is the node itself.
            border.append(h)
            last >>= 1
            k += 1
        return border

    def _path(self, index: int, level: int, n: int, border: list[bytes]) -> list[bytes]:
        """Sibling hashes, bottom-up, from node (level, index) to the root of the size-n tree."""
        levels = self._levels
        proof: list[bytes] = []
        fn, sn, k = index, (n - 1) >> level, level
        while sn:
            if fn & 1:  # left sibling, always complete
                proof.append(levels[k][fn - 1])
            elif fn < sn:  # right sibling; the border node may be incomplete
                proof.append(border[k] if fn + 1 == sn else levels[k][fn + 1])
            # else: last node on an even position, promoted to the next level unchanged
            fn >>= 1
            sn >>= 1
            k += 1
        return proof

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the tree at ``size`` leaves (default: current size)."""
        n = self._check_size(size)
        return self._border(n)[-1] if n else EMPTY_ROOT

    def leaf_hash(self, index: int) -> bytes:
        """Stored leaf hash at ``index``."""
        return self._levels[0][index]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 PATH(index, D[size]): audit path of leaf ``index`` in the tree of ``size``."""
        n = self._check_size(size)
        if not 0 <= index < n:
            raise ValueError(f"index {index} out of range for tree size {n}")
        return self._path(index, 0, n, self._border(n))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 PROOF(old_size, D[new_size]); empty when the sizes are equal.

        ``old_size`` must be > 0: every tree extends the empty one, and verifiers reject a
        proof from size 0 as meaningless.
        """
        n = self._check_size(new_size)
        if not 0 < old_size <= n:
            raise ValueError(f"old_size {old_size} out of range [1, {n}]")
        if old_size == n:
            return []
        # The old tree's rightmost complete subtree is node (level, index); the proof is that
        # node (omitted when it is the whole old tree, i.e. old_size is a power of two, since
        # the verifier knows it as the old root) followed by its audit path in the new tree.
        level = (old_size & -old_size).bit_length() - 1
        index = (old_size - 1) >> level
        head = [self._levels[level][index]] if index else []
        return head + self._path(index, level, n, self._border(n))


# ------------------------------------------------------------------ verification


def _check_hash(name: str, h: bytes) -> None:
    if len(h) != HASH_SIZE:
        raise ProofError(f"{name} must be {HASH_SIZE} bytes, got {len(h)}")


def _check_proof(proof: Sequence[bytes], expected: int) -> None:
    if len(proof) != expected:
        raise ProofError(f"wrong proof length: got {len(proof)} hashes, expected {expected}")
    for i, p in enumerate(proof):
        if len(p) != HASH_SIZE:
            raise ProofError(f"proof[{i}] must be {HASH_SIZE} bytes, got {len(p)}")


def _inclusion_len(index: int, size: int) -> int:
    # Levels below the point where the paths to `index` and to the last leaf diverge always
    # have a sibling; above it, only the levels where `index` is a right child do.
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_len(old_size: int, new_size: int) -> int:
    # See MerkleTree.consistency_proof (requires 0 < old_size < new_size).
    level = (old_size & -old_size).bit_length() - 1
    index = (old_size - 1) >> level
    return (index != 0) + _inclusion_len(index, ((new_size - 1) >> level) + 1)


def _root_from_inclusion(h: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2, steps 2-5 (minus the final root comparison)."""
    fn, sn, r = index, size - 1, h
    for p in proof:
        if sn == 0:
            raise ProofError("proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof too short")
    return r


def _roots_from_consistency(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """RFC 9162 section 2.1.4.2, steps 1-6 for 0 < old_size < new_size: returns (fr, sr)."""
    if not proof:
        raise ProofError("empty consistency proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof too short")
    return fr, sr


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the size-``size`` tree with ``root``.

    Raises :class:`ProofError` describing the failure.
    """
    if not 0 <= index < size:
        raise ProofError(f"index {index} out of range for tree size {size}")
    _check_hash("leaf hash", leaf_hash)
    _check_proof(proof, _inclusion_len(index, size))
    if _root_from_inclusion(leaf_hash, index, size, proof) != root:
        raise ProofError(f"root mismatch: proof for leaf {index} does not lead to the given root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the size-``new_size`` tree ``new_root`` extends the ``old_root`` tree.

    Raises :class:`ProofError` describing the failure. Equal sizes need an empty proof and
    equal roots; ``old_size == 0`` is rejected (a proof from the empty tree proves nothing).
    """
    if old_size < 0 or new_size < 0:
        raise ProofError(f"negative tree size ({old_size}, {new_size})")
    if old_size > new_size:
        raise ProofError(f"old_size {old_size} > new_size {new_size}")
    if old_size == 0:
        raise ProofError("consistency from the empty tree (old_size 0) is meaningless")
    if old_size == new_size:
        if proof:
            raise ProofError(f"sizes are equal, proof must be empty (got {len(proof)} hashes)")
        if old_root != new_root:
            raise ProofError("sizes are equal but the roots differ")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    _check_proof(proof, _consistency_len(old_size, new_size))
    fr, sr = _roots_from_consistency(old_size, new_size, old_root, proof)
    if fr != old_root:
        raise ProofError(f"old root mismatch at size {old_size}")
    if sr != new_root:
        raise ProofError(f"new root mismatch at size {new_size}")


# ---------------------------------------------------------- subtree proofs (MTC draft)
#
# A subtree [start, end) is valid when start < end and start is a multiple of
# BIT_CEIL(end - start); its hash is the Merkle root of those leaves alone. Such a subtree
# always lies inside the level-L node covering [start, start + 2**L), 2**L = BIT_CEIL(end -
# start), as a prefix of that node's leaves (the node may itself be cut short by the tree
# size). A subtree consistency proof is therefore an ordinary consistency proof inside that
# node (empty if the subtree is the whole node) followed by the node's audit path to the root.


def _check_subtree(start: int, end: int) -> int:
    """Validate a non-empty subtree; return L with 2**L = BIT_CEIL(end - start)."""
    if not 0 <= start < end:
        raise ProofError(f"invalid subtree [{start}, {end}): need 0 <= start < end")
    level = (end - start - 1).bit_length()
    if start & ((1 << level) - 1):
        raise ProofError(
            f"invalid subtree [{start}, {end}): start must be a multiple of {1 << level}"
        )
    return level


def verify_subtree_inclusion(
    leaf_hash: bytes,
    index: int,
    start: int,
    end: int,
    proof: Sequence[bytes],
    subtree_root: bytes,
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of subtree ``[start, end)`` (``subtree_root``)."""
    _check_subtree(start, end)
    if not start <= index < end:
        raise ProofError(f"index {index} outside subtree [{start}, {end})")
    # Within the subtree this is a plain inclusion proof, with indices relative to `start`.
    verify_inclusion(leaf_hash, index - start, end - start, proof, subtree_root)


def verify_subtree_consistency(
    start: int,
    end: int,
    size: int,
    subtree_root: bytes,
    root: bytes,
    proof: Sequence[bytes],
) -> None:
    """Check that subtree ``[start, end)`` (``subtree_root``) is in tree ``root`` of ``size``.

    An empty subtree (``start == end``) is accepted only with an empty proof and the empty
    tree's hash as ``subtree_root``.
    """
    if start < 0 or end > size:
        raise ProofError(f"subtree [{start}, {end}) not within tree size {size}")
    if start == end:
        if proof:
            raise ProofError(f"empty subtree needs an empty proof (got {len(proof)} hashes)")
        if subtree_root != EMPTY_ROOT:
            raise ProofError("empty subtree must have the empty tree's hash")
        return
    level = _check_subtree(start, end)
    sub_size = end - start
    node_size = min(1 << level, size - start)  # leaves under node (level, start >> level)
    node_index = start >> level
    upper = _inclusion_len(node_index, ((size - 1) >> level) + 1)
    lower = 0 if sub_size == node_size else _consistency_len(sub_size, node_size)
    _check_proof(proof, lower + upper)
    if lower:
        fr, node = _roots_from_consistency(sub_size, node_size, subtree_root, proof[:lower])
        if fr != subtree_root:
            raise ProofError(f"subtree root mismatch for [{start}, {end})")
    else:
        node = subtree_root
    if _root_from_inclusion(node, node_index, ((size - 1) >> level) + 1, proof[lower:]) != root:
        raise ProofError(f"root mismatch at size {size}")
