"""The capture engine: runs sources, waits on their ring buffers with epoll, and hands every
record batch, numbered in one global sequence, to the subscribers (store, detectors, views).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from .kernel.system import boot_offset_ns
from .sources import SOURCES, RunningSource
from .sources import tracepoint as tp


@dataclass(frozen=True)
class Batch:
    source: str
    seq: int  # global, strictly increasing across sources
    data: pa.RecordBatch
    lost_total: int  # the source's kernel-side lost count when this batch was read

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the batch's Arrow IPC stream bytes (its provenance fingerprint)."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.data.schema) as w:
            w.write_batch(self.data)
        return hashlib.sha256(sink.getvalue()).hexdigest()


@dataclass
class SourceStats:
    name: str
    produced: int
    delivered: int
    lost: int
    batches: int
    started_at: float
    filters: dict = field(default_factory=dict)
    extra: dict | None = None  # source-specific counters (e.g. packets per interface)

    @property
    def rate(self) -> float:
        """Rows per second since the source started."""
        return self.delivered / max(time.monotonic() - self.started_at, 1e-6)


Subscriber = Callable[[Batch], None]


class Capture:
    """with Capture() as cap: cap.subscribe(fn); cap.start("process"); ...

    options: per source, keyword arguments for its constructor (e.g. packets' interfaces).
    """

    # A busy ring is read at most this many batches per turn, so one source cannot starve another.
    MAX_BATCHES_PER_TURN = 8

    def __init__(self, options: dict[str, dict] | None = None) -> None:
        self.options = dict(options or {})
        self.boot_offset_ns = boot_offset_ns()
        self._running: dict[str, RunningSource] = {}
        self._meta: dict[str, dict] = {}
        self._subs: list[Subscriber] = []
        self._seq = itertools.count(1)
        self._lock = threading.RLock()
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.errors: list[str] = []
        self.final: dict[str, SourceStats] = {}  # last stats of each stopped source
        self._tp: tp.TracepointRunner | None = None  # tp.* tables: one generic program

    # -- sources -------------------------------------------------------------------------
    def start(
        self, name: str, *, ring_bytes: int | None = None, filters: dict | None = None
    ) -> None:
        if tp.is_table(name):
            return self._start_tp(name, filters or {})
        if name not in SOURCES:
            raise KeyError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
        with self._lock:
            if name in self._running:
                return
            src = SOURCES[name](**self.options.get(name, {}))
            rs = RunningSource(src, self.boot_offset_ns, ring_bytes, filters or {})
            self._running[name] = rs
            self._meta[name] = {"batches": 0, "started_at": time.monotonic(), "next_poll": 0.0}
            if rs.fd is not None:
                self._epoll.register(rs.fd, select.EPOLLIN)
        self._wake()

    def _start_tp(self, name: str, filters: dict) -> None:
        """Attach the generic program to one more tracepoint (loading it on first use).
        filters: {"pid": [...], "sample": N}, pushed into the kernel for this tracepoint."""
        with self._lock:
            if self._tp is None:
                self._tp = tp.TracepointRunner(self.boot_offset_ns)
                for fd in self._tp.fds:
                    self._epoll.register(fd, select.EPOLLIN)
            if name in self._tp.attached:
                return
            self._tp.attach(name, filters.get("pid"), filters.get("sample", 1))
            self._meta[name] = {"batches": 0, "started_at": time.monotonic()}
        self._wake()

    def _stop_tp(self, name: str) -> None:
        assert self._tp is not None
        self._drain_tp(final=True)
        self.final[name] = self.stats()[name]
        self._tp.detach(name)
        self._drain_tp(final=True)  # what was in flight when it detached
        if not self._tp.attached:
            for fd in self._tp.fds:
                self._epoll.unregister(fd)
            self._tp.close()
            self._tp = None

    def stop(self, name: str) -> None:
        with self._lock:
            if self._tp is not None and name in self._tp.attached:
                return self._stop_tp(name)
            rs = self._running.get(name)
            if rs is None:
                return
            self._drain(rs, final=True)
            self.final[name] = self.stats()[name]
            if rs.fd is not None:
                self._epoll.unregister(rs.fd)
            del self._running[name]
            rs.close()

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running) + (list(self._tp.attached) if self._tp else [])

    def set_filters(self, name: str, filters: dict) -> None:
        with self._lock:
            if self._tp is not None and name in self._tp.attached:
                return self._tp.set_filter(name, filters.get("pid"), filters.get("sample", 1))
            self._running[name].set_filters(filters)

    def stats(self) -> dict[str, SourceStats]:
        with self._lock:
            out = {}
            for name, rs in self._running.items():
                c = rs.counters()
                m = self._meta[name]
                out[name] = SourceStats(
                    name, c.produced, c.delivered, c.lost, m["batches"], m["started_at"],
                    dict(rs.filters), rs.source.status(rs),
                )  # fmt: skip
            for name, att in self._tp.attached.items() if self._tp else ():
                c = self._tp.counters(name)
                m = self._meta[name]
                filters = {"pid": list(att.pids)} if att.pids else {}
                if att.sample > 1:
                    filters["sample"] = att.sample
                extra = {"sampled_out": c.sampled_out} if att.sample > 1 else None
                out[name] = SourceStats(name, c.produced, c.delivered, c.lost, m["batches"],
                                        m["started_at"], filters, extra)  # fmt: skip
            return out

    def next_seq(self) -> int:
        """A number in the global batch sequence, for a batch made outside capture (alerts)."""
        return next(self._seq)

    # -- consumers -----------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> None:
        with self._lock:
            self._subs.append(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        with self._lock:
            if fn in self._subs:
                self._subs.remove(fn)

    # -- the loop ------------------------------------------------------------------------
    def run_in_thread(self) -> Capture:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="kernsight-capture", daemon=True
            )
            self._thread.start()
        return self

    def poll_once(self, timeout_s: float = 0.0) -> None:
        """One turn of the loop: wait up to timeout_s for data, read what is ready."""
        with self._lock:
            wait = timeout_s
            now = time.monotonic()
            for name, rs in self._running.items():
                if rs.source.polled:
                    wait = min(wait, max(0.0, self._meta[name]["next_poll"] - now))
        events = self._epoll.poll(wait)
        if any(fd == self._wake_r for fd, _ in events):
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        coalesce = 0.0
        with self._lock:
            now = time.monotonic()
            for name, rs in list(self._running.items()):
                meta = self._meta[name]
                if rs.source.polled:
                    if now >= meta["next_poll"]:
                        meta["next_poll"] = now + rs.source.poll_interval_s
                        self._drain(rs)
                elif self._drain(rs) and rs.source.coalesce_s:
                    coalesce = max(coalesce, rs.source.coalesce_s)
            if self._drain_tp():
                coalesce = max(coalesce, tp.COALESCE_S)
        if coalesce:
            # A heavy source woke us: let its ring fill a little so the next read is one big
            # batch, not many small ones (per-batch cost dominates at millions of events/s).
            time.sleep(coalesce)

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self.poll_once(0.5)
            except Exception as e:  # keep capturing; the error is shown by status / the CLI
                self.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.1)

    def _drain(self, rs: RunningSource, final: bool = False) -> int:
        """Read up to a turn's worth of batches; returns how many rows were read."""
        limit = None if final else self.MAX_BATCHES_PER_TURN
        lost = rs.counters().lost  # once per turn: two map lookups, not per batch
        rows = 0
        for _ in itertools.count() if limit is None else range(limit):
            data = rs.read()
            if data is None:
                return rows
            rows += data.num_rows
            self._meta[rs.name]["batches"] += 1
            batch = Batch(rs.name, next(self._seq), data, lost)
            for fn in list(self._subs):
                fn(batch)
            if rs.source.polled:
                return rows
        return rows

    def _drain_tp(self, final: bool = False) -> int:
        """Read the tracepoint rings: one Batch per tracepoint table and ring read."""
        if self._tp is None:
            return 0
        rows = 0
        # Bounded even when final: a busy tracepoint (sched_switch, anything our own reading
        # triggers) refills the rings as fast as they drain.
        for _ in range(64 if final else self.MAX_BATCHES_PER_TURN):
            got = self._tp.read()
            if not got:
                break
            for name, data in got:
                rows += data.num_rows
                lost = self._tp.counters(name).lost if name in self._tp.attached else 0
                if name in self._meta:
                    self._meta[name]["batches"] += 1
                batch = Batch(name, next(self._seq), data, lost)
                for fn in list(self._subs):
                    fn(batch)
        return rows

    def flush(self) -> None:
        """Read everything the rings hold now (and poll the polled sources), synchronously."""
        with self._lock:
            for rs in list(self._running.values()):
                self._drain(rs, final=True)
            self._drain_tp(final=True)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for name in self.running():
            self.stop(name)
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
