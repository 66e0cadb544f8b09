"""syscall_stats: syscalls counted in the kernel per (process, number), read as deltas
(bpf/syscall_stats.bpf.c). Cheap: only aggregates cross into user space."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from . import syscall_names
from .base import COMMON_COLUMNS, TS_TYPE, Column, Source, cstrings

if TYPE_CHECKING:
    from .base import RunningSource

KEY = np.dtype([("pid", "<u4"), ("nr", "<u4")])
VALUE = np.dtype(
    [
        ("count", "<u8"),
        ("errors", "<u8"),
        ("total_ns", "<u8"),
        ("max_ns", "<u8"),
        ("cgroup_id", "<u8"),
        ("uid", "<u4"),
        ("tid", "<u4"),
        ("comm", "u1", 16),
    ]
)
_SUMMED = ("count", "errors", "total_ns")


class SyscallStats(Source):
    name = "syscall_stats"
    description = (
        "Syscall counts aggregated in the kernel per (pid, syscall): one row per pair that made "
        "calls during each interval (about 1 s), with the calls, errors and latency of that "
        "interval. Cheap enough to leave on."
    )
    bpf_object = "syscall_stats"
    btf_struct = "stats_value"
    example = (
        "SELECT comm, name, sum(count) AS calls, sum(errors) AS errors "
        "FROM syscall_stats "
        "GROUP BY comm, name "
        "ORDER BY calls DESC LIMIT 20"
    )
    record = VALUE  # not streamed; the map is read instead
    ring_bytes = 4096
    skip_self = True
    polled = True
    poll_interval_s = 1.0
    pushdown = ("pid", "tid", "uid", "comm", "cgroup_id", "nr")
    columns = COMMON_COLUMNS + [
        Column("nr", pa.uint32(), "syscall number"),
        Column("name", pa.string(), "syscall name"),
        Column("count", pa.uint64(), "calls during the interval ending at ts"),
        Column("errors", pa.uint64(), "calls that returned -errno during the interval"),
        Column("total_latency_ns", pa.uint64(), "summed latency of those calls"),
        Column("max_latency_ns", pa.uint64(), "largest single-call latency since first seen"),
        Column("interval_ns", pa.uint64(), "length of the interval the counts cover"),
    ]

    def poll(self, rs: RunningSource) -> pa.RecordBatch | None:
        """Read the whole map (batch lookups), diff it against the last read, and forget
        processes that have exited once their last counts are out."""
        stats = rs.obj.map("stats")
        keys, vals = stats.dump(KEY, VALUE)
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        st = rs.state
        last_ts = st.get("ts", rs.started_ns)
        k = keys.view("<u8")
        order = np.argsort(k)
        k, vals, keys = k[order], vals[order], keys[order]
        delta = {f: vals[f].copy() for f in _SUMMED}
        pk, pv = st.get("keys"), st.get("vals")
        if pk is not None and len(pk):
            pos = np.searchsorted(pk, k)
            pos_c = np.minimum(pos, len(pk) - 1)
            seen = pk[pos_c] == k
            for f in _SUMMED:
                delta[f][seen] -= pv[f][pos_c[seen]]
        st["keys"], st["vals"], st["ts"] = k, vals, now
        rs.delivered += int(delta["count"].sum())

        active = delta["count"] > 0
        idle_pids = np.unique(keys["pid"][~active])
        gone = [p for p in idle_pids.tolist() if not os.path.exists(f"/proc/{p}")]
        if gone:
            dead = np.isin(keys["pid"], gone) & ~active
            for key in keys[dead]:
                stats.delete(key.tobytes())
            keep = ~dead
            st["keys"], st["vals"] = k[keep], vals[keep]

        if not active.any():
            return None
        v, kk = vals[active], keys[active]
        n = len(v)
        ts = np.full(n, now + rs.boot_offset_ns, dtype=np.int64).view("datetime64[ns]")
        cols = {
            "ts": pa.array(ts, pa.timestamp("ns")).cast(TS_TYPE),
            "pid": pa.array(kk["pid"]),
            "tid": pa.array(v["tid"]),
            "uid": pa.array(v["uid"]),
            "comm": cstrings(v["comm"]),
            "cgroup_id": pa.array(v["cgroup_id"]),
            "nr": pa.array(kk["nr"]),
            "name": syscall_names.lookup(kk["nr"].astype(np.int64)),
            "count": pa.array(delta["count"][active]),
            "errors": pa.array(delta["errors"][active]),
            "total_latency_ns": pa.array(delta["total_ns"][active]),
            "max_latency_ns": pa.array(v["max_ns"]),
            "interval_ns": pa.array(np.full(n, now - last_ts, dtype=np.uint64)),
        }
        return pa.RecordBatch.from_pydict(cols, schema=self.schema())
