"""A query worker: a separate process that runs one validated query at a time with DuckDB.

The operating system bounds it (RLIMIT_DATA caps its private memory, the parent kills it on
timeout), because DuckDB's own limits do not bound every built-in. The worker holds one
in-memory DuckDB, hardened once (settings are database-wide and then locked); each request runs
on a new connection (cursor) of it, where the store's segments are registered zero-copy as
temporary views. Temp tables, views, macros, variables, prepared statements, search_path and
transactions belong to a connection, so none survives the request; anything a request managed
to create in the shared catalog retires the worker.
"""

from __future__ import annotations

import os
import resource
import time
import traceback
from multiprocessing.connection import Connection

import pyarrow as pa

from ..store.store import read_segment


def _ts_literal(ns: int) -> str:
    return f"make_timestamp_ns({int(ns)})::TIMESTAMPTZ_NS"


class _SegmentCache:
    """Sealed segments never change: keep their (zero-copy, mmapped) batches across requests."""

    def __init__(self) -> None:
        self._sealed: dict[str, list[pa.RecordBatch]] = {}

    def batches(self, seg: dict) -> list[pa.RecordBatch]:
        if not seg["sealed"]:
            return read_segment(seg["path"], seg["bytes"])
        got = self._sealed.get(seg["path"])
        if got is None:
            got = self._sealed[seg["path"]] = read_segment(seg["path"])
        return got

    def forget_expired(self) -> None:
        for p in list(self._sealed):
            if not os.path.exists(p):
                del self._sealed[p]  # retention removed it: let the mapping go


def run_query(db, req: dict, cache: _SegmentCache) -> dict:
    import duckdb

    t0 = time.perf_counter()
    con = db.cursor()
    try:
        for i, (name, info) in enumerate(req["tables"].items()):
            schema = pa.ipc.read_schema(pa.py_buffer(info["schema"]))
            batches = [b for seg in info["segments"] for b in cache.batches(seg)]
            raw = f"__kernsight_raw_{i}"
            con.register(raw, pa.Table.from_batches(batches, schema=schema))
            cond = []
            if req.get("since_ns") is not None:
                cond.append(f"ts >= {_ts_literal(req['since_ns'])}")
            if req.get("until_ns") is not None:
                cond.append(f"ts < {_ts_literal(req['until_ns'])}")
            where = f" WHERE {' AND '.join(cond)}" if cond else ""
            quoted = '"' + name.replace('"', '""') + '"'
            con.execute(f"CREATE TEMP VIEW {quoted} AS SELECT * FROM {raw}{where}")
        reader = con.sql(req["sql"]).to_arrow_reader(1024)
        limit, max_bytes = req["limit"], req["max_bytes"]
        out: list[pa.RecordBatch] = []
        rows = size = 0
        truncated = False
        for b in reader:
            if rows + b.num_rows > limit:
                b = b.slice(0, limit - rows)
                truncated = True
            if size + b.nbytes > max_bytes:
                b = _rows_that_fit(b, max_bytes - size)
                truncated = True
            out.append(b)
            rows += b.num_rows
            size += b.nbytes
            if truncated:
                break
        if not truncated and rows >= limit:
            truncated = next(iter(reader), None) is not None
        table = pa.Table.from_batches(out, schema=reader.schema)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        cache.forget_expired()
        return {
            "ok": True,
            "arrow": sink.getvalue().to_pybytes(),
            "truncated": truncated,
            "bytes": size,
            "elapsed_ms": (time.perf_counter() - t0) * 1000,
        }
    except duckdb.OutOfMemoryException as e:
        return {"ok": False, "kind": "memory", "error": str(e)}
    except duckdb.Error as e:
        return {"ok": False, "kind": "sql", "error": str(e)}
    except MemoryError:
        return {"ok": False, "kind": "memory", "error": "the query exceeded the memory cap"}
    finally:
        con.close()


def _rows_that_fit(b: pa.RecordBatch, room: int) -> pa.RecordBatch:
    """The longest prefix of b whose bytes fit in room (bisection on slice sizes)."""
    lo, hi = 0, b.num_rows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if b.slice(0, mid).nbytes <= room:
            lo = mid
        else:
            hi = mid - 1
    return b.slice(0, lo)


_PERSISTENT = """
SELECT (SELECT count(*) FROM duckdb_tables() WHERE NOT temporary)
     + (SELECT count(*) FROM duckdb_views() WHERE NOT temporary AND NOT internal)
     + (SELECT count(*) FROM duckdb_functions() WHERE function_type LIKE '%macro%' AND NOT internal)
     + (SELECT count(*) FROM duckdb_sequences())
"""


def main(conn: Connection, memory_bytes: int, threads: int = 1) -> None:
    """Worker process entry point: serve requests from the pipe until it closes."""
    os.nice(10)  # on a small host, capture (the kernel's ring buffers) wins the CPU
    # Private writable memory only: zero-copy read-only mappings of the store do not count.
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    import duckdb

    from .sandbox import harden

    db = duckdb.connect(":memory:")
    memory_limit = f"{max(64, (memory_bytes >> 20) // 2)}MB"
    harden(db, memory_limit=memory_limit, threads=threads)
    cache = _SegmentCache()
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        try:
            resp = run_query(db, req, cache)
        except Exception as e:  # report, keep serving
            resp = {"ok": False, "kind": "internal", "error": f"{type(e).__name__}: {e}",
                    "trace": traceback.format_exc(limit=3)}  # fmt: skip
        try:
            conn.send(resp)
            # After answering (off the caller's path): did anything persist in the shared
            # catalog? The pool reuses this worker only on a clean report.
            clean = db.execute(_PERSISTENT).fetchone()[0] == 0
            conn.send(clean)
        except (EOFError, OSError, MemoryError):
            return
        if not clean:
            return


if __name__ == "__main__":
    import sys

    main(Connection(int(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]))
