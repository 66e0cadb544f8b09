"""The running kernsight: capture -> store | subscriptions, the query engine over the store,
sources started on demand and stopped when nothing needs them, retention on a timer.

The server (MCP) and the live view sit on top of this; it knows nothing of MCP.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from . import __version__
from .capture import Batch, Capture
from .detect import alerts
from .detect.engine import Detector
from .detect.rules import load_rules, user_dirs
from .provenance import batch_entry, file_digests, host_facts, object_digest
from .query.engine import QueryEngine
from .query.subscribe import Subscriptions
from .sources import SOURCES
from .sources import tracepoint as tp
from .store.store import Store
from .trust.log import open_audit

DEFAULT_SOURCES = ("process", "files", "syscall_stats", "security")


class Runtime:
    def __init__(
        self,
        state_dir: Path,
        *,
        sources: tuple[str, ...] = DEFAULT_SOURCES,
        max_age_s: float = 3600.0,
        max_bytes: int = 1 << 30,
        idle_stop_s: float = 300.0,
        query_timeout_s: float = 10.0,
        query_memory_bytes: int = 1 << 30,
        query_workers: int = 2,
        rules_dirs: tuple[Path, ...] = (),
        detect: bool = True,
        alert_rate_limit_s: float = 60.0,
        source_options: dict[str, dict] | None = None,
        audit: bool = True,
    ) -> None:
        """rules_dirs: user rule directories besides <state_dir>/rules and KERNSIGHT_RULES
        (later ones win; see detect.rules.user_dirs).
        source_options: per source, its constructor's options, e.g.
        {"packets": {"interfaces": ["eth0", "NETNS/veth0"]}}."""
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.started_at = time.time()
        self.default_sources = tuple(sources)
        self.idle_stop_s = idle_stop_s
        schemas = {n: s.schema() for n, s in SOURCES.items()}
        tables = schemas | {alerts.NAME: alerts.SCHEMA}
        # Rules load first: a bad rule file stops the start with its error, before any capture.
        rules = load_rules(schemas, user_dirs(self.state_dir, rules_dirs)) if detect else []
        self.store = Store(self.state_dir / "store", tables, max_age_s=max_age_s,
                           max_bytes=max_bytes)  # fmt: skip
        self.capture = Capture(source_options)
        self.subscriptions = Subscriptions(tables)
        self.detector = Detector(rules, schemas, emit=self._on_alerts,
                                 rate_limit_s=alert_rate_limit_s)  # fmt: skip
        self.engine = QueryEngine(
            self.store,
            known_tables=self.known_tables,
            ensure_sources=self._ensure_sources,
            flush=self.capture.flush,
            timeout_s=query_timeout_s,
            memory_bytes=query_memory_bytes,
            workers=query_workers,
        )
        self._listeners: list[Callable[[Batch], None]] = []
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        # The audit log (trust/): lifecycle, every batch, and (through the server) every tool
        # call. `audit.record(type, data)` is how any part adds an entry.
        self.audit = open_audit(self.state_dir / "audit") if audit else None
        self._batch_lost: dict[str, int] = {}
        if self.audit is not None:
            self.audit.begin({**host_facts(), "rule_packs": file_digests(r.file for r in rules),
                              "rules": len(rules), "config": {
                "sources": list(sources), "max_age_s": max_age_s, "max_bytes": max_bytes,
                "idle_stop_s": idle_stop_s, "query_timeout_s": query_timeout_s,
                "query_memory_bytes": query_memory_bytes, "query_workers": query_workers}})
        self.capture.subscribe(self._on_batch)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for name in self._always_on():
            self._start_source(name)
        self.capture.run_in_thread()
        self._timer = threading.Thread(target=self._housekeeping, name="kernsight-housekeeping",
                                       daemon=True)  # fmt: skip
        self._timer.start()

    def close(self) -> None:
        self._stop.set()
        if self._timer:
            self._timer.join(timeout=5)
        running = self.capture.running()
        self.capture.close()
        self.detector.close()
        self.subscriptions.close()
        self.engine.close()
        self.store.close()
        if self.audit is not None:
            final = {n: {"delivered": st.delivered, "lost": st.lost}
                     for n, st in self.capture.final.items() if n in running}  # fmt: skip
            self.audit.close({"sources": final, "errors": len(self.capture.errors)})

    def _start_source(self, name: str) -> None:
        self.capture.start(name)
        if self.audit is not None:
            self.audit.record("source_start", {"source": name,
                                               "bpf_object_sha256": object_digest(name)})

    def _stop_source(self, name: str) -> None:
        self.capture.stop(name)
        if self.audit is not None:
            st = self.capture.final.get(name)
            self.audit.record("source_stop", {"source": name, "delivered": st and st.delivered,
                                              "lost": st and st.lost})  # fmt: skip

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- data path ---------------------------------------------------------------------------
    def _on_batch(self, batch: Batch) -> None:
        self.detector.on_batch(batch)  # first: enqueuing is cheap, the store write is not
        self.store.append(batch.source, batch.data, batch.seq, batch.lost_total)
        self.subscriptions.on_batch(batch)
        for fn in list(self._listeners):
            fn(batch)
        self._audit_batch(batch)  # last: its digest must not delay live delivery

    def _on_alerts(self, data: pa.RecordBatch, seq: int) -> None:
        """New alerts (detector thread): stored with the triggering batch's sequence, and
        pushed to the live subscriptions as a batch of the `alerts` table."""
        self.store.append(alerts.NAME, data, seq)
        batch = Batch(alerts.NAME, self.capture.next_seq(), data, 0)
        self._audit_batch(batch)
        self.subscriptions.on_batch(batch)

    def _audit_batch(self, batch: Batch) -> None:
        if self.audit is None:
            return
        prev = self._batch_lost.get(batch.source, 0)
        self._batch_lost[batch.source] = batch.lost_total
        try:
            self.audit.record("batch", batch_entry(batch, batch.lost_total - prev))
        except Exception as e:  # the data is kept; the gap is shown in status
            self.capture.errors.append(f"audit: {type(e).__name__}: {e}")

    def _always_on(self) -> list[str]:
        """The default sources and those the enabled rules read."""
        rules = sorted(self.detector.tables_needed() - set(self.default_sources))
        return [*self.default_sources, *rules]

    def add_listener(self, fn: Callable[[Batch], None]) -> None:
        self._listeners.append(fn)

    def _ensure_sources(self, wanted: dict[str, dict]) -> dict[str, dict]:
        """Start what a query needs. Other consumers share a running source, so kernel filters
        are not applied here (they would hide rows from the store and other agents)."""
        started: dict[str, dict] = {}
        with self._lock:
            for name in wanted:
                if tp.is_table(name):
                    self.add_tracepoint_table(name)
                elif name not in SOURCES:  # alerts: derived, not captured
                    continue
                self._last_used[name] = time.monotonic()
                if name not in self.capture.running():
                    self._start_source(name)
                    started[name] = {}
        return started

    def use(self, tables: set[str] | frozenset[str]) -> dict[str, dict]:
        """A query or subscription names these tables: make sure they are captured."""
        return self._ensure_sources({t: {} for t in tables if t in SOURCES or tp.is_table(t)})

    # -- tracepoint tables (tp.<category>.<name>) -------------------------------------------
    def known_tables(self) -> set[str]:
        """What a query may name: the store's tables and every tracepoint of this kernel."""
        try:
            names = tp.all_tables()
        except Exception:  # no tracefs: only the built-in tables
            names = []
        return set(self.store.tables) | set(names)

    def add_tracepoint_table(self, table: str) -> str:
        """Declare a tracepoint table (store + subscriptions) before anything reads it."""
        schema = tp.schema(table)  # KeyError naming how to find tracepoints when unknown
        self.store.add_table(table, schema)
        self.subscriptions.add_table(table, schema)
        return table

    def prepare(self, sql: str) -> None:
        """Declare the tracepoint tables a standing query names, so it can be validated."""
        from .query.validate import validate

        for t in validate(sql, self.known_tables()).tables:
            if tp.is_table(t):
                self.add_tracepoint_table(t)

    def list_tracepoints(self, filter: str | None = None, cursor: int = 0) -> dict:
        out = tp.listing(filter, cursor)
        running = set(self.capture.running())
        for t in out["tracepoints"]:
            t["capturing"] = t["table"] in running
        return out

    def describe_tracepoint(self, name: str) -> dict:
        return tp.describe(name)

    def tables(self) -> dict:
        """catalog.tables() plus the tracepoint tables used so far."""
        from .store import catalog

        out = catalog.tables()
        for name in sorted(self.store.tables):
            if tp.is_table(name):
                out[name] = catalog.tracepoint_table(name)
        return out

    def _housekeeping(self) -> None:
        while not self._stop.wait(5.0):
            try:
                self.store.enforce_retention()
                self._stop_idle_sources()
            except Exception as e:  # keep going; shown in status
                self.capture.errors.append(f"housekeeping: {type(e).__name__}: {e}")

    def _stop_idle_sources(self) -> None:
        needed = set(self._always_on()) | self.subscriptions.tables_needed()
        now = time.monotonic()
        with self._lock:
            for name in self.capture.running():
                if name in needed:
                    continue
                if now - self._last_used.get(name, now) > self.idle_stop_s:
                    self._stop_source(name)

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict:
        stats = self.capture.stats()
        store = self.store.stats()
        return {
            "version": __version__,
            "kernel": platform.release(),
            "hostname": platform.node(),
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "sources": {
                name: {
                    "running": name in stats,
                    "events_per_s": round(stats[name].rate, 1) if name in stats else 0.0,
                    "delivered": stats[name].delivered if name in stats else 0,
                    "lost": stats[name].lost if name in stats else 0,
                    "expired": store[name]["expired"],
                    "stored_rows": store[name]["rows"],
                    "heavy": SOURCES[name].heavy if name in SOURCES else False,
                    **({"counters": stats[name].extra} if name in stats and stats[name].extra
                       else {}),
                }  # fmt: skip
                for name in [*SOURCES, *sorted(n for n in store if tp.is_table(n))]
            },
            "store_bytes": sum(t["bytes"] for t in store.values()),
            "subscriptions": len(self.subscriptions.list()),
            "detect": self.detector.status(),
            "errors": self.capture.errors[-5:],
        }
