"""tracepoint: any classic kernel tracepoint as a table `tp.<category>.<name>`
(bpf/tracepoint.bpf.c: one generic program, attached once per tracepoint with a cookie).

Records arrive in three ring buffers by size class, each at a fixed stride. A batch is grouped
by slot (= attach cookie = tracepoint), and each group is viewed with a numpy structured dtype
built from the tracepoint's tracefs format, so every column is decoded for the whole group at
once: integers of every width, fixed arrays (Arrow fixed-size lists), char arrays and
__data_loc strings (Arrow strings), __data_loc arrays (Arrow lists), pointers (uint64); a
field of any other type becomes a bytes column with a note in its description.
"""

from __future__ import annotations

import functools
import re
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..kernel import tracefs
from ..kernel.bpf import BPFObject, Link, possible_cpus
from ..kernel.build import build
from ..kernel.errors import KernelError
from ..kernel.ringbuf import RingBuffer
from ..kernel.system import check_bpf_privileges
from .base import COMMON_COLUMNS, HEADER_DTYPE, Column, cstrings, header_columns, mmap_pages

PREFIX = "tp."
TABLE_RE = re.compile(r"^tp\.([a-z0-9_]+)\.([a-z0-9_]+)$", re.IGNORECASE)

# Mirrors bpf/tracepoint.bpf.c.
SLOTS = 4096
MAX_LOC = 8
HDR_DTYPE = np.dtype(HEADER_DTYPE + [("slot", "<u4"), ("size", "<u2"), ("kept", "<u2")])
HDR = HDR_DTYPE.itemsize  # 56
RING_MAPS = ("events", "events_m", "events_l")
RECORD_SIZES = (120, 504, 4088)  # ring strides 128, 512, 4096
RING_BYTES = (8 << 20, 4 << 20, 4 << 20)
RAW_MAX = RECORD_SIZES[-1] - HDR  # bytes of a raw record kept at most
F_ACTIVE, F_PID = 1, 2
COALESCE_S = 0.002  # after a read with rows, let the rings fill a little (fewer, bigger batches)
CONF = struct.Struct(f"<IIHH{MAX_LOC}H")

EXTRA_COLUMNS = [
    Column("record_size", pa.uint32(), "true size of the raw tracepoint record, in bytes"),
    Column("truncated", pa.bool_(), f"the record was longer than the {RAW_MAX} bytes kept: "
           "dynamic fields past that are cut short"),
]  # fmt: skip
_RESERVED = {c.name for c in COMMON_COLUMNS + EXTRA_COLUMNS} | {"batch"}

_INT_TYPES = {(1, True): pa.int8(), (2, True): pa.int16(), (4, True): pa.int32(),
              (8, True): pa.int64(), (1, False): pa.uint8(), (2, False): pa.uint16(),
              (4, False): pa.uint32(), (8, False): pa.uint64()}  # fmt: skip


def table_name(category: str, name: str) -> str:
    return f"{PREFIX}{category}.{name}"


