"""The event store: one append-only table per source, kept as Arrow IPC stream segments.

Why segments and not a DuckDB file: DuckDB lets one process write a database file and no other
process read it meanwhile, yet agent queries must run in separate processes the OS can bound
and kill (see query/pool.py). Arrow IPC streams are written once, read zero-copy through mmap
by any number of query workers (each running DuckDB over them), and a reader can stop cleanly
at the last complete batch of a segment still being written.

Every row carries `batch`, the global sequence number of the capture batch it came in, so an
answer can be traced to the batches behind it. Retention removes whole segments, oldest first,
by age and by total size, and counts the rows it removed as `expired` (never as lost).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SUFFIX = ".arrows"


@dataclass
class Segment:
    path: Path
    rows: int = 0
    bytes: int = 0  # committed bytes: a reader may read this far
    ts_min: int | None = None  # ns since epoch (UTC)
    ts_max: int | None = None
    seq_min: int | None = None
    seq_max: int | None = None
    lost: int = 0  # kernel losses reported while this segment was written
    sealed: bool = False
    opened_at: float = field(default_factory=time.monotonic)

    def overlaps(self, since_ns: int | None, until_ns: int | None) -> bool:
        if self.ts_min is None:
            return False
        return (since_ns is None or self.ts_max >= since_ns) and (
            until_ns is None or self.ts_min < until_ns
        )

    def describe(self) -> dict:
        return {"path": str(self.path), "bytes": self.bytes, "sealed": self.sealed,
                "seq_min": self.seq_min, "seq_max": self.seq_max}  # fmt: skip


@dataclass
class TableState:
    name: str
    schema: pa.Schema  # the source's schema plus `batch`
    segments: list[Segment] = field(default_factory=list)
    writer: pa.ipc.RecordBatchStreamWriter | None = None
    sink: pa.OSFile | None = None
    expired_rows: int = 0
    expired_until_ns: int = 0  # newest timestamp retention has removed
    last_lost_total: int = 0
    next_id: int = 0


def with_batch_column(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field("batch", pa.uint64()))


class Store:
    """Writer side, owned by the process that captures. Readers use `snapshot()` / `read_table`."""

    def __init__(
        self,
        root: Path,
        schemas: dict[str, pa.Schema],
        *,
        max_age_s: float = 3600.0,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 64 << 20,
        segment_seconds: float = 10.0,
        readonly: bool = False,
    ) -> None:
        """readonly: look at a store another process writes (kernsight query on a server's
        state directory): nothing is created, appended or removed."""
        self.root = Path(root)
        self.readonly = readonly
        if not readonly:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self._lock = threading.Lock()
        self.tables: dict[str, TableState] = {}
        for name, schema in schemas.items():
            self.add_table(name, schema)

    # -- tables ------------------------------------------------------------------------------
    def add_table(self, name: str, schema: pa.Schema) -> None:
        """Declare a table; segments a previous run left are kept and sealed."""
        with self._lock:
            if name in self.tables:
                return
            st = TableState(name, with_batch_column(schema))
            d = self.root / name
            if not self.readonly:
                d.mkdir(exist_ok=True, mode=0o700)
            for p in sorted(d.glob(f"*{SUFFIX}")) if d.is_dir() else []:
                seg = _scan_segment(p)
                if seg.rows == 0 and not self.readonly:
                    p.unlink()
                    continue
                st.segments.append(seg)
                st.next_id = max(st.next_id, int(p.stem) + 1)
            if self.readonly and st.segments:
                st.segments[-1].sealed = False  # the writer may still be appending to it
            self.tables[name] = st

    # -- writing -----------------------------------------------------------------------------
    def append(self, table: str, data: pa.RecordBatch, seq: int, lost_total: int = 0) -> None:
        """Append one capture batch (as Arrow, never row by row)."""
        if self.readonly:
            raise PermissionError("this store is open read-only")
        if data.num_rows == 0:
            return
        with self._lock:
            st = self.tables[table]
            batch = pa.RecordBatch.from_arrays(
                [*data.columns, pa.array(np.full(data.num_rows, seq, dtype=np.uint64))],
                schema=st.schema,
            )
            seg = self._open_segment(st)
            st.writer.write_batch(batch)
            st.sink.flush()
            ts = pc.min_max(data.column("ts").cast(pa.int64()))
            lo, hi = ts["min"].as_py(), ts["max"].as_py()
            seg.rows += data.num_rows
            seg.bytes = st.sink.tell()
            seg.ts_min = lo if seg.ts_min is None else min(seg.ts_min, lo)
            seg.ts_max = hi if seg.ts_max is None else max(seg.ts_max, hi)
            seg.seq_min = seq if seg.seq_min is None else seg.seq_min
            seg.seq_max = seq
            seg.lost += max(0, lost_total - st.last_lost_total)
            st.last_lost_total = lost_total
            if seg.bytes >= self.segment_bytes:
                self._seal(st)

    def _open_segment(self, st: TableState) -> Segment:
        seg = st.segments[-1] if st.segments else None
        if seg is not None and not seg.sealed:
            if time.monotonic() - seg.opened_at < self.segment_seconds:
                return seg
            self._seal(st)
        path = self.root / st.name / f"{st.next_id:012d}{SUFFIX}"
        st.next_id += 1
        st.sink = pa.OSFile(str(path), "wb")
        os.chmod(path, 0o600)
        st.writer = pa.ipc.new_stream(st.sink, st.schema)
        seg = Segment(path)
        seg.bytes = st.sink.tell()
        st.segments.append(seg)
        return seg

    def _seal(self, st: TableState) -> None:
        if st.writer is not None:
            st.writer.close()
            st.sink.close()
            st.writer = st.sink = None
        if st.segments:
            seg = st.segments[-1]
            seg.bytes = seg.path.stat().st_size
            seg.sealed = True

    def enforce_retention(self, now_ns: int | None = None) -> dict[str, int]:
        """Drop whole segments older than max_age, then the oldest until under max_bytes.
        Returns the rows expired per table by this call."""
        if self.readonly:
            return {}
        now_ns = now_ns or time.time_ns()
        cutoff = now_ns - int(self.max_age_s * 1e9)
        expired: dict[str, int] = {}
        with self._lock:
            for st in self.tables.values():
                last = st.segments[-1] if st.segments else None
                if last and not last.sealed and last.ts_max is not None and last.ts_max < cutoff:
                    self._seal(st)  # an idle open segment can expire too
            candidates = sorted(
                ((seg.ts_max or 0, st, seg) for st in self.tables.values() for seg in st.segments
                 if seg.sealed),
                key=lambda x: x[0],
            )  # fmt: skip
            total = sum(seg.bytes for st in self.tables.values() for seg in st.segments)
            for ts_max, st, seg in candidates:
                if ts_max >= cutoff and total <= self.max_bytes:
                    break
                st.segments.remove(seg)
                seg.path.unlink(missing_ok=True)
                st.expired_rows += seg.rows
                st.expired_until_ns = max(st.expired_until_ns, seg.ts_max or 0)
                expired[st.name] = expired.get(st.name, 0) + seg.rows
                total -= seg.bytes
        return expired

    # -- reading -----------------------------------------------------------------------------
    def snapshot(
        self,
        tables: list[str] | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> dict[str, list[dict]]:
        """What a reader may read right now: per table, the segments that can hold rows of the
        window (the open one always: its time range still grows), with their committed length."""
        with self._lock:
            return {
                name: [s.describe() for s in st.segments
                       if not s.sealed or s.overlaps(since_ns, until_ns)]
                for name, st in self.tables.items()
                if tables is None or name in tables
            }  # fmt: skip

    def window_meta(
        self, table: str, since_ns: int | None = None, until_ns: int | None = None
    ) -> dict:
        """Rows, kernel losses and retention losses behind a window of one table."""
        with self._lock:
            st = self.tables[table]
            segs = [s for s in st.segments if s.overlaps(since_ns, until_ns)]
            seqs = [s.seq_min for s in segs if s.seq_min] + [s.seq_max for s in segs if s.seq_max]
            return {
                "lost": sum(s.lost for s in segs),
                "expired": st.expired_rows,
                # incomplete when the window reaches back into what retention removed
                "complete": not (
                    st.expired_rows and (since_ns is None or since_ns <= st.expired_until_ns)
                ),
                "batch_min": min(seqs, default=None),
                "batch_max": max(seqs, default=None),
            }

    def stats(self) -> dict[str, dict]:
        with self._lock:
            return {
                n: {
                    "rows": sum(s.rows for s in st.segments),
                    "bytes": sum(s.bytes for s in st.segments),
                    "segments": len(st.segments),
                    "expired": st.expired_rows,
                    "lost": sum(s.lost for s in st.segments),
                }
                for n, st in self.tables.items()
            }

    def close(self) -> None:
        with self._lock:
            for st in self.tables.values():
                self._seal(st)


def read_segment(path: str | Path, length: int | None = None) -> list[pa.RecordBatch]:
    """The complete batches of a segment, zero-copy from an mmap. `length` bounds the read to
    what the writer has committed; without it a torn last batch (a crash, a concurrent write)
    is simply not returned."""
    try:
        mm = pa.memory_map(str(path), "r")
    except (FileNotFoundError, OSError):
        return []  # expired between snapshot and read
    buf = mm.read_buffer(length if length is not None else mm.size())
    out: list[pa.RecordBatch] = []
    try:
        reader = pa.ipc.open_stream(buf)
        for b in reader:
            out.append(b)
    except (pa.ArrowInvalid, OSError, EOFError):
        pass  # torn tail: keep the complete prefix
    return out


def _scan_segment(path: Path) -> Segment:
    seg = Segment(path, sealed=True)
    for b in read_segment(path):
        seg.rows += b.num_rows
        ts = pc.min_max(b.column("ts").cast(pa.int64()))
        lo, hi = ts["min"].as_py(), ts["max"].as_py()
        seg.ts_min = lo if seg.ts_min is None else min(seg.ts_min, lo)
        seg.ts_max = hi if seg.ts_max is None else max(seg.ts_max, hi)
        seqs = pc.min_max(b.column("batch"))
        seg.seq_min = seqs["min"].as_py() if seg.seq_min is None else seg.seq_min
        seg.seq_max = seqs["max"].as_py()
    seg.bytes = path.stat().st_size
    return seg
