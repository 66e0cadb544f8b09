"""What a source is: one BPF object, its record layout, its Arrow schema and its decoder.

A source module declares a `Source` subclass; `RunningSource` loads it into the kernel and
turns what its ring buffer holds into Arrow record batches, vectorized with numpy.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from ..kernel.bpf import BPFObject
from ..kernel.build import build
from ..kernel.ringbuf import RingBuffer
from ..kernel.system import check_bpf_privileges, tracefs_root

# Mirrors struct ks_hdr in bpf/common.h.
HEADER_DTYPE = [
    ("ts", "<u8"),
    ("cgroup_id", "<u8"),
    ("pid", "<u4"),
    ("tid", "<u4"),
    ("uid", "<u4"),
    ("gid", "<u4"),
    ("comm", "u1", 16),
]

# Flags and filter maps of struct ks_config (bpf/common.h).
KS_SKIP_SELF = 1 << 0
FILTER_FLAGS = {"pid": 1 << 1, "tid": 1 << 2, "uid": 1 << 3, "comm": 1 << 4, "cgroup_id": 1 << 5,
                "nr": 1 << 6}  # fmt: skip
FILTER_KEYS = {"pid": "<I", "tid": "<I", "uid": "<I", "cgroup_id": "<Q", "nr": "<I"}

TS_TYPE = pa.timestamp("ns", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str


COMMON_COLUMNS = [
    Column("ts", TS_TYPE, "when the event happened (UTC, nanoseconds)"),
    Column("pid", pa.uint32(), "process id (thread group id)"),
    Column("tid", pa.uint32(), "thread id"),
    Column("uid", pa.uint32(), "real user id of the task"),
    Column("comm", pa.string(), "task command name (15 bytes max, set by the traced program)"),
    Column("cgroup_id", pa.uint64(), "cgroup v2 id of the task"),
]


def cstrings(a: np.ndarray, lengths: np.ndarray | None = None) -> pa.Array:
    """Fixed-width NUL-padded byte fields (n, w) -> Arrow strings, without a loop per row.

    Bytes that are not valid UTF-8 are replaced (U+FFFD) row by row, only in that rare case.
    """
    n, w = a.shape
    if lengths is None:
        z = a == 0
        lengths = np.where(z.any(axis=1), z.argmax(axis=1), w)
    lengths = lengths.astype(np.int32, copy=False)
    data = a[np.arange(w) < lengths[:, None]]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    arr = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    if not (data >= 0x80).any():
        return arr.cast(pa.string())  # ASCII: always valid
    try:
        return arr.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([b.decode("utf-8", "replace") for b in arr.to_pylist()], pa.string())


def header_columns(rec: np.ndarray, boot_offset_ns: int) -> dict[str, pa.Array]:
    """The common columns of every table, from the record header."""
    ts = (rec["ts"].astype(np.int64) + boot_offset_ns).view("datetime64[ns]")
    return {
        "ts": pa.array(ts, type=pa.timestamp("ns")).cast(TS_TYPE),
        "pid": pa.array(rec["pid"]),
        "tid": pa.array(rec["tid"]),
        "uid": pa.array(rec["uid"]),
        "comm": cstrings(rec["comm"]),
        "cgroup_id": pa.array(rec["cgroup_id"]),
    }


class Source:
    """Declared once per source module. Subclasses set the class attributes and `decode`."""

    name: ClassVar[str]
    description: ClassVar[str]
    bpf_object: ClassVar[str]
    btf_struct: ClassVar[str]  # the C struct `record` mirrors (checked against BTF in tests)
    example: ClassVar[str]  # a good first query
    record: ClassVar[np.dtype]
    columns: ClassVar[list[Column]]
    ring_bytes: ClassVar[int] = 4 << 20
    skip_self: ClassVar[bool] = False  # drop kernsight's own activity in the kernel
    needs_tracefs: ClassVar[bool] = False  # classic tracepoints are attached through tracefs
    pushdown: ClassVar[tuple[str, ...]] = ("pid", "tid", "uid", "comm", "cgroup_id")
    heavy: ClassVar[bool] = False  # off unless asked for
    polled: ClassVar[bool] = False  # read by polling a map, not from a ring buffer
    coalesce_s: ClassVar[float] = 0.0  # after reading, wait this long before the next read

    _schema: ClassVar[pa.Schema | None] = None

    @classmethod
    def schema(cls) -> pa.Schema:
        if cls.__dict__.get("_schema") is None:  # per subclass, built once
            cls._schema = pa.schema([pa.field(c.name, c.type) for c in cls.columns])
        return cls._schema

    def decode(self, rec: np.ndarray, boot_offset_ns: int) -> pa.RecordBatch:
        """Records from the ring (a structured array of `record`) -> one record batch."""
        raise NotImplementedError

    def configure(self, obj: BPFObject) -> None:
        """Fill the object's maps once it is loaded, before its programs attach."""

    def poll(self, running: RunningSource) -> pa.RecordBatch | None:
        """For polled sources: read the kernel's aggregate and return what is new."""
        raise NotImplementedError

    def programs(self) -> set[str] | None:
        """The programs of the object to load (None: all), e.g. only the tracepoints this
        kernel has."""
        return None

    def attach(self, running: RunningSource) -> None:
        """Attach the loaded programs; tracepoint sources attach by section name."""
        running.obj.attach_all()

    def detach(self, running: RunningSource) -> None:
        """Before the object closes (which destroys every link it owns)."""

    def status(self, running: RunningSource) -> dict | None:
        """Extra counters shown with the source's delivered/lost (status, capture summary)."""
        return None