def is_table(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_table(table: str) -> tuple[str, str]:
    """`tp.sched.sched_switch` -> ("sched", "sched_switch"); a clear error otherwise."""
    m = TABLE_RE.match(table)
    if not m:
        raise KeyError(
            f"{table!r} is not a tracepoint table name: they are tp.<category>.<name>, e.g. "
            "tp.sched.sched_switch (list them with the list_tracepoints tool or "
            "`kernsight tracepoints FILTER`)"
        )
    cat, name = m[1].lower(), m[2].lower()
    if not tracefs.exists(cat, name):
        raise KeyError(
            f"no tracepoint {cat}:{name} on this kernel (table {table}); list the tracepoints "
            "with the list_tracepoints tool or `kernsight tracepoints FILTER`"
        )
    return cat, name


@functools.cache
def all_tables() -> frozenset[str]:
    return frozenset(table_name(c, n) for c, n in tracefs.available())


def _elem_signed(f: tracefs.Field) -> bool:
    base = f.ctype.split()[-1].removesuffix("[]") if f.kind == tracefs.DYN_ARRAY else f.ctype
    if f.kind == tracefs.ARRAY:
        return f.signed
    return not (base.startswith(("u", "__u")) or "unsigned" in f.ctype)


def _np_int(size: int, signed: bool) -> str:
    return f"<{'i' if signed else 'u'}{size}"


@dataclass
class Plan:
    """How to decode one tracepoint's records: its columns and structured views."""

    table: str
    fmt: tracefs.Format
    columns: list[Column]
    names: dict[str, str]  # field name -> column name (renamed when it clashes)
    schema: pa.Schema
    _views: dict[int, np.dtype] = field(default_factory=dict)

    @classmethod
    def of(cls, category: str, name: str) -> Plan:
        fmt = tracefs.read_format(category, name)
        cols, names, taken = [], {}, {c.lower() for c in _RESERVED}
        for f in fmt.fields:
            col = f.name
            while col.lower() in taken:
                col = "tp_" + col
            taken.add(col.lower())
            names[f.name] = col
            cols.append(Column(col, _arrow_type(f), _describe(f)))
        columns = COMMON_COLUMNS + cols + EXTRA_COLUMNS
        schema = pa.schema([pa.field(c.name, c.type) for c in columns])
        return cls(table_name(category, name), fmt, columns, names, schema)

    def view(self, width: int) -> np.dtype:
        """The structured dtype of a record of this tracepoint in a ring of `width` bytes."""
        dt = self._views.get(width)
        if dt is None:
            names = list(HDR_DTYPE.names) + ["raw"]
            formats = [HDR_DTYPE.fields[n][0] for n in HDR_DTYPE.names] + [("u1", (width - HDR,))]
            offsets = [HDR_DTYPE.fields[n][1] for n in HDR_DTYPE.names] + [HDR]
            for f in self.fmt.fields:
                dyn = f.ctype.startswith(("__data_loc", "__rel_loc")) and f.size == 4
                if f.offset + f.size > width - HDR or (f.kind == tracefs.RAW and not dyn):
                    continue
                if f.kind in (tracefs.INT, tracefs.POINTER):
                    fm = _np_int(f.size, f.signed and f.kind == tracefs.INT)
                elif dyn:
                    fm = "<u4"
                elif f.kind == tracefs.CHARS:
                    fm = ("u1", (f.size,))
                else:  # ARRAY
                    fm = (_np_int(f.elem_size, f.signed), (f.count,))
                names.append("f_" + f.name)
                formats.append(fm)
                offsets.append(HDR + f.offset)
            dt = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                           "itemsize": width})  # fmt: skip
            self._views[width] = dt
        return dt

    def decode(self, rows: np.ndarray, boot_offset_ns: int) -> pa.RecordBatch:
        """rows: (n, width) uint8, every row a record of this tracepoint -> one batch."""
        width = rows.shape[1]
        rec = rows.view(self.view(width)).ravel()
        cols = header_columns(rec, boot_offset_ns)
        kept = rec["kept"].astype(np.int64)
        raw = rec["raw"]
        for f in self.fmt.fields:
            cols[self.names[f.name]] = _decode_field(f, rec, raw, kept)
        cols["record_size"] = pa.array(rec["size"].astype(np.uint32))
        cols["truncated"] = pa.array(rec["size"] > rec["kept"])
        return pa.RecordBatch.from_pydict(cols, schema=self.schema)


def _arrow_type(f: tracefs.Field) -> pa.DataType:
    if f.kind == tracefs.INT:
        return _INT_TYPES[(f.size, f.signed)]
    if f.kind == tracefs.POINTER:
        return pa.uint64()
    if f.kind in (tracefs.CHARS, tracefs.STRING):
        return pa.string()
    if f.kind == tracefs.ARRAY:
        return pa.list_(_INT_TYPES[(f.elem_size, f.signed)], f.count)
    if f.kind == tracefs.DYN_ARRAY:
        return pa.list_(_INT_TYPES[(f.elem_size, _elem_signed(f))])
    return pa.binary()


def _describe(f: tracefs.Field) -> str:
    what = {
        tracefs.INT: f"{'signed' if f.signed else 'unsigned'} {f.size * 8}-bit integer",
        tracefs.POINTER: "pointer, as an unsigned 64-bit integer",
        tracefs.CHARS: f"char[{f.size}] as a string (up to the first NUL)",
        tracefs.STRING: "__data_loc string",
        tracefs.ARRAY: f"fixed array of {f.count} x {f.elem_size * 8}-bit integers",
        tracefs.DYN_ARRAY: f"__data_loc array of {f.elem_size * 8}-bit integers",
        tracefs.RAW: "raw bytes",
    }[f.kind]
    note = f"; {f.note}" if f.note else ""
    return f"{f.ctype} {f.name} (offset {f.offset}, size {f.size}): {what}{note}"


