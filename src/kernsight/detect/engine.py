"""The rule engine: evaluates the enabled rules on every batch of their source tables.

All row rules of one table are compiled into ONE query, run per batch by DuckDB over the Arrow
batch (a hardened in-process connection, under the same time-budget watchdog as the live
subscriptions), returning only the matching rows with one boolean column per rule. What is left
for Python is per alert, not per event: matches are grouped per (rule, pid) with numpy, and the
rate limiter decides per group. Windowed rules keep their matching rows for the last N seconds
and run their GROUP BY ... HAVING over them whenever new rows arrive.

Nothing is dropped silently: a repeat inside the rate-limit window is counted and carried in
`suppressed` by the next alert of the same key (or by the key's last repeat, raised when the
window ends); a batch the engine could not evaluate (queue full, time budget) is counted in
`unevaluated_rows` and shown by status and the alerts tool.

Threads: `on_batch` runs on the capture thread and only enqueues; one worker thread evaluates
in batch order and calls `emit` with each batch of new alerts; `read` may be called from any
thread (long poll).
"""

from __future__ import annotations

import functools
import json
import queue
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from ..query.sandbox import harden
from ..query.subscribe import EvalTimeout, Watchdog
from ..untrusted import safe
from . import alerts as table
from .alerts import SEVERITIES
from .rules import DIALECT, Rule
from .vector import Mask, compile_predicate

if TYPE_CHECKING:
    from ..capture import Batch

__all__ = ["AlertsPage", "Detector"]

COMMON = ("pid", "tid", "uid", "comm", "cgroup_id")
TICK_S = 0.25  # how often rate-limit windows are closed and window buffers pruned
MAX_OUTPUT = 1024  # characters of a rendered output
MAX_VALUE = 256  # characters of one traced value inside it
MAX_READ_ROWS = 5_000
MAX_WAIT_MS = 60_000

Emit = Callable[[pa.RecordBatch, int], None]


@dataclass(frozen=True)
class AlertsPage:
    rows: list[dict[str, Any]]  # ts / raised_at as ns since the epoch
    cursor: int  # alert number the scan started at (> the requested cursor when some were lost)
    next_cursor: int
    lost: int  # alerts between the requested cursor and `cursor` that left the buffer unread
    has_more: bool
    unevaluated_rows: int  # rows the engine could not evaluate since it started
    suppressed_pending: int  # repeats counted but not yet carried by an alert row


@dataclass
class _Limit:
    until: float  # monotonic end of the key's rate-limit window
    pending: int = 0  # repeats since the key's last alert row
    last: dict[str, Any] | None = None  # the latest repeat, raised when the window ends


@dataclass
class _Counts:
    matches: int = 0
    alerts: int = 0
    suppressed: int = 0


@dataclass
class _WindowState:
    rule: Rule
    columns: list[str]  # of the source kept for the window
    sql: str  # the GROUP BY ... HAVING over the kept rows
    rows: pa.Table | None = None
    overflow: int = 0  # rows dropped (oldest first) beyond max_window_rows


@dataclass
class _Plan:
    source: str
    rules: list[Rule]
    masks: list[Mask | None]  # per rule: its Arrow kernels, or None: evaluated by DuckDB
    sql: str | None  # one query computing the DuckDB rules' booleans, in batch row order


@dataclass
class _Log:
    items: deque[dict[str, Any]] = field(default_factory=deque)
    base: int = 0  # alert number of items[0]
    end: int = 0  # the number the next alert gets


