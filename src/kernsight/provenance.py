"""What the audit log records about the host and the data: start facts, BPF object digests and
one entry per telemetry batch (its Arrow IPC digest, so a stored batch can be matched later)."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from . import __version__
from .capture import Batch
from .kernel.build import build_dir
from .sources import SOURCES


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def object_digest(source: str) -> str | None:
    """SHA-256 of the BPF object a source loads (None when it is not built)."""
    path = build_dir() / f"{SOURCES[source].bpf_object}.bpf.o" if source in SOURCES else None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def file_digests(paths: Iterable[str]) -> dict[str, str | None]:
    """SHA-256 of each file (rule packs): what the detectors ran is on record."""
    out: dict[str, str | None] = {}
    for p in sorted(set(paths)):
        try:
            out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        except OSError:
            out[p] = None
    return out


def host_facts() -> dict[str, Any]:
    objects = {n: object_digest(n) for n in sorted(SOURCES)}
    return {
        "version": __version__, "pid": os.getpid(), "uid": os.getuid(),
        "kernel": platform.release(), "hostname": platform.node(),
        "boot_id": _read("/proc/sys/kernel/random/boot_id"),
        "machine_id": _read("/etc/machine-id"),
        "bpf_objects_sha256": {n: d for n, d in objects.items() if d},
    }  # fmt: skip


def batch_entry(batch: Batch, lost: int) -> dict[str, Any]:
    """Source, global sequence, time range, rows, kernel losses since the previous batch of the
    source, and the SHA-256 of the batch's Arrow IPC bytes."""
    data = batch.data
    lo = hi = None
    if data.num_rows and "ts" in data.schema.names:
        mm = pc.min_max(data.column("ts").cast("int64"))
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
    return {
        "source": batch.source, "seq": batch.seq, "rows": data.num_rows, "ts_min": lo,
        "ts_max": hi, "lost": lost, "lost_total": batch.lost_total, "arrow_sha256": batch.digest,
    }  # fmt: skip
