"""The offline verifier: needs only the log file, the verifier key and (optionally) a checkpoint
someone kept. It re-derives every leaf from its record, recomputes the tree, checks every
checkpoint's signature and root (so all checkpoints are mutually consistent, which it also checks
with RFC 9162 consistency proofs), and a pinned checkpoint against the log (rollback, fork).

It stops at the first problem and names its index and kind:

  bad-header, torn-tail, bad-length, checksum   the file's framing (bytes edited, cut, torn)
  duplicate-key, non-canonical, bad-record      a record that is not its own RFC 8785 encoding
  deleted, inserted, swapped                    the record's own index is not its position
  chain-break                                   a record's `prev` is not the hash of the one before
  unsigned-checkpoint                           signatures stripped (a downgrade)
  foreign-key, bad-signature, malformed-checkpoint
  root-mismatch                                 a signed head that the records do not match
  missing-checkpoint                            a start entry without its checkpoint, or none at all
  rollback, fork                                the log is behind, or differs from, a pinned head
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .canon import NotCanonical, canonical, check_canonical, parse_strict
from .log import HEADER, ZERO, read_frames
from .merkle import MerkleTree, ProofError, leaf_hash, verify_consistency, verify_inclusion
from .note import Checkpoint, NoteError, Verifier, open_checkpoint

RECEIPT_MARK = "audit receipt:"


@dataclass
class Problem:
    index: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        at = f"index {self.index}" if self.index is not None else "the file"
        return f"TAMPERED at {at}: {self.kind}: {self.detail}"


@dataclass
class Report:
    path: str
    entries: int = 0
    checkpoints: int = 0
    last_checkpoint: int | None = None  # size of the last verified checkpoint
    root: str | None = None
    pinned: int | None = None
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        p = self.problem
        return {
            "ok": self.ok, "path": self.path, "entries": self.entries,
            "checkpoints": self.checkpoints, "last_checkpoint_size": self.last_checkpoint,
            "root": self.root, "pinned_size": self.pinned, "notes": self.notes,
            "index": p.index if p else None, "kind": p.kind if p else None,
            "detail": p.detail if p else None,
        }  # fmt: skip


def _classify_index(records: list[dict], i: int) -> Problem:
    got = records[i].get("index")
    nxt = records[i + 1].get("index") if i + 1 < len(records) else None
    if got == i + 1 and nxt == i:
        return Problem(i, "swapped", f"records {i} and {i + 1} are in each other's place")
    if isinstance(got, int) and got > i:
        return Problem(i, "deleted", f"the record at position {i} says index {got}: "
                       f"{got - i} record(s) removed before it")  # fmt: skip
    if isinstance(got, int) and 0 <= got < i:
        return Problem(got, "inserted", f"the record at position {i} says index {got}: "
                       f"{i - got} record(s) inserted at or after index {got}")  # fmt: skip
    return Problem(i, "bad-record", f"index field {got!r} at position {i}")


def verify_log(path: Path, verifier: Verifier, pinned: str | None = None) -> Report:
    rep = Report(str(path))
    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        rep.problem = Problem(None, "bad-header", "not a kernsight audit log v1 header")
        return rep
    raw: list[bytes] = []
    framing: Problem | None = None
    for _, rec, problem in read_frames(data):
        if problem:
            i = len(raw)
            framing = {
                "torn": Problem(i, "torn-tail", "the last frame is incomplete (a crash during a "
                                "write, or bytes cut off the end)"),
                "length": Problem(i, "bad-length", "impossible record length (bytes edited)"),
                "checksum": Problem(i, "checksum", "record bytes differ from their CRC "
                                    "(bytes edited or corrupted)"),
            }[problem]  # fmt: skip
            break
        raw.append(rec)  # type: ignore[arg-type]
    records: list[dict] = []
    for i, rec in enumerate(raw):
        try:
            obj = check_canonical(rec)
        except NotCanonical as e:
            kind = "duplicate-key" if "duplicate key" in str(e) else "non-canonical"
            rep.problem = Problem(i, kind, str(e))
            return _finish(rep, i)
        if not isinstance(obj, dict) or set(obj) != {"data", "index", "prev", "time", "type"}:
            rep.problem = Problem(i, "bad-record", "not an audit record (fields)")
            return _finish(rep, i)
        records.append(obj)
    tree = MerkleTree()
    prev = ZERO
    last_cp: Checkpoint | None = None
    last_cp_index = -1
    for i, (rec, obj) in enumerate(zip(raw, records, strict=True)):
        if obj["index"] != i:
            rep.problem = _classify_index(records, i)
            return _finish(rep, i)
        if obj["prev"] != prev:
            rep.problem = Problem(
                max(i - 1, 0),
                "chain-break",
                f"record {i} does not chain to "
                f"record {i - 1}: record {i - 1} (or record {i}'s link) altered",
            )
            return _finish(rep, i)  # fmt: skip
        if i and records[i - 1]["type"] == "start" and obj["type"] != "checkpoint":
            rep.problem = Problem(i, "missing-checkpoint", f"the start entry {i - 1} is not "
                                  "followed by its checkpoint (checkpoints removed?)")  # fmt: skip
            return _finish(rep, i)
        if obj["type"] == "checkpoint":
            note = obj["data"].get("note") if isinstance(obj["data"], dict) else None
            try:
                if not isinstance(note, str):
                    raise NoteError("malformed", "checkpoint entry without a note")
                cp = open_checkpoint(note, verifier)
            except NoteError as e:
                kind = {"unsigned": "unsigned-checkpoint", "malformed": "malformed-checkpoint"}
                rep.problem = Problem(i, kind.get(e.kind, e.kind), str(e))
                return _finish(rep, i)
            if cp.origin != verifier.name:
                rep.problem = Problem(i, "foreign-key", f"checkpoint origin {cp.origin!r}")
                return _finish(rep, i)
            if cp.size != i:  # records were added or removed since the previous checkpoint
                kind, n = ("inserted", i - cp.size) if cp.size < i else ("deleted", cp.size - i)
                start = max(last_cp_index, 0)
                rep.problem = Problem(
                    start,
                    kind,
                    f"the checkpoint at position {i} signs size "
                    f"{cp.size}: {n} record(s) {kind} in [{start}, {i})",
                )
                return _finish(rep, i)  # fmt: skip
            if cp.root != tree.root(i):
                start = max(last_cp_index, 0)
                rep.problem = Problem(start, "root-mismatch", f"the signed root of size {i} does "
                                      f"not match the records: some entry in [{start}, {i}) was "
                                      "rewritten")  # fmt: skip
                return _finish(rep, i)
            if last_cp is not None and last_cp.size:
                try:
                    verify_consistency(last_cp.size, cp.size, last_cp.root, cp.root,
                                       tree.consistency_proof(last_cp.size, cp.size))  # fmt: skip
                except ProofError as e:
                    rep.problem = Problem(i, "root-mismatch", f"checkpoints inconsistent: {e}")
                    return _finish(rep, i)
            last_cp, last_cp_index = cp, i
            rep.checkpoints += 1
            rep.last_checkpoint = cp.size
        h = leaf_hash(rec)
        tree.append_leaf_hash(h)
        prev = h.hex()
    rep.entries = len(records)
    rep.root = tree.root().hex()
    if framing is not None:
        rep.problem = framing
        return rep
    if records and last_cp is None:
        rep.problem = Problem(0, "missing-checkpoint", "no signed checkpoint in the log: "
                              "nothing authenticates it (checkpoints stripped?)")  # fmt: skip
        return rep
    if pinned is not None:
        problem = _check_pinned(pinned, verifier, tree, rep)
        if problem:
            rep.problem = problem
            return rep
    uncovered = len(records) - (last_cp_index + 1)
    if uncovered > 0:
        rep.notes.append(f"{uncovered} entries after the last checkpoint are not signed yet (a "
                         "crash, or the log is still being written)")  # fmt: skip
    return rep


def _finish(rep: Report, i: int) -> Report:
    rep.entries = i
    return rep


def _check_pinned(note: str, verifier: Verifier, tree: MerkleTree, rep: Report) -> Problem | None:
    try:
        cp = open_checkpoint(note, verifier)
    except NoteError as e:
        return Problem(None, f"pinned-{e.kind}", f"the pinned checkpoint: {e}")
    rep.pinned = cp.size
    if cp.size > tree.size:
        return Problem(tree.size, "rollback", f"the log holds {tree.size} entries but a kept "
                       f"checkpoint signed {cp.size}: entries from {tree.size} were removed "
                       "(or an older log was put back)")  # fmt: skip
    if cp.size and tree.root(cp.size) != cp.root:
        return Problem(None, "fork", f"the log's tree of size {cp.size} differs from the pinned "
                       "checkpoint: history before it was rewritten")  # fmt: skip
    return None


# -- receipts ----------------------------------------------------------------------------------


def result_digest(doc: dict[str, Any]) -> str:
    """SHA-256 of the RFC 8785 encoding of a tool result as returned, without its receipt:
    {"content": [...], "isError": bool, "structuredContent": {...} | null}."""
    content = [
        c
        for c in doc.get("content") or []
        if not (c.get("type") == "text" and str(c.get("text", "")).startswith(RECEIPT_MARK))
    ]
    sc = doc.get("structuredContent")
    if isinstance(sc, dict) and "receipt" in sc:
        sc = {k: v for k, v in sc.items() if k != "receipt"}
    body = {"content": content, "isError": bool(doc.get("isError")), "structuredContent": sc}
    return hashlib.sha256(canonical(body)).hexdigest()  # fmt: skip


def verify_receipt(
    doc: dict[str, Any], verifier: Verifier, log: Path | None = None
) -> tuple[bool, list[str]]:
    """Check a saved tool result: its digest is the one the log recorded, the entry is in a
    checkpoint the trusted key signed, and (with the log) the log still holds that entry."""
    out: list[str] = []
    receipt = (doc.get("structuredContent") or {}).get("receipt") or doc.get("receipt")
    if not isinstance(receipt, dict):
        return False, ["no receipt in this result"]
    try:
        digest = result_digest(doc)
        if digest != receipt.get("result_sha256"):
            return False, [f"result digest {digest} differs from the receipt's (result altered)"]
        entry_bytes = str(receipt["entry"]).encode()
        entry = check_canonical(entry_bytes)
        if entry.get("type") != "response" or entry["data"].get("result_sha256") != digest:
            return False, ["the receipt's log entry does not record this result"]
        index = entry["index"]
        if index != receipt.get("index"):
            return False, ["the receipt's index and its entry's disagree"]
        cp = open_checkpoint(receipt["checkpoint"], verifier)
        proof = [base64.b64decode(p) for p in receipt["inclusion_proof"]]
        verify_inclusion(leaf_hash(entry_bytes), index, cp.size, proof, cp.root)
        out.append(f"result sha256 {digest} is response entry {index}, included in checkpoint "
                   f"{cp.origin} size {cp.size}, signed by the trusted key")  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        kind = getattr(e, "kind", type(e).__name__)
        return False, [f"receipt does not verify: {kind}: {e}"]
    if log is not None:
        rep = verify_log(log, verifier, pinned=receipt["checkpoint"])
        if not rep.ok:
            return False, out + [f"the log does not hold it: {rep.problem}"]
        raw = [r for _, r, p in read_frames(Path(log).read_bytes()) if not p]
        if raw[index] != entry_bytes:
            return False, out + [f"log entry {index} differs from the receipt's"]
        out.append(f"the log {log} verifies and holds entry {index} ({rep.entries} entries)")
    return True, out


def parse_json_file(path: Path) -> Any:
    return parse_strict(Path(path).read_bytes())
