"""files: open, openat, openat2 and creat with their result (bpf/files.bpf.c)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import syscall_names
from .base import COMMON_COLUMNS, HEADER_DTYPE, Column, Source, cstrings, header_columns

PATH_BYTES = 256

RECORD = np.dtype(
    HEADER_DTYPE
    + [
        ("ret", "<i8"),
        ("flags", "<u8"),
        ("mode", "<u4"),
        ("dfd", "<i4"),
        ("nr", "<u4"),
        ("_pad", "<u4"),
        ("path", "u1", PATH_BYTES),
    ]
)


class Files(Source):
    name = "files"
    description = "File opens: one row per open/openat/openat2/creat call, with its result."
    bpf_object = "files"
    btf_struct = "files_event"
    example = (
        "SELECT comm, count(*) AS opens, count(*) FILTER (WHERE ret < 0) AS failed "
        "FROM files "
        "GROUP BY comm "
        "ORDER BY opens DESC LIMIT 10"
    )
    record = RECORD
    ring_bytes = 8 << 20
    skip_self = True  # kernsight's own store writes would otherwise trace themselves
    needs_tracefs = True
    columns = COMMON_COLUMNS + [
        Column("syscall", pa.string(), "open | openat | openat2 | creat"),
        Column("path", pa.string(), f"path as passed by the caller (first {PATH_BYTES - 1} bytes)"),
        Column("dfd", pa.int32(), "directory fd a relative path resolves against (-100: cwd)"),
        Column("flags", pa.uint64(), "open flags (O_WRONLY=1, O_RDWR=2, O_CREAT=0x40, ...)"),
        Column("mode", pa.uint32(), "mode for created files"),
        Column("ret", pa.int64(), "the new fd, or -errno on failure"),
    ]

    def decode(self, rec: np.ndarray, boot_offset_ns: int) -> pa.RecordBatch:
        cols = header_columns(rec, boot_offset_ns)
        cols |= {
            "syscall": syscall_names.lookup(rec["nr"].astype(np.int64)),
            "path": cstrings(rec["path"]),
            "dfd": pa.array(rec["dfd"]),
            "flags": pa.array(rec["flags"]),
            "mode": pa.array(rec["mode"]),
            "ret": pa.array(rec["ret"]),
        }
        return pa.RecordBatch.from_pydict(cols, schema=self.schema())
