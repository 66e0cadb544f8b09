"""Tests for kernsight.trust.merkle: golden vectors plus exhaustive small-tree checks."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from kernsight.trust.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
    verify_subtree_consistency,
    verify_subtree_inclusion,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "merkle"
MAX_SIZE = 40


# ------------------------------------------------------------------ golden vectors


def _vector_files(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json")) if VECTORS.is_dir() else []


def _ids(files: list[Path]) -> list[str]:
    return [str(f.relative_to(VECTORS)) for f in files]


def _load(path: Path) -> tuple[dict, list[bytes]]:
    if not VECTORS.is_dir():
        pytest.skip(f"Merkle test vectors not found at {VECTORS}")
    data = json.loads(path.read_text())
    proof = [base64.b64decode(p) for p in data["proof"] or []]  # `null` means no hashes
    return data, proof


def _b64(data: dict, key: str) -> bytes:
    return base64.b64decode(data[key])


def _check(data: dict, verify) -> None:
    if data["wantErr"]:
        with pytest.raises(ProofError):
            verify()
    else:
        verify()


_NO_VECTORS = pytest.mark.skipif(
    not VECTORS.is_dir(), reason=f"Merkle test vectors not found at {VECTORS}"
)


def _params(kind: str):
    files = _vector_files(kind)
    if not files:  # keep one visible, skipped test instead of silently collecting nothing
        return [pytest.param(None, marks=_NO_VECTORS, id=f"{kind}-missing")]
    return [pytest.param(f, id=i) for f, i in zip(files, _ids(files), strict=True)]


def test_vectors_present() -> None:
    if not VECTORS.is_dir():
        pytest.skip(f"Merkle test vectors not found at {VECTORS}")
    for kind in ("inclusion", "consistency", "subtreeinclusion", "subtreeconsistency"):
        assert _vector_files(kind), kind


@pytest.mark.parametrize("path", _params("inclusion"))
def test_inclusion_vector(path: Path) -> None:
    d, proof = _load(path)
    _check(
        d,
        lambda: verify_inclusion(
            _b64(d, "leafHash"), d["leafIdx"], d["treeSize"], proof, _b64(d, "root")
        ),
    )


@pytest.mark.parametrize("path", _params("consistency"))
def test_consistency_vector(path: Path) -> None:
    d, proof = _load(path)
    _check(
        d,
        lambda: verify_consistency(
            d["size1"], d["size2"], _b64(d, "root1"), _b64(d, "root2"), proof
        ),
    )


# Subtree proofs come from the Merkle Tree Certificates draft: a subtree [start, end) is an
# aligned slice of the log; its inclusion proof is an ordinary one relative to `start`, and its
# consistency proof ties the subtree hash to a full tree head.
@pytest.mark.parametrize("path", _params("subtreeinclusion"))
def test_subtree_inclusion_vector(path: Path) -> None:
    d, proof = _load(path)
    _check(
        d,
        lambda: verify_subtree_inclusion(
            _b64(d, "leafHash"), d["leafIdx"], d["start"], d["end"], proof, _b64(d, "root")
        ),
    )


@pytest.mark.parametrize("path", _params("subtreeconsistency"))
def test_subtree_consistency_vector(path: Path) -> None:
    d, proof = _load(path)
    _check(
        d,
        lambda: verify_subtree_consistency(
            d["start"], d["end"], d["size"], _b64(d, "root1"), _b64(d, "root2"), proof
        ),
    )


# ----------------------------------------------------- reference (literal RFC recursion)


def _k(n: int) -> int:
    """Largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def ref_mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _k(len(leaves))
    return node_hash(ref_mth(leaves[:k]), ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = _k(len(leaves))
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], known: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if known else [ref_mth(leaves)]
    k = _k(n)
    if m <= k:
        return ref_subproof(m, leaves[:k], known) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def ref_subtree_proof(start: int, end: int, leaves: list[bytes], known: bool = True) -> list:
    """Subtree consistency proof, generalising SUBPROOF to a subtree [start, end)."""
    n = len(leaves)
    if start == 0 and end == n:
        return [] if known else [ref_mth(leaves)]
    k = _k(n)
    if end <= k:
        return ref_subtree_proof(start, end, leaves[:k], known) + [ref_mth(leaves[k:])]
    if start >= k:
        return ref_subtree_proof(start - k, end - k, leaves[k:], known) + [ref_mth(leaves[:k])]
    # The subtree straddles k, which alignment only allows for start == 0.
    return ref_subtree_proof(0, end - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def _entries(n: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(n)]


@pytest.fixture(scope="module")
def big_tree() -> tuple[MerkleTree, list[bytes]]:
    # One leaf more than MAX_SIZE so that "wrong size" mutations have a real root to use.
    tree = MerkleTree(_entries(MAX_SIZE + 1))
    return tree, [leaf_hash(e) for e in _entries(MAX_SIZE + 1)]


def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 1]) + h[1:]