def _gather(raw: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Bytes [start, start+length) of each row into an (n, max length) array."""
    span = int(length.max()) if length.size else 0
    idx = np.minimum(start[:, None] + np.arange(max(span, 1)), raw.shape[1] - 1)
    return np.take_along_axis(raw, idx, axis=1)


def _extent(f: tracefs.Field, rec: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length (within what was kept) of each row's dynamic data."""
    loc = rec["f_" + f.name].astype(np.int64)
    start = loc & 0xFFFF
    if f.rel:
        start = start + f.offset + f.size
    end = np.minimum(start + (loc >> 16), kept)
    start = np.minimum(start, kept)
    return start, np.maximum(end - start, 0)


def _decode_field(f: tracefs.Field, rec: np.ndarray, raw: np.ndarray, kept: np.ndarray) -> pa.Array:
    n = len(rec)
    key = "f_" + f.name
    if f.kind == tracefs.RAW or key not in rec.dtype.names:
        if f.ctype.startswith(("__data_loc", "__rel_loc")) and key in rec.dtype.names:
            start, length = _extent(f, rec, kept)
        else:
            start = np.full(n, f.offset, dtype=np.int64)
            length = np.where(kept >= f.offset + f.size, f.size, 0)
        return _binary(_gather(raw, start, length), length)
    if f.kind in (tracefs.INT, tracefs.POINTER):
        return pa.array(np.ascontiguousarray(rec[key]))
    if f.kind == tracefs.CHARS:
        return cstrings(rec[key])
    if f.kind == tracefs.ARRAY:
        flat = np.ascontiguousarray(rec[key]).ravel()
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), f.count)
    start, length = _extent(f, rec, kept)
    data = _gather(raw, start, length)
    if f.kind == tracefs.STRING:
        return cstrings(data, _first_nul(data, length))
    # DYN_ARRAY: whole elements only
    esize = f.elem_size
    nelem = length // esize
    flat = data[np.arange(data.shape[1]) < (nelem * esize)[:, None]]
    values = np.frombuffer(flat.tobytes(), dtype=_np_int(esize, _elem_signed(f)))
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(nelem, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _first_nul(data: np.ndarray, length: np.ndarray) -> np.ndarray:
    inside = np.arange(data.shape[1]) < length[:, None]
    z = (data == 0) & inside
    return np.where(z.any(axis=1), z.argmax(axis=1), length)


def _binary(data: np.ndarray, length: np.ndarray) -> pa.Array:
    n = len(length)
    flat = data[np.arange(data.shape[1]) < length[:, None]]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(length, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(flat.tobytes())])  # fmt: skip


_plans: dict[str, Plan] = {}
_plans_lock = threading.Lock()


def plan(table: str) -> Plan:
    """The (cached) decoding plan of a tracepoint table; KeyError says how to find names."""
    cat, name = parse_table(table)
    key = table_name(cat, name)
    with _plans_lock:
        p = _plans.get(key)
        if p is None:
            p = _plans[key] = Plan.of(cat, name)
        return p


def schema(table: str) -> pa.Schema:
    return plan(table).schema


@dataclass
class TpCounters:
    produced: int = 0  # passed the pid filter and sampling; the program tried to emit it
    lost: int = 0  # the ring was full
    sampled_out: int = 0  # skipped by the sampling rate
    delivered: int = 0  # rows decoded in user space


@dataclass
class _Attached:
    table: str
    slot: int
    plan: Plan
    link: Link
    started_at: float
    pids: tuple[int, ...] = ()
    sample: int = 1
    delivered: int = 0


