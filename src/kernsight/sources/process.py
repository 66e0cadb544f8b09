"""process: exec, fork and exit of processes (bpf/process.bpf.c)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .base import COMMON_COLUMNS, HEADER_DTYPE, Column, Source, cstrings, header_columns

ARGV_MAX = 512  # bytes of the argument area kept, NULs included (ARGV_MAX in the BPF code)
ARGV_KEPT = ARGV_MAX - 1  # the last byte is always a terminator
KINDS = np.array(["", "exec", "fork", "exit"], dtype=object)

RECORD = np.dtype(
    HEADER_DTYPE
    + [
        ("ppid", "<u4"),
        ("exit_code", "<i4"),
        ("argv_len", "<u4"),
        ("kind", "u1"),
        ("stdio_sockets", "u1"),
        ("exe_memfd", "u1"),
        ("exit_signal", "u1"),
        ("parent_comm", "u1", 16),
        ("exe_fstype", "u1", 16),
        ("filename", "u1", 256),
        ("argv", "u1", ARGV_MAX),
        ("exe_seals", "<u4"),
        ("ld_preload", "u1"),
        ("_pad", "u1", 3),
        ("exe_path", "u1", 256),
    ]
)


class Process(Source):
    name = "process"
    description = (
        "Process lifecycle: one row per exec, fork (new process, not thread) and exit "
        "(when the last thread of a process exits)."
    )
    bpf_object = "process"
    btf_struct = "process_event"
    example = (
        "SELECT ts, pid, ppid, comm, argv "
        "FROM process "
        "WHERE event = 'exec' "
        "ORDER BY ts DESC LIMIT 20"
    )
    record = RECORD
    ring_bytes = 4 << 20
    columns = COMMON_COLUMNS + [
        Column("event", pa.string(), "exec | fork | exit"),
        Column("ppid", pa.uint32(), "parent process id (for fork: the process that forked)"),
        Column("parent_comm", pa.string(), "parent's command name"),
        Column("gid", pa.uint32(), "real group id"),
        Column("filename", pa.string(), "exec: the path as passed to execve (may be relative)"),
        Column(
            "argv",
            pa.string(),
            f"exec: arguments joined by spaces, first {ARGV_KEPT} bytes of the argument area",
        ),
        Column("argv_truncated", pa.bool_(), "exec: argv was longer than the bytes kept"),
        Column("exit_code", pa.int32(), "exit: exit status (0-255)"),
        Column("exit_signal", pa.int32(), "exit: signal that killed the process, 0 if none"),
        Column("stdio_sockets", pa.uint8(), "exec: bit i set when fd i (0,1,2) is a socket"),
        Column("exe_memfd", pa.bool_(), "exec: the executed file is an unlinked memfd"),
        Column("exe_fstype", pa.string(), "exec: filesystem type of the executed file (tmpfs...)"),
        Column(
            "exe_memfd_seals",
            pa.uint32(),
            "exec: F_SEAL_* bits of the executed memfd (8 = F_SEAL_WRITE: contents immutable)",
        ),
        Column(
            "exe_path",
            pa.string(),
            "exec: the executed file (for a script: its interpreter), absolute path resolved "
            "in the kernel",
        ),
        Column(
            "ld_preload",
            pa.bool_(),
            "exec: the new environment sets LD_PRELOAD to a non-empty value (first 256 env "
            "strings scanned)",
        ),
    ]

    def decode(self, rec: np.ndarray, boot_offset_ns: int) -> pa.RecordBatch:
        cols = header_columns(rec, boot_offset_ns)
        argv_len = rec["argv_len"].astype(np.int64)
        kept = np.minimum(argv_len, ARGV_KEPT)
        # The area is NUL-separated and NUL-terminated: drop the final NUL, join with spaces.
        full = argv_len <= ARGV_KEPT
        shown = np.where(full & (kept > 0), kept - 1, kept)
        argv = rec["argv"].copy()
        argv[(argv == 0) & (np.arange(ARGV_MAX) < shown[:, None])] = 0x20
        cols |= {
            "event": pa.array(KINDS[np.minimum(rec["kind"], 3)], pa.string()),
            "ppid": pa.array(rec["ppid"]),
            "parent_comm": cstrings(rec["parent_comm"]),
            "gid": pa.array(rec["gid"]),
            "filename": cstrings(rec["filename"]),
            "argv": cstrings(argv, shown),
            "argv_truncated": pa.array(argv_len > ARGV_KEPT),
            "exit_code": pa.array(rec["exit_code"]),
            "exit_signal": pa.array(rec["exit_signal"].astype(np.int32)),
            "stdio_sockets": pa.array(rec["stdio_sockets"]),
            "exe_memfd": pa.array(rec["exe_memfd"] != 0),
            "exe_fstype": cstrings(rec["exe_fstype"]),
            "exe_memfd_seals": pa.array(rec["exe_seals"]),
            "exe_path": cstrings(rec["exe_path"]),
            "ld_preload": pa.array(rec["ld_preload"] != 0),
        }
        return pa.RecordBatch.from_pydict(cols, schema=self.schema())