# ------------------------------------------------------------------------- hashing


def test_hash_primitives() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == MerkleTree().root()
    assert root_from_leaf_hashes([a]) == a


def test_roots_match_reference(big_tree) -> None:
    tree, leaves = big_tree
    for n in range(MAX_SIZE + 1):
        expected = ref_mth(leaves[:n])
        assert root_from_leaf_hashes(leaves[:n]) == expected
        assert tree.root(n) == expected
        small = MerkleTree(_entries(n))
        assert small.size == n and small.root() == expected


def test_append_returns_index_and_leaf_hash_api() -> None:
    t1, t2 = MerkleTree(), MerkleTree()
    for i, e in enumerate(_entries(10)):
        assert t1.append(e) == i
        assert t2.append_leaf_hash(leaf_hash(e)) == i
    assert t1.root() == t2.root() and len(t1) == 10
    with pytest.raises(ValueError):
        t1.append_leaf_hash(b"short")


# ------------------------------------------------------------------ inclusion proofs


def test_inclusion_all_pairs(big_tree) -> None:
    tree, leaves = big_tree
    for n in range(1, MAX_SIZE + 1):
        root = tree.root(n)
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == ref_path(i, leaves[:n])
            verify_inclusion(leaves[i], i, n, proof, root)


def test_inclusion_tampering_rejected(big_tree) -> None:
    tree, leaves = big_tree
    for n in range(1, MAX_SIZE + 1):
        root = tree.root(n)
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            bad = [
                (leaves[(i + 1) % n] if n > 1 else _flip(leaves[i]), i, n, proof, root),
                (leaves[i], i, n, proof, _flip(root)),
                (leaves[i], i, n, proof + [root], root),
                (leaves[i], n, n, proof, root),
                # A proof does not bind the size by itself (the size-3 proof for leaf 0 also
                # "verifies" the size-3 root as size 4), so pair the wrong size with its root.
                (leaves[i], i, n + 1, proof, tree.root(n + 1)),
            ]
            bad += [
                (leaves[i], i, n, proof[:j] + [_flip(p)] + proof[j + 1 :], root)
                for j, p in enumerate(proof)
            ]
            if proof:
                bad.append((leaves[i], i, n, proof[:-1], root))
            for args in bad:
                with pytest.raises(ProofError):
                    verify_inclusion(*args)


def test_inclusion_error_messages() -> None:
    tree = MerkleTree(_entries(5))
    proof, root, leaf = tree.inclusion_proof(2), tree.root(), tree.leaf_hash(2)
    with pytest.raises(ProofError, match="out of range"):
        verify_inclusion(leaf, 5, 5, proof, root)
    with pytest.raises(ProofError, match="wrong proof length"):
        verify_inclusion(leaf, 2, 5, proof[:-1], root)
    with pytest.raises(ProofError, match="root mismatch"):
        verify_inclusion(leaf, 2, 5, proof, _flip(root))
    with pytest.raises(ProofError, match="32 bytes"):
        verify_inclusion(leaf[:9], 2, 5, proof, root)
    with pytest.raises(ValueError):
        tree.inclusion_proof(5)
    with pytest.raises(ValueError):
        tree.inclusion_proof(0, 6)


# ---------------------------------------------------------------- consistency proofs


def test_consistency_all_pairs(big_tree) -> None:
    tree, leaves = big_tree
    for new in range(1, MAX_SIZE + 1):
        new_root = tree.root(new)
        for old in range(1, new + 1):
            proof = tree.consistency_proof(old, new)
            assert proof == ref_subproof(old, leaves[:new], True)
            verify_consistency(old, new, tree.root(old), new_root, proof)


def test_consistency_tampering_rejected(big_tree) -> None:
    tree, _ = big_tree
    for new in range(1, MAX_SIZE + 1):
        new_root = tree.root(new)
        for old in range(1, new + 1):
            old_root = tree.root(old)
            proof = tree.consistency_proof(old, new)
            bad = [
                (old, new, _flip(old_root), new_root, proof),
                (old, new, old_root, _flip(new_root), proof),
                (old, new, old_root, new_root, proof + [new_root]),
                (new, old, new_root, old_root, proof) if old != new else (0, new, b"", b"", []),
                (old, new + 1, old_root, tree.root(new + 1), proof),
            ]
            if old > 1:
                bad.append((old - 1, new, old_root, new_root, proof))
            bad += [
                (old, new, old_root, new_root, proof[:j] + [_flip(p)] + proof[j + 1 :])
                for j, p in enumerate(proof)
            ]
            if proof:
                bad.append((old, new, old_root, new_root, proof[:-1]))
            if old != new:
                bad.append((old, new, new_root, old_root, proof))  # swapped roots
            for args in bad:
                with pytest.raises(ProofError):
                    verify_consistency(*args)