class TracepointRunner:
    """The generic program, loaded once, attached to any number of tracepoints.

    attach("tp.sched.sched_switch") / detach(...); read() returns (table, batch) pairs.
    Not thread-safe by itself: the capture engine calls it under its lock."""

    PROGRAM = "tp_generic"

    def __init__(self, boot_offset_ns: int, ring_bytes: tuple[int, ...] = RING_BYTES) -> None:
        check_bpf_privileges()
        self.boot_offset_ns = boot_offset_ns
        self.obj = BPFObject(build("tracepoint"))
        self.rings: list[RingBuffer] = []
        try:
            for m, size in zip(RING_MAPS, ring_bytes, strict=True):
                self.obj.map(m).set_max_entries(mmap_pages(size))
            self.obj.load()
            self.rings = [RingBuffer(self.obj.map(m), rs)
                          for m, rs in zip(RING_MAPS, RECORD_SIZES, strict=True)]  # fmt: skip
        except BaseException:
            self.close()
            raise
        self._conf = self.obj.map("tp_conf")
        self._counts = self.obj.map("tp_counts")
        self._pids = self.obj.map("tp_pids")
        self._ncpu = possible_cpus()
        self.attached: dict[str, _Attached] = {}
        self._by_slot: dict[int, Plan] = {}  # kept after detach until the slot is reused
        self._free: deque[int] = deque(range(SLOTS))  # FIFO: a freed slot is reused last
        self.unattributed = 0  # records whose slot had no plan (counted, never decoded)

    @property
    def fds(self) -> list[int]:
        return [r.fd for r in self.rings]

    def attach(self, table: str, pids: list[int] | None = None, sample: int = 1) -> None:
        p = plan(table)
        if p.table in self.attached:
            return
        if not self._free:
            raise KernelError(f"at most {SLOTS} tracepoints can be captured at once")
        slot = self._free.popleft()
        key = struct.pack("<I", slot)
        self._counts.update(key, bytes(32 * self._ncpu))  # zero every CPU's counters
        self._by_slot[slot] = p
        att = _Attached(p.table, slot, p, None, time.monotonic())  # type: ignore[arg-type]
        self._write_conf(att, pids or [], sample)
        try:
            att.link = self.obj.attach_tracepoint(self.PROGRAM, p.fmt.category, p.fmt.name, slot)
        except BaseException:
            self._conf.update(key, bytes(CONF.size))
            self._free.append(slot)
            raise
        self.attached[p.table] = att

    def set_filter(self, table: str, pids: list[int] | None = None, sample: int = 1) -> None:
        """Keep only events of these pids (process or thread ids; None/[]: all) and one in
        `sample` of them, counted in the kernel per tracepoint."""
        self._write_conf(self.attached[plan(table).table], pids or [], sample)

    def _write_conf(self, att: _Attached, pids: list[int], sample: int) -> None:
        if not isinstance(sample, int) or not 1 <= sample <= 1 << 31:
            raise ValueError(f"sample must be an integer from 1 (every event) up; got {sample!r}")
        if any(not isinstance(p, int) or not 0 <= p < 1 << 32 for p in pids):
            raise ValueError("pids must be integers from 0 to 2^32-1")
        if len(pids) > 1024:
            raise ValueError("at most 1024 pids per tracepoint")
        dyn = [f for f in att.plan.fmt.dynamic][:MAX_LOC]
        locs = [f.offset | (0x8000 if f.rel else 0) for f in dyn] + [0] * (MAX_LOC - len(dyn))
        flags = F_ACTIVE | (F_PID if pids else 0)
        key = struct.pack("<I", att.slot)
        self._conf.update(key, bytes(CONF.size))  # off while the pid set changes
        for old in att.pids:
            self._pids.delete(struct.pack("<Q", att.slot << 32 | old))
        for p in pids:
            self._pids.update(struct.pack("<Q", att.slot << 32 | p), b"\1")
        conf = CONF.pack(flags, sample, att.plan.fmt.fixed_size, len(dyn), *locs)
        self._conf.update(key, conf)
        att.pids, att.sample = tuple(sorted(set(pids))), sample

    def detach(self, *tables: str) -> None:
        gone = [a for t in tables if (a := self.attached.pop(plan(t).table, None)) is not None]
        for att in gone:
            self._conf.update(struct.pack("<I", att.slot), bytes(CONF.size))
        self.obj.detach(*(a.link for a in gone))
        for att in gone:
            for p in att.pids:
                self._pids.delete(struct.pack("<Q", att.slot << 32 | p))
            self._free.append(att.slot)

    def counters(self, table: str) -> TpCounters:
        att = self.attached[plan(table).table]
        raw = self._counts.lookup(struct.pack("<I", att.slot))
        c = np.frombuffer(raw, dtype=np.uint64).reshape(self._ncpu, 4).sum(axis=0)
        return TpCounters(int(c[0]), int(c[1]), int(c[2]), att.delivered)

    def read(self) -> list[tuple[str, pa.RecordBatch]]:
        """One read of each ring: the decoded batches, one per tracepoint and ring."""
        out = []
        for ring in self.rings:
            rows = ring.read()
            if rows is not None and len(rows):
                out += self.decode(rows)
        return out

    def decode(self, rows: np.ndarray) -> list[tuple[str, pa.RecordBatch]]:
        """Records of one ring, (n, width) uint8, of any tracepoints: grouped by slot (a
        stable sort, so each group keeps its order), each group decoded at once."""
        slots = rows[:, 48:52].copy().view("<u4").ravel()
        if (slots == slots[0]).all():
            groups = [(int(slots[0]), rows)]
        else:
            order = np.argsort(slots, kind="stable")
            rows, slots = rows[order], slots[order]
            cut = np.flatnonzero(np.diff(slots)) + 1
            groups = [
                (int(slots[a]), rows[a:b])
                for a, b in zip(np.r_[0, cut], np.r_[cut, len(slots)], strict=True)
            ]
        out = []
        for slot, grp in groups:
            p = self._by_slot.get(slot)
            if p is None:
                self.unattributed += len(grp)
                continue
            batch = p.decode(np.ascontiguousarray(grp), self.boot_offset_ns)
            att = self.attached.get(p.table)
            if att is not None and att.slot == slot:
                att.delivered += batch.num_rows
            out.append((p.table, batch))
        return out

    def pending(self) -> bool:
        return any(r.pending_bytes() > 0 for r in self.rings)

    def close(self) -> None:
        for r in self.rings:
            r.close()
        self.rings = []
        self.obj.close()