@dataclass
class Counters:
    produced: int = 0  # what the kernel tried to emit (counted in the kernel)
    lost: int = 0  # what the kernel could not emit (ring full / map full)
    delivered: int = 0  # rows that reached user space


@dataclass
class RunningSource:
    """A source loaded and attached; `read()` returns the next record batch or None."""

    source: Source
    boot_offset_ns: int
    ring_bytes: int | None = None
    filters: dict[str, list] = field(default_factory=dict)
    obj: BPFObject = field(init=False)
    ring: RingBuffer | None = field(init=False, default=None)
    delivered: int = field(init=False, default=0)
    state: dict = field(init=False, default_factory=dict)  # a polled source's memory

    def __post_init__(self) -> None:
        self.started_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        check_bpf_privileges()
        if self.source.needs_tracefs:
            tracefs_root()
        self.obj = BPFObject(build(self.source.bpf_object), autoload=self.source.programs())
        try:
            self.obj.map("events").set_max_entries(
                mmap_pages(self.ring_bytes or self.source.ring_bytes)
            )
            self.obj.load()
            self.source.configure(self.obj)
            self.set_filters(self.filters)
            self.source.attach(self)
            if not self.source.polled:
                self.ring = RingBuffer(self.obj.map("events"), self.source.record.itemsize)
        except BaseException:
            try:
                self.source.detach(self)
            finally:
                self.obj.close()
            raise

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def fd(self) -> int | None:
        return self.ring.fd if self.ring else None

    def set_filters(self, filters: dict[str, list]) -> None:
        """Replace the in-kernel filters: {column: [allowed values]}; {} keeps everything."""
        unknown = set(filters) - set(self.source.pushdown)
        if unknown:
            raise ValueError(f"source {self.name} cannot filter on {sorted(unknown)} in the kernel")
        flags = KS_SKIP_SELF if self.source.skip_self else 0
        for col in self.source.pushdown:
            fmap = self.obj.map(f"filter_{'cgroup' if col == 'cgroup_id' else col}")
            fmap.clear()
            for v in filters.get(col, []):
                key = (
                    v.encode()[:15].ljust(16, b"\0")
                    if col == "comm"
                    else struct.pack(FILTER_KEYS[col], v)
                )
                fmap.update(key, b"\1")
            if col in filters:
                flags |= FILTER_FLAGS[col]
        self.obj.map("ks_config_map").update(
            struct.pack("<I", 0), struct.pack("<II", flags, os.getpid())
        )
        self.filters = dict(filters)

    def counters(self) -> Counters:
        m = self.obj.map("counters")
        return Counters(
            produced=m.percpu_sum_u64(struct.pack("<I", 0)),
            lost=m.percpu_sum_u64(struct.pack("<I", 1)),
            delivered=self.delivered,
        )

    def read(self) -> pa.RecordBatch | None:
        if self.source.polled:
            return self.source.poll(self)
        assert self.ring is not None
        rec = self.ring.read()
        if rec is None or len(rec) == 0:
            return None
        batch = self.source.decode(rec.view(self.source.record).ravel(), self.boot_offset_ns)
        self.delivered += batch.num_rows
        return batch

    def close(self) -> None:
        if self.ring:
            self.ring.close()
            self.ring = None
        try:
            self.source.detach(self)
        finally:
            self.obj.close()


def mmap_pages(nbytes: int) -> int:
    """Ring sizes must be a power of two and a multiple of the page size."""
    page = os.sysconf("SC_PAGE_SIZE")
    n = max(page, 1 << (max(nbytes, 1) - 1).bit_length())
    return n