def test_consistency_edge_cases() -> None:
    tree = MerkleTree(_entries(6))
    r3, r6 = tree.root(3), tree.root()
    assert tree.consistency_proof(6) == []
    verify_consistency(6, 6, r6, r6, [])
    with pytest.raises(ProofError, match="proof must be empty"):
        verify_consistency(6, 6, r6, r6, [r3])
    with pytest.raises(ProofError, match="roots differ"):
        verify_consistency(6, 6, r3, r6, [])
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 6, EMPTY_ROOT, r6, [])
    with pytest.raises(ProofError, match="empty tree"):
        verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ProofError, match="old_size 6 > new_size 3"):
        verify_consistency(6, 3, r6, r3, [])
    with pytest.raises(ProofError, match="empty consistency proof"):
        verify_consistency(3, 6, r3, r6, [])
    with pytest.raises(ProofError, match="wrong proof length"):
        verify_consistency(3, 6, r3, r6, tree.consistency_proof(3)[:-1])
    with pytest.raises(ProofError, match="old root mismatch"):
        verify_consistency(3, 6, _flip(r3), r6, tree.consistency_proof(3))
    with pytest.raises(ProofError, match="new root mismatch"):
        verify_consistency(3, 6, r3, _flip(r6), tree.consistency_proof(3))
    for bad_old in (0, 7):
        with pytest.raises(ValueError):
            tree.consistency_proof(bad_old)


def test_proofs_for_past_sizes_stay_valid_after_appends() -> None:
    tree = MerkleTree(_entries(13))
    root13, incl, cons = tree.root(), tree.inclusion_proof(7), tree.consistency_proof(5)
    for e in _entries(30)[13:]:
        tree.append(e)
    assert tree.root(13) == root13
    assert tree.inclusion_proof(7, 13) == incl and tree.consistency_proof(5, 13) == cons
    verify_consistency(13, 30, root13, tree.root(), tree.consistency_proof(13))


# ------------------------------------------------------------------- subtree proofs


def _valid_subtrees(n: int):
    for start in range(n):
        for end in range(start + 1, n + 1):
            width = 1 << (end - start - 1).bit_length()
            if start % width == 0:
                yield start, end


def test_subtree_draft_examples() -> None:
    # Worked examples of the Merkle Tree Certificates draft (tree of 14 leaves).
    leaves = [leaf_hash(e) for e in _entries(14)]
    root = ref_mth(leaves)

    def mth(a: int, b: int) -> bytes:
        return ref_mth(leaves[a:b])

    proof = [mth(0, 4), mth(8, 14)]
    assert ref_subtree_proof(4, 8, leaves) == proof
    verify_subtree_consistency(4, 8, 14, mth(4, 8), root, proof)
    proof = [mth(12, 13), mth(13, 14), mth(8, 12), mth(0, 8)]
    assert ref_subtree_proof(8, 13, leaves) == proof
    verify_subtree_consistency(8, 13, 14, mth(8, 13), root, proof)


def test_subtree_proofs_all_valid_subtrees() -> None:
    for n in range(1, 21):
        leaves = [leaf_hash(e) for e in _entries(n)]
        root = ref_mth(leaves)
        for start, end in _valid_subtrees(n):
            sub = ref_mth(leaves[start:end])
            proof = ref_subtree_proof(start, end, leaves)
            verify_subtree_consistency(start, end, n, sub, root, proof)
            with pytest.raises(ProofError):
                verify_subtree_consistency(start, end, n, _flip(sub), root, proof)
            with pytest.raises(ProofError):
                verify_subtree_consistency(start, end, n, sub, _flip(root), proof)
            for j in range(len(proof)):
                bad = proof[:j] + [_flip(proof[j])] + proof[j + 1 :]
                with pytest.raises(ProofError):
                    verify_subtree_consistency(start, end, n, sub, root, bad)
            for i in range(start, end):
                path = ref_path(i - start, leaves[start:end])
                verify_subtree_inclusion(leaves[i], i, start, end, path, sub)
                with pytest.raises(ProofError):
                    verify_subtree_inclusion(_flip(leaves[i]), i, start, end, path, sub)


def test_subtree_invalid_shapes() -> None:
    leaf = leaf_hash(b"x")
    with pytest.raises(ProofError, match="multiple of 2"):
        verify_subtree_inclusion(leaf, 3, 3, 5, [leaf], leaf)
    with pytest.raises(ProofError, match="start < end"):
        verify_subtree_inclusion(leaf, 1, 1, 1, [], leaf)
    with pytest.raises(ProofError, match="outside subtree"):
        verify_subtree_inclusion(leaf, 0, 1, 2, [], leaf)
    with pytest.raises(ProofError, match="multiple of 4"):
        verify_subtree_consistency(2, 5, 8, leaf, leaf, [])
    verify_subtree_consistency(1, 1, 2, EMPTY_ROOT, leaf, [])  # empty subtree: trivially fine