# -- discovery: what list_tracepoints / describe_tracepoint / `kernsight tracepoints` show --

PAGE = 200
_NAME_FORMS = re.compile(r"^(?:tp\.)?([a-z0-9_]+)[.:/]([a-z0-9_]+)$", re.IGNORECASE)


def resolve(name: str) -> str:
    """`sched:sched_switch`, `sched/sched_switch` or `tp.sched.sched_switch` -> the table name."""
    m = _NAME_FORMS.match(name.strip()) if isinstance(name, str) else None
    if not m:
        raise KeyError(
            f"{str(name)[:80]!r} is not a tracepoint name: write category:name "
            "(e.g. sched:sched_switch) or the table name tp.sched.sched_switch"
        )
    table = table_name(m[1].lower(), m[2].lower())
    parse_table(table)
    return table


def listing(filter: str | None = None, cursor: int = 0, limit: int = PAGE) -> dict:
    """A page of the tracepoints whose category:name contains `filter` (case-insensitive;
    `*` and `?` are wildcards). next_cursor is None on the last page."""
    if filter is not None and (not isinstance(filter, str) or len(filter) > 128):
        raise ValueError("filter must be a string of at most 128 characters")
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
        raise ValueError("cursor must be a non-negative integer (a next_cursor from before)")
    names = [f"{c}:{n}" for c, n in tracefs.available()]
    if filter:
        pat = filter.lower()
        if any(ch in pat for ch in "*?"):
            import fnmatch

            names = [x for x in names if fnmatch.fnmatchcase(x, pat)]
        else:
            names = [x for x in names if pat in x]
    page = names[cursor : cursor + limit]
    nxt = cursor + limit if cursor + limit < len(names) else None
    return {
        "total": len(names),
        "cursor": cursor,
        "next_cursor": nxt,
        "tracepoints": [{"name": x, "category": x.split(":")[0],
                         "table": table_name(*x.split(":"))} for x in page],
    }  # fmt: skip


def describe(name: str) -> dict:
    """A tracepoint's fields (types, offsets, sizes, signedness), its table's columns and the
    kernel's print format, with a short description where the print format gives one."""
    p = plan(resolve(name))
    f = p.fmt
    return {
        "name": f"{f.category}:{f.name}",
        "table": p.table,
        "id": f.id,
        "description": f.description(),
        "print_fmt": f.print_fmt if len(f.print_fmt) <= 2000 else f.print_fmt[:1997] + "...",
        "fixed_size": f.fixed_size,
        "fields": [{**fl.as_dict(), "column": p.names[fl.name]} for fl in f.fields],
        "columns": [c.name for c in p.columns],
        "example": f"SELECT * FROM {p.table} ORDER BY ts DESC LIMIT 20",
    }
