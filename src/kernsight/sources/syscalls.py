"""syscalls: every syscall, entry paired with exit (bpf/syscalls.bpf.c). Heavy: opt-in."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import syscall_names
from .base import COMMON_COLUMNS, HEADER_DTYPE, Column, Source, header_columns

RECORD = np.dtype(
    HEADER_DTYPE
    + [
        ("args", "<u8", 6),
        ("ret", "<i8"),
        ("latency_ns", "<u8"),
        ("nr", "<u4"),
        ("_pad", "<u4"),
    ]
)


class Syscalls(Source):
    name = "syscalls"
    description = (
        "Every system call (except kernsight's own): number, name, six raw arguments, return "
        "value and latency. Heavy: millions of rows per second on a busy host; prefer "
        "syscall_stats, or filter by pid/comm/nr."
    )
    bpf_object = "syscalls"
    btf_struct = "syscall_event"
    example = (
        "SELECT name, count(*) AS calls, avg(latency_ns) AS avg_ns "
        "FROM syscalls "
        "WHERE pid = 1234 "
        "GROUP BY name "
        "ORDER BY calls DESC"
    )
    record = RECORD
    ring_bytes = 32 << 20
    skip_self = True
    heavy = True
    coalesce_s = 0.003  # ~6k records at 2M/s: bigger batches, far fewer of them
    pushdown = ("pid", "tid", "uid", "comm", "cgroup_id", "nr")
    columns = COMMON_COLUMNS + [
        Column("nr", pa.uint32(), "syscall number (x86-64 numbering)"),
        Column("name", pa.string(), "syscall name"),
        *[
            Column(f"arg{i}", pa.uint64(), f"raw argument {i} (pointers as numbers)")
            for i in range(6)
        ],
        Column("ret", pa.int64(), "return value (-4095..-1 is -errno)"),
        Column("latency_ns", pa.uint64(), "time from entry to exit"),
    ]

    def decode(self, rec: np.ndarray, boot_offset_ns: int) -> pa.RecordBatch:
        cols = header_columns(rec, boot_offset_ns)
        nr = rec["nr"]
        cols["nr"] = pa.array(nr)
        cols["name"] = syscall_names.lookup(nr.astype(np.int64))
        args = rec["args"]
        for i in range(6):
            cols[f"arg{i}"] = pa.array(np.ascontiguousarray(args[:, i]))
        cols["ret"] = pa.array(rec["ret"])
        cols["latency_ns"] = pa.array(rec["latency_ns"])
        return pa.RecordBatch.from_pydict(cols, schema=self.schema())
