"""The audit log: an append-only file of RFC 8785 records, leaves of an RFC 9162 Merkle tree,
with signed checkpoints (C2SP tlog-checkpoint as a C2SP signed note) written into the log itself.

File format: the header line ``kernsight audit log v1\\n``, then one frame per entry:
``uint32 length (big-endian) || uint32 CRC-32 of the record || record``. A record is the
canonical JSON ``{"data": {...}, "index": i, "prev": hex(leaf hash of entry i-1), "time": ns,
"type": "..."}``; its leaf hash is RFC 9162's SHA-256(0x00 || record). A checkpoint is itself an
entry (type ``checkpoint``, ``data.note``) whose signed tree size equals its own index, so the
chain of checkpoints is part of the history it protects; every ``start`` is followed at once by
one.

Crash safety: each entry is one write(2) of a whole frame to an O_APPEND file before `append`
returns, so a kill -9 at any point leaves every acknowledged entry in the file (the page cache
survives the process). fsync runs every `fsync_interval_s` and at every close (0: after every
append, for power-loss durability at a cost in latency). A torn last frame (power loss) is found
at the next open, copied aside and cut off, and the loss is logged as a ``recovered`` entry.

One lock orders all appends: index, prev link, write and tree update happen together, so
concurrent writers get one total order that matches the file order.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import LOG_FILE
from .canon import canonical_entry, sha256_hex
from .merkle import MerkleTree, leaf_hash
from .note import Checkpoint, Signer, load_or_create_signer

HEADER = b"kernsight audit log v1\n"
FRAME = struct.Struct(">II")
MAX_RECORD = 1 << 20  # a record is bounded (arguments are cut before logging)
ZERO = "0" * 64  # prev of entry 0

CHECKPOINT_FILE = "checkpoint"


class AuditError(RuntimeError):
    """The log cannot be appended to (or opened): callers must refuse what they would log."""


def frame(record: bytes) -> bytes:
    return FRAME.pack(len(record), zlib.crc32(record)) + record


def read_frames(data: bytes) -> Iterator[tuple[int, bytes | None, str]]:
    """(offset, record or None, problem) for each frame after the header; a problem stops it.
    problem is "" for a good frame, else "torn" (incomplete last frame), "length", "checksum"."""
    pos = len(HEADER)
    while pos < len(data):
        if pos + FRAME.size > len(data):
            yield pos, None, "torn"
            return
        n, crc = FRAME.unpack_from(data, pos)
        if n > MAX_RECORD:
            yield pos, None, "length"
            return
        end = pos + FRAME.size + n
        if end > len(data):
            yield pos, None, "torn"
            return
        rec = data[pos + FRAME.size : end]
        if zlib.crc32(rec) != crc:
            yield pos, None, "checksum"
            return
        yield pos, rec, ""
        pos = end


class AuditLog:
    """`record(type, data)` appends an entry and returns its index (raises AuditError when it
    cannot, and the caller must then refuse the action it wanted logged)."""

    def __init__(
        self,
        directory: Path,
        signer: Signer,
        *,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 10.0,
        fsync_interval_s: float = 0.1,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / LOG_FILE
        self.signer = signer
        self.origin = signer.name
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.fsync_interval_s = fsync_interval_s
        self.tree = MerkleTree()
        self._offsets = array("Q")
        self._prev = ZERO
        self._lock = threading.Lock()
        self._dirty = False
        self._closed = False
        self.latest: str | None = None  # latest checkpoint note
        self.latest_size = 0
        self._latest_written: str | None = None
        self._last_cp_time = time.monotonic()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise AuditError(f"{self.path} is held by another kernsight process") from None
        torn = self._load()
        self._end = os.lseek(self._fd, 0, os.SEEK_END)
        if torn:
            self.record("recovered", torn)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, name="kernsight-audit",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    # -- opening -------------------------------------------------------------------------------
    def _load(self) -> dict | None:
        """Rebuild the tree from the file; cut off a torn tail (kept in a side file)."""
        st = os.fstat(self._fd)
        if st.st_size == 0:
            os.write(self._fd, HEADER)
            os.fsync(self._fd)
            return None
        with open(self.path, "rb") as f:
            data = f.read()
        if not data.startswith(HEADER):
            raise AuditError(f"{self.path} is not a kernsight audit log (bad header)")
        end = len(HEADER)
        for pos, rec, problem in read_frames(data):
            if problem:
                if problem == "torn" or self._is_last(data, pos):
                    break
                raise AuditError(f"{self.path}: entry {len(self._offsets)} is damaged ({problem}); "
                                 "run `kernsight audit verify` and move the log aside")  # fmt: skip
            assert rec is not None
            self._offsets.append(pos)
            h = leaf_hash(rec)
            self.tree.append_leaf_hash(h)
            self._prev = h.hex()
            if b'"type":"checkpoint"' in rec and (doc := json.loads(rec))["type"] == "checkpoint":
                self.latest, self.latest_size = doc["data"]["note"], doc["index"]
            end = pos + FRAME.size + len(rec)
        if end == len(data):
            return None
        torn = data[end:]
        side = self.dir / f"torn-{time.time_ns()}"
        fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(torn)
        os.ftruncate(self._fd, end)
        os.fsync(self._fd)
        return {"torn_bytes": len(torn), "torn_sha256": sha256_hex(torn), "saved_to": str(side),
                "after_entry": len(self._offsets) - 1}  # fmt: skip

    @staticmethod
    def _is_last(data: bytes, pos: int) -> bool:
        """A bad checksum on the frame that reaches exactly to the end is a torn write."""
        n, _ = FRAME.unpack_from(data, pos)
        return pos + FRAME.size + n == len(data)

    # -- appending -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self._offsets)

    def record(self, type: str, data: dict[str, Any]) -> int:
        """Append one entry; return its index once it is in the file."""
        with self._lock:
            idx = self._append(type, data)
            if self.size - self.latest_size > self.checkpoint_every:
                self._checkpoint()
            return idx

    def _append(self, type: str, data: dict[str, Any]) -> int:
        if self._closed:
            raise AuditError("the audit log is closed")
        idx = len(self._offsets)
        rec = canonical_entry(type, idx, self._prev, time.time_ns(), data)
        if len(rec) > MAX_RECORD:
            raise AuditError(f"audit record of {len(rec)} bytes exceeds {MAX_RECORD}")
        buf = frame(rec)
        pos = self._end
        try:
            n = os.write(self._fd, buf)
            if n != len(buf):  # disk full: never leave a partial frame behind
                raise OSError(f"short write ({n} of {len(buf)} bytes)")
            if self.fsync_interval_s == 0:
                os.fsync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, pos)
            except OSError:
                pass
            raise AuditError(f"cannot append to {self.path}: {e}") from None
        h = leaf_hash(rec)
        self.tree._push(h)  # a fresh 32-byte digest: append_leaf_hash's checks are moot here
        self._offsets.append(pos)
        self._prev = h.hex()
        self._end = pos + len(buf)
        self._dirty = True
        return idx

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint(self) -> str:
        size = self.size
        note = self.signer.sign(Checkpoint(self.origin, size, self.tree.root(size)).body())
        self._append("checkpoint", {"note": note})
        self.latest, self.latest_size = note, size
        self._last_cp_time = time.monotonic()
        return note

    def checkpoint(self) -> tuple[str, int]:
        """Sign the tree as it is now (unless the latest checkpoint already covers every entry
        but itself); returns (note, size)."""
        with self._lock:
            if self.latest is None or self.size > self.latest_size + 1:
                self._checkpoint()
            return self.latest, self.latest_size  # type: ignore[return-value]

    def covering(self, index: int) -> tuple[str, int]:
        """A checkpoint whose tree contains entry `index` (signed now if none does yet)."""
        with self._lock:
            if self.latest is None or self.latest_size <= index:
                self._checkpoint()
            return self.latest, self.latest_size  # type: ignore[return-value]

    def begin(self, data: dict[str, Any]) -> int:
        """The `start` entry, checkpointed at once (the verifier requires it)."""
        with self._lock:
            idx = self._append("start", data)
            self._checkpoint()
            return idx

    # -- reading -------------------------------------------------------------------------------
    def entry(self, index: int) -> bytes:
        with self._lock:
            if not 0 <= index < len(self._offsets):
                raise IndexError(f"no entry {index}; the log has {len(self._offsets)}")
            pos = self._offsets[index]
        n, _ = FRAME.unpack(os.pread(self._fd, FRAME.size, pos))
        return os.pread(self._fd, n, pos + FRAME.size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._lock:
            return self.tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        with self._lock:
            return self.tree.consistency_proof(old_size, new_size)

    def root(self, size: int) -> bytes:
        with self._lock:
            return self.tree.root(size)

    # -- background: fsync, timed checkpoints, the checkpoint file -------------------------------
    def _background(self) -> None:
        tick = min(x for x in (self.fsync_interval_s or 1.0, self.checkpoint_interval_s, 1.0)
                   if x > 0)  # fmt: skip
        while not self._stop.wait(tick):
            try:
                self._tick()
            except (OSError, AuditError):
                pass  # the next append reports the problem to its caller

    def _tick(self) -> None:
        with self._lock:
            if self._closed:
                return
            due = time.monotonic() - self._last_cp_time >= self.checkpoint_interval_s
            if due and self.size > self.latest_size + 1:
                self._checkpoint()
            dirty, self._dirty = self._dirty, False
            note = self.latest
        if dirty:
            os.fsync(self._fd)
        if note is not None and note != self._latest_written:
            self._write_checkpoint_file(note)

    def _write_checkpoint_file(self, note: str) -> None:
        """The latest checkpoint, for people to copy and pin (`audit verify --pinned`)."""
        tmp = self.dir / f".{CHECKPOINT_FILE}.tmp"
        tmp.write_text(note)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.dir / CHECKPOINT_FILE)
        self._latest_written = note

    def close(self, data: dict[str, Any] | None = None) -> None:
        """The `stop` entry (when data is given), a final checkpoint, fsync."""
        if self._closed:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            if data is not None:
                self._append("stop", data)
            if self.latest is None or self.size > self.latest_size + 1:
                self._checkpoint()
            self._closed = True
            os.fsync(self._fd)
            note = self.latest
        if note is not None:
            self._write_checkpoint_file(note)
        os.close(self._fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_origin() -> str:
    """The log's (and its key's) name: kernsight/<hostname>, no spaces or '+'."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", platform.node()) or "host"
    return f"kernsight/{host}"


def open_audit(directory: Path, name: str | None = None, **kw: Any) -> AuditLog:
    """The log in `directory`, its key created there (0600) on first use."""
    signer = load_or_create_signer(Path(directory), name or default_origin())
    return AuditLog(directory, signer, **kw)