class Detector:
    """Evaluates `rules` over batches of the tables in `tables` (name -> schema)."""

    def __init__(
        self,
        rules: Iterable[Rule],
        tables: Mapping[str, pa.Schema],
        *,
        emit: Emit | None = None,
        rate_limit_s: float = 60.0,
        eval_timeout_s: float = 1.0,
        max_queued_batches: int = 1024,
        buffer_alerts: int = 10_000,
        max_window_rows: int = 200_000,
        memory_limit: str = "512MB",
    ) -> None:
        self.rules = list(rules)
        self.tables = dict(tables)
        self.emit = emit
        self.rate_limit_s = rate_limit_s
        self.buffer_alerts = buffer_alerts
        self.max_window_rows = max_window_rows
        enabled = [r for r in self.rules if r.enabled]
        self._plans: dict[str, _Plan] = {}
        for src in sorted({r.source for r in enabled}):
            rs = [r for r in enabled if r.source == src]
            masks = [compile_predicate(r.predicate, self.tables[src]) for r in rs]
            self._plans[src] = plan = _Plan(src, rs, masks, None)
            self._replan(plan)
        self._windows = {r.id: self._window_state(r) for r in enabled if r.window}
        self.counts = {r.id: _Counts() for r in enabled}
        self._limits: dict[tuple[str, Any], _Limit] = {}
        self._log = _Log()
        self._cond = threading.Condition()
        self.batches = self.rows = self.unevaluated_rows = 0
        self.eval_s = 0.0
        self.errors: list[str] = []
        self._queue: queue.Queue = queue.Queue(max_queued_batches)
        self._db = duckdb.connect(":memory:")
        harden(self._db, memory_limit=memory_limit, threads=1)
        self._con = self._db.cursor()
        self._watchdog = Watchdog(eval_timeout_s, "ks-detect-watch")
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="ks-detect", daemon=True)
        self._worker.start()

    # -- what runs -----------------------------------------------------------------------------
    def tables_needed(self) -> set[str]:
        return set(self._plans)

    def on_batch(self, batch: Batch) -> None:
        """Called on the capture thread: enqueue only, never block."""
        if batch.source not in self._plans or batch.data.num_rows == 0:
            return
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            self._unevaluated(batch, "the rule engine is overloaded (queue full)")

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every batch enqueued so far is evaluated (tests, benchmarks)."""
        done = threading.Event()
        self._queue.put(done, timeout=timeout_s)
        done.wait(timeout_s)

    # -- reading -------------------------------------------------------------------------------
    def read(
        self,
        cursor: int | None = None,
        *,
        since_ns: int | None = None,
        min_level: int = 0,
        rule: str | None = None,
        limit: int = 200,
        wait_ms: int = 0,
    ) -> AlertsPage:
        """Alerts numbered from `cursor` (None: the oldest held) that pass the filters, waiting
        up to wait_ms for the first one. next_cursor skips what the filters left out."""
        if not 1 <= limit <= MAX_READ_ROWS:
            raise ValueError(f"limit must be 1..{MAX_READ_ROWS}")
        if not 0 <= wait_ms <= MAX_WAIT_MS:
            raise ValueError(f"wait_ms must be 0..{MAX_WAIT_MS}")
        if not 0 <= min_level < len(SEVERITIES):
            raise ValueError(f"min_level must be 0..{len(SEVERITIES) - 1}")
        deadline = time.monotonic() + wait_ms / 1000
        with self._cond:
            log = self._log
            if cursor is not None and (isinstance(cursor, bool) or not 0 <= cursor <= log.end):
                raise ValueError(f"cursor {cursor!r} is out of range: alerts 0..{log.end} exist")
            start = log.base if cursor is None else cursor
            lost = max(0, log.base - start)
            pos = first = max(start, log.base)
            out: list[dict[str, Any]] = []
            while True:
                for a in list(log.items)[pos - log.base :]:
                    pos = a["alert_id"] + 1
                    if (a["severity_level"] >= min_level and (rule is None or a["rule_id"] == rule)
                            and (since_ns is None or a["ts"] >= since_ns)):  # fmt: skip
                        out.append(a)
                        if len(out) == limit:
                            break
                pos = max(pos, log.base)
                left = deadline - time.monotonic()
                if out or left <= 0 or self._stop.is_set():
                    break
                self._cond.wait(left)
                if pos < log.base:  # the buffer moved past us while waiting
                    lost += log.base - pos
                    pos = first = log.base
            return AlertsPage(
                rows=out, cursor=first, next_cursor=pos,
                lost=lost, has_more=pos < log.end, unevaluated_rows=self.unevaluated_rows,
                suppressed_pending=sum(lim.pending for lim in self._limits.values()),
            )  # fmt: skip

    def status(self) -> dict[str, Any]:
        with self._cond:
            pending = sum(lim.pending for lim in self._limits.values())
            alerts_raised = self._log.end
        return {
            "rules_enabled": sum(r.enabled for r in self.rules),
            "rules_disabled": sum(not r.enabled for r in self.rules),
            "sources": sorted(self._plans),
            "batches": self.batches,
            "rows": self.rows,
            "alerts": alerts_raised,
            "matches": sum(c.matches for c in self.counts.values()),
            "suppressed": sum(c.suppressed for c in self.counts.values()),
            "suppressed_pending": pending,
            "unevaluated_rows": self.unevaluated_rows,
            "window_overflow_rows": sum(w.overflow for w in self._windows.values()),
            "eval_ms": round(self.eval_s * 1000, 1),
            "errors": self.errors[-5:],
            "by_rule": {k: vars(c).copy() for k, c in self.counts.items() if c.matches},
        }

    # -- the worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        last_tick = time.monotonic()
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=TICK_S)
            except queue.Empty:
                item = None
            try:
                if isinstance(item, threading.Event):
                    item.set()
                elif item is not None:
                    self._evaluate(item)
                if time.monotonic() - last_tick >= TICK_S:
                    last_tick = time.monotonic()
                    self._tick()
            except Exception as e:  # keep evaluating; shown by status
                self._error(f"{type(e).__name__}: {e}")

    def _evaluate(self, batch: Batch) -> None:
        plan = self._plans[batch.source]
        t0 = time.perf_counter()
        masks = self._masks(plan, batch)
        if masks is None:
            return
        self.batches += 1
        self.rows += batch.data.num_rows
        hit = masks[0] if len(masks) == 1 else functools.reduce(pc.or_, masks)
        new: list[dict[str, Any]] = []
        if pc.any(hit).as_py():
            out = pa.Table.from_batches([batch.data.filter(hit)])
            i_ts = out.schema.get_field_index("ts")
            out = out.set_column(i_ts, "ts", out.column("ts").cast(pa.int64()))
            for rule, mask in zip(plan.rules, masks, strict=True):
                mask = mask.filter(hit)
                if not pc.any(mask).as_py():
                    continue
                rows = out.filter(mask)
                self.counts[rule.id].matches += rows.num_rows
                if rule.window:
                    new += self._window_alerts(self._windows[rule.id], rows, batch.seq)
                else:
                    new += self._row_alerts(rule, rows, batch.seq)
        self.eval_s += time.perf_counter() - t0
        self._raise(new)

    def _masks(self, plan: _Plan, batch: Batch) -> list[pa.Array] | None:
        """One boolean array per rule over the batch's rows (None: the batch was not
        evaluated). Arrow kernels first; the rules they cannot express in one DuckDB query."""
        out: list[pa.Array | None] = []
        for i, (rule, mask) in enumerate(zip(plan.rules, plan.masks, strict=True)):
            if mask is None:
                out.append(None)
                continue
            try:
                out.append(mask(batch.data))
            except (pa.ArrowException, TypeError, ValueError) as e:
                # a type the dry run could not show: DuckDB evaluates this rule from now on
                self._error(f"rule {rule.id}: Arrow evaluation failed ({type(e).__name__}: "
                            f"{e}); evaluated by DuckDB from now on")  # fmt: skip
                plan.masks[i] = None
                self._replan(plan)
                return self._masks(plan, batch)
        if plan.sql is not None:
            self._con.register(plan.source, batch.data)
            try:
                with self._watchdog.guard(self._con):
                    duck = self._con.sql(plan.sql).to_arrow_table()
            except EvalTimeout:
                self._unevaluated(batch, f"evaluation exceeded {self._watchdog.timeout_s} s")
                return None
            except duckdb.Error as e:
                self._unevaluated(batch, f"{type(e).__name__}: {e}")
                return None
            finally:
                self._con.unregister(plan.source)
            for i, m in enumerate(out):
                if m is None:
                    col = duck.column(f"__m{i}").combine_chunks()
                    out[i] = pc.fill_null(col, False)
        return out  # type: ignore[return-value]

    def _replan(self, plan: _Plan) -> None:
        cols = [f'{r.predicate} AS "__m{i}"' for i, (r, m) in enumerate(zip(plan.rules,
                plan.masks, strict=True)) if m is None]  # fmt: skip
        plan.sql = f'SELECT {", ".join(cols)} FROM "{plan.source}"' if cols else None

    def _row_alerts(self, rule: Rule, rows: pa.Table, seq: int) -> list[dict[str, Any]]:
        """Per pid: the first match may alert, the rest are repeats (counted, the last kept)."""
        n = rows.num_rows
        pids = rows.column("pid").to_numpy() if "pid" in rows.column_names else np.zeros(n, int)
        uniq, first, counts = np.unique(pids, return_index=True, return_counts=True)
        _, rlast = np.unique(pids[::-1], return_index=True)
        last = n - 1 - rlast
        out = []
        for pid, i, k, j in zip(uniq.tolist(), first.tolist(), counts.tolist(), last.tolist(),
                                strict=True):  # fmt: skip
            key = (rule.id, pid)
            head = self._row_alert(rule, rows, i, seq)
            tail = self._row_alert(rule, rows, j, seq) if k > 1 else None
            out += self._limit(key, head, k, tail)
        return out

    def _row_alert(self, rule: Rule, rows: pa.Table, i: int, seq: int) -> dict[str, Any]:
        row = rows.slice(i, 1).to_pylist()[0]
        key = {"table": rule.source, "ts": row["ts"], "batch": seq}
        key |= {c: row[c] for c in ("pid", "tid") if c in row}
        return self._alert(rule, row, row, key, seq)

    def _window_alerts(self, w: _WindowState, rows: pa.Table, seq: int) -> list[dict[str, Any]]:
        rule = w.rule
        assert rule.window is not None
        kept = rows.select(w.columns)  # ts back to its type: aggregates see the table's schema
        kept = kept.set_column(
            0, "ts", kept.column("ts").cast(self.tables[rule.source].field("ts").type)
        )
        held = kept if w.rows is None else pa.concat_tables([w.rows, kept])
        ns = held.column("ts").cast(pa.int64())
        cutoff = max(time.time_ns(), pc.max(ns).as_py()) - round(rule.window.seconds * 1e9)
        held = held.filter(pc.greater_equal(ns, cutoff))
        if held.num_rows > self.max_window_rows:
            w.overflow += held.num_rows - self.max_window_rows
            held = held.slice(held.num_rows - self.max_window_rows)
        w.rows = held
        self._con.register(rule.source, held)
        try:
            with self._watchdog.guard(self._con):
                groups = self._con.sql(w.sql).to_arrow_table().to_pylist()
        except (EvalTimeout, duckdb.Error) as e:
            self._error(f"rule {rule.id}: window evaluation failed: {type(e).__name__}: {e}")
            return []
        finally:
            self._con.unregister(rule.source)
        out = []
        for g in groups:
            group = {c: g[c] for c in rule.window.group_by}
            values = group | {a: g[a] for a, _ in rule.window.aggregates}
            row = {"ts": g["__ts"]} | {c: g.get(f"__{c}") for c in COMMON}
            key = {"table": rule.source, "group": group, "window_seconds": rule.window.seconds,
                   "first_ts": g["__first"], "last_ts": g["__ts"], "rows": g["__rows"]}  # fmt: skip
            alert = self._alert(rule, row, values, key, seq)
            out += self._limit((rule.id, json.dumps(group, default=str)), alert, 1, None)
        return out

    def _window_state(self, rule: Rule) -> _WindowState:
        w = rule.window
        assert w is not None
        schema = self.tables[rule.source]
        used = {"ts", *w.group_by}
        for text in [w.having, *(a for _, a in w.aggregates)]:
            used |= {c.name for c in sqlglot.parse_one(text, read=DIALECT).find_all(exp.Column)}
        cols = ["ts"] + [n for n in schema.names if n != "ts" and (n in used or n in COMMON)]
        common = [c for c in COMMON if c in cols]
        select = [f'"{g}"' for g in w.group_by] + [f'{a} AS "{alias}"' for alias, a in w.aggregates]
        select += ['count(*) AS "__rows"', 'epoch_ns(min(ts)) AS "__first"',
                   'epoch_ns(max(ts)) AS "__ts"']  # fmt: skip
        select += [f'arg_max("{c}", ts) AS "__{c}"' for c in common]
        group = f" GROUP BY {', '.join(repr_ident(g) for g in w.group_by)}" if w.group_by else ""
        sql = f'SELECT {", ".join(select)} FROM "{rule.source}"{group} HAVING {w.having}'
        return _WindowState(rule, cols, sql)

    # -- rate limiting -------------------------------------------------------------------------
    def _limit(
        self, key: tuple[str, Any], head: dict, k: int, tail: dict | None
    ) -> list[dict[str, Any]]:
        """k matches of one key in one batch (head: the first, tail: the last)."""
        now = time.monotonic()
        c = self.counts[key[0]]
        lim = self._limits.get(key)
        if lim is not None and now < lim.until:
            lim.pending += k
            lim.last = tail or head
            c.suppressed += k
            return []
        carried = lim.pending if lim is not None else 0
        head["suppressed"] = carried
        self._limits[key] = _Limit(now + self.rate_limit_s, k - 1, tail)
        c.suppressed += k - 1
        return [head]

    def _tick(self) -> None:
        """Close rate-limit windows that ended: a key's last repeat becomes an alert carrying
        the count of the repeats before it; prune window buffers."""
        now = time.monotonic()
        out = []
        for key, lim in list(self._limits.items()):
            if now < lim.until:
                continue
            if lim.pending and lim.last is not None:
                lim.last["suppressed"] = lim.pending - 1
                out.append(lim.last)
                self._limits[key] = _Limit(now + self.rate_limit_s)
            else:
                del self._limits[key]
        cutoff = time.time_ns()
        for w in self._windows.values():
            assert w.rule.window is not None
            if w.rows is not None and w.rows.num_rows:
                newest = pc.max(w.rows.column("ts").cast(pa.int64())).as_py()
                if newest < cutoff - round(w.rule.window.seconds * 1e9):
                    w.rows = None
        self._raise(out)

    # -- alerts --------------------------------------------------------------------------------
    def _alert(self, rule: Rule, row: dict, values: dict, key: dict, seq: int) -> dict[str, Any]:
        return {
            "ts": row["ts"], **{c: row.get(c) for c in COMMON},
            "rule_id": rule.id, "title": rule.title, "severity": rule.severity,
            "severity_level": rule.level, "tags": list(rule.tags), "source": rule.source,
            "output": render(rule, values), "key": json.dumps(key, default=str, sort_keys=True),
            "suppressed": 0, "batch": seq,
        }  # fmt: skip

    def _raise(self, new: list[dict[str, Any]]) -> None:
        if not new:
            return
        now = time.time_ns()
        with self._cond:
            log = self._log
            for a in new:
                a["alert_id"], a["raised_at"] = log.end, now
                log.end += 1
                log.items.append(a)
                self.counts[a["rule_id"]].alerts += 1
            while len(log.items) > self.buffer_alerts:
                log.items.popleft()
                log.base += 1
            self._cond.notify_all()
        if self.emit is None:
            return
        for seq in sorted({a["batch"] for a in new}):
            rows = [a for a in new if a["batch"] == seq]
            rb = pa.RecordBatch.from_pylist(rows, schema=table.SCHEMA)
            try:
                self.emit(rb, seq)
            except Exception as e:  # the in-memory log has them; say the store did not
                self._error(f"storing {len(rows)} alerts failed: {type(e).__name__}: {e}")

    def _unevaluated(self, batch: Batch, why: str) -> None:
        self.unevaluated_rows += batch.data.num_rows
        self._error(f"batch seq {batch.seq} ({batch.source}, {batch.data.num_rows} rows) was "
                    f"not evaluated: {why}")  # fmt: skip

    def _error(self, msg: str) -> None:
        self.errors.append(msg)
        del self.errors[:-50]

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._worker.join(timeout=5)
        self._watchdog.close()
        self._db.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repr_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_FORMATTER = string.Formatter()


def render(rule: Rule, values: Mapping[str, Any]) -> str:
    """The output template with each placeholder replaced by its value, traced strings cut and
    cleaned (they are attacker-controlled); ts-like integers shown as ISO-8601."""
    parts = []
    for literal, name, _, _ in _FORMATTER.parse(rule.output):
        parts.append(literal)
        if name is not None:
            parts.append(_show(name, values.get(name)))
    return safe("".join(parts), MAX_OUTPUT)


def _show(name: str, v: Any) -> str:
    if v is None:
        return "-"
    if name == "ts" and isinstance(v, int):
        return str(np.datetime64(v, "ns")) + "Z"
    if isinstance(v, list):
        return "[" + ", ".join(safe(x, MAX_VALUE) for x in v) + "]"
    return safe(v, MAX_VALUE)
