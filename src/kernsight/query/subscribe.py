"""Standing queries ("subscriptions") over the live event stream, polled with a cursor.

An agent registers a SELECT over ONE source table; every batch the capture engine delivers is
evaluated against it on a worker thread and the result rows are appended to the subscription's
buffer, numbered 0, 1, 2, ... .  ``poll(cursor)`` returns the rows from ``cursor`` on, so an
agent sees every matching row exactly once and in order, retries are idempotent, and whatever
the buffer had to drop before it was read is reported as ``lost``, never skipped silently.

With ``window_seconds`` the query is a tumbling-window aggregate: matching rows are kept per
window of ``ts`` (aligned to the epoch) and the query runs once per window, when a later batch
shows the window is over or, failing that, ~1 s after the window's end by the wall clock.

Threads: ``on_batch`` runs on the capture thread and only enqueues; one worker thread owns the
DuckDB connection and evaluates everything in batch order; a watchdog interrupts evaluations
that exceed their time budget.  ``poll`` / ``create`` / ... may be called from any thread.
"""

from __future__ import annotations

import itertools
import math
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from .sandbox import harden
from .validate import QueryRejected, validate

if TYPE_CHECKING:
    from ..capture import Batch

__all__ = [
    "EvalTimeout", "PollResult", "SubscriptionInfo", "SubscriptionLimit", "Subscriptions",
    "Watchdog", "check_standing",
]  # fmt: skip

DIALECT = "duckdb"
MAX_SQL_BYTES = 8_000
MAX_POLL_ROWS = 10_000
MAX_WAIT_MS = 60_000
WINDOW_GRACE_S = 1.0  # a window is emitted this long after its end if no later batch came
TICK_S = 0.2  # how often the worker looks for windows to emit
WINDOW_COLUMNS = ("window_start", "window_end")
TS_TYPE = pa.timestamp("ns", tz="UTC")

_SHAPE = (
    "a standing query is SELECT <columns or expressions> FROM <one table> [WHERE <condition>]; "
    "with window_seconds, GROUP BY, HAVING and aggregates are allowed too"
)
_CLAUSES = {
    "with_": "WITH", "distinct": "DISTINCT", "joins": "JOIN", "laterals": "LATERAL",
    "order": "ORDER BY", "limit": "LIMIT", "offset": "OFFSET", "qualify": "QUALIFY",
    "windows": "WINDOW", "sample": "TABLESAMPLE", "group": "GROUP BY", "having": "HAVING",
    "pivots": "PIVOT", "kind": "SELECT AS STRUCT/VALUE",
}  # fmt: skip

# Standing queries run inside the server process on EVERY batch, so each must cost O(batch):
# no function may build a value whose size is set by an argument or grows multiplicatively.
# Tested: DuckDB's memory_limit does NOT bound such results (repeat() under a 128 MB limit
# reached 2 GB of RSS), so they are refused here; the evaluation time budget (watchdog) is
# the backstop for the rest.  Denied: sizes from a number (repeat, lpad/rpad, range,
# list_resize, printf/format/bar/to_base widths), multiplicative growth (replace and
# regexp_replace per match, array_to_string per element, lambdas looping per element, unnest
# multiplying rows) and constant-factor encoders that grow exponentially when nested.
_UNBOUNDED_TYPES: dict[type[exp.Expression], str] = {
    exp.Repeat: "repeat", exp.Pad: "lpad/rpad", exp.GenerateSeries: "range/generate_series",
    exp.Unnest: "unnest", exp.Explode: "unnest", exp.Format: "format",
    exp.RegexpReplace: "regexp_replace", exp.ArrayToString: "array_to_string",
    exp.Hex: "hex", exp.ToBase64: "to_base64", exp.ToBinary: "to_binary",
    exp.JSONArray: "json_array", exp.JSONObject: "json_object",
    exp.Lambda: "lambda (x -> ...)", exp.Comprehension: "list comprehension",
}  # fmt: skip
_UNBOUNDED_NAMES = frozenset(
    "range generate_series repeat lpad rpad list_resize array_resize printf format bar to_base "
    "bin base64 url_encode list_to_string to_json json_quote unnest".split()
)
_AGG_NAMES = frozenset(
    "mean arbitrary favg fsum sumkahan kahan_sum geomean geometric_mean histogram product "
    "reservoir_quantile entropy kurtosis_pop mad sem weighted_avg bitstring_agg count_star "
    "json_group_array json_group_object".split()
)
MAX_FUNC_DEPTH = 8  # nesting of function calls, and
MAX_COLUMN_REFS = 64  # column references: both bound how much one row can be blown up

# In-kernel filters that test exactly the value the row carries (see the sources' BPF code).
# process: fork rows carry the CHILD's pid/tid while the kernel tests the forking task.
# syscalls: the filter runs at entry, the row is filled at exit, and execve, setuid or a
# cgroup move change tid/comm/uid/cgroup_id in between.  syscall_stats: tid/uid/comm/cgroup_id
# are those of the first caller, while the kernel counts every thread's calls.
EXACT_PUSHDOWN: dict[str, frozenset[str]] = {
    "process": frozenset({"uid", "comm", "cgroup_id"}),
    "files": frozenset({"pid", "tid", "uid", "comm", "cgroup_id"}),
    "syscalls": frozenset({"pid", "nr"}),
    "syscall_stats": frozenset({"pid", "nr"}),
}
_IN_LIST = {"this", "expressions"}  # `col IN (a, b)`, not IN (subquery) / IN unnest(...)
_INT_BITS = {"pid": 32, "tid": 32, "uid": 32, "nr": 32, "cgroup_id": 64}


class SubscriptionLimit(RuntimeError):
    """Too many subscriptions."""


@dataclass(frozen=True)
class PollResult:
    sub_id: str
    columns: list[str]
    rows: pa.Table
    cursor: int  # where these rows start (> the requested cursor when rows were lost)
    next_cursor: int  # pass this to the next poll
    lost: int  # rows between the cursor and `cursor` dropped by buffer overflow, unread
    has_more: bool  # more rows are ready now
    seq_first: int | None  # batch sequence numbers the rows came from
    seq_last: int | None
    source_lost: int  # events of the table the kernel dropped since the subscription began
    late_rows: int  # window mode: rows that arrived after their window was emitted
    error: str | None  # the last evaluation error; its batch's rows were not delivered


@dataclass(frozen=True)
class SubscriptionInfo:
    sub_id: str
    sql: str
    table: str
    window_seconds: float | None
    next_row: int  # number of rows produced so far
    buffered: int
    active: bool  # False once stopped for exceeding the time budget
    error: str | None


@dataclass
class _Chunk:
    first: int  # row number of rows[0]
    rows: pa.Table
    seq_lo: int
    seq_hi: int


@dataclass
class _Window:
    pieces: list[pa.Table] = field(default_factory=list)
    seq_lo: int = 0
    seq_hi: int = 0
    rows: int = 0


@dataclass
class _Sub:
    id: str
    sql: str  # the validated query (what runs per batch, or per window)
    table: str
    schema: pa.Schema  # of the rows handed to pollers
    cond: threading.Condition
    start_seq: int  # batches up to this seq were delivered before the subscription existed
    lost_base: int
    pushdown: dict[str, frozenset] | None
    window_ns: int | None = None
    window_seconds: float | None = None
    batch_sql: str = ""  # window mode: the WHERE over the needed columns
    chunks: deque[_Chunk] = field(default_factory=deque)
    base: int = 0  # row number of the oldest row held
    end: int = 0  # row number the next row gets
    released: int = 0  # the reader acknowledged every row before this
    read_pos: int = 0  # where cursor=None reads from
    active: bool = True
    closed: bool = False
    error: str | None = None
    errors: int = 0
    errors_told: int = 0  # errors a poll has returned
    source_lost: int = 0
    late_rows: int = 0
    windows: dict[int, _Window] = field(default_factory=dict)
    emitted: int | None = None  # last window emitted


class EvalTimeout(Exception):
    """An evaluation ran past its time budget and was interrupted."""


class Watchdog:
    """Interrupts in-process DuckDB evaluations that exceed their time budget; one thread
    watches every connection it guards (the subscriptions' and the rule engine's)."""

    def __init__(self, timeout_s: float, name: str = "ks-eval-watch") -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._running: dict[int, tuple[float, duckdb.DuckDBPyConnection]] = {}
        self._timed_out: set[int] = set()
        self._keys = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """Run the body under the budget; raises EvalTimeout when it was interrupted."""
        key = next(self._keys)
        with self._lock:
            self._running[key] = (time.monotonic() + self.timeout_s, con)
        try:
            yield
        except duckdb.InterruptException:
            if key in self._timed_out:
                raise EvalTimeout from None
            raise
        finally:
            with self._lock:
                self._running.pop(key, None)
                self._timed_out.discard(key)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            with self._lock:  # interrupting an idle connection is a no-op in DuckDB
                for key, (deadline, con) in list(self._running.items()):
                    if now > deadline:
                        self._timed_out.add(key)
                        del self._running[key]
                        con.interrupt()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Subscriptions:
    """Standing queries over the tables in ``tables`` (name -> Arrow schema). Thread-safe."""

    def __init__(
        self,
        tables: dict[str, pa.Schema],
        *,
        buffer_rows: int = 10_000,
        max_subscriptions: int = 64,
        eval_timeout_s: float = 1.0,
        max_queued_batches: int = 1024,
        max_window_rows: int = 1_000_000,
        memory_limit: str = "512MB",
    ) -> None:
        for name in tables:
            _check_table_name(name)
        if buffer_rows < 1 or max_subscriptions < 1:
            raise ValueError("buffer_rows and max_subscriptions must be positive")
        self.tables = dict(tables)
        self.buffer_rows = buffer_rows
        self.max_subscriptions = max_subscriptions
        self.eval_timeout_s = eval_timeout_s
        self.max_window_rows = max_window_rows
        self._lock = threading.RLock()
        self._subs: dict[str, _Sub] = {}
        self._wanted: frozenset[str] = frozenset()  # tables with a subscription (lock-free read)
        self._last_seq = 0
        self._lost_total: dict[str, int] = {}
        self._queue: queue.Queue = queue.Queue(max_queued_batches)
        self.errors: list[str] = []  # failures of the worker itself (not of one subscription)

        db = duckdb.connect(":memory:")
        harden(db, memory_limit=memory_limit, threads=1)
        self._db = db
        self._con = db.cursor()  # the worker's; registered views are per cursor
        self._dry = db.cursor()  # create()'s dry runs
        self._dry_lock = threading.Lock()
        self._watchdog = Watchdog(eval_timeout_s, "ks-sub-watch")
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="ks-subscriptions", daemon=True)
        self._worker.start()

    @classmethod
    def from_sources(cls, **kw: Any) -> Subscriptions:
        """Subscriptions over every kernsight source's table."""
        from ..sources import SOURCES

        return cls({name: src.schema() for name, src in SOURCES.items()}, **kw)

    def add_table(self, name: str, schema: pa.Schema) -> None:
        """Declare a table created at run time (a tracepoint table); idempotent."""
        _check_table_name(name)
        with self._lock:
            self.tables.setdefault(name, schema)

    # -- managing subscriptions ----------------------------------------------------------------
    def create(self, sql: str, window_seconds: float | None = None) -> str:
        """Validate and register a standing query; returns its id. Raises QueryRejected."""
        window_ns = None
        if window_seconds is not None:
            if not isinstance(window_seconds, int | float) or not (
                math.isfinite(window_seconds) and 0.001 <= window_seconds <= 86_400
            ):
                raise QueryRejected("window_seconds must be a number from 0.001 to 86400")
            window_ns = round(window_seconds * 1e9)
        try:
            checked = validate(sql, self.tables, max_sql_bytes=MAX_SQL_BYTES)
        except QueryRejected as e:
            raise QueryRejected(f"{e} ({_SHAPE})") from None
        tree = sqlglot.parse_one(checked.sql, read=DIALECT)
        table = check_standing(tree, checked.tables, windowed=window_ns is not None)
        schema = self.tables[table]

        if window_ns is None:
            batch_sql = checked.sql
            out = self._dry_run(table, schema, batch_sql)
            if out.num_rows:  # only an aggregate yields a row from an empty table
                raise QueryRejected(f"aggregates need window_seconds; {_SHAPE}")
            out_schema = out.schema
        else:
            pre = tree.copy()
            pre.set("expressions", [exp.column(c, quoted=True) for c in _needed(tree, schema)])
            pre.set("group", None)
            pre.set("having", None)
            batch_sql = validate(pre.sql(dialect=DIALECT), self.tables).sql
            hint = "; with window_seconds, WHERE may use only table columns, not SELECT aliases"
            kept = self._dry_run(table, schema, batch_sql, hint).schema
            res = self._dry_run(table, kept, checked.sql).schema
            if clash := set(WINDOW_COLUMNS) & set(res.names):
                raise QueryRejected(f"output columns {sorted(clash)} are reserved in window mode")
            out_schema = pa.schema([pa.field(n, TS_TYPE) for n in WINDOW_COLUMNS] + list(res))

        where = tree.args.get("where")
        pushdown = _pushdown(where.this if where else None, EXACT_PUSHDOWN.get(table, frozenset()))
        with self._lock:
            if len(self._subs) >= self.max_subscriptions:
                raise SubscriptionLimit(
                    f"at most {self.max_subscriptions} subscriptions; unsubscribe one first"
                )
            sub_id = "sub-" + secrets.token_hex(8)
            self._subs[sub_id] = _Sub(
                id=sub_id, sql=checked.sql, table=table, schema=out_schema,
                cond=threading.Condition(self._lock), start_seq=self._last_seq,
                lost_base=self._lost_total.get(table, 0), pushdown=pushdown,
                window_ns=window_ns, window_seconds=window_seconds, batch_sql=batch_sql,
            )  # fmt: skip
            self._refresh_wanted()
        return sub_id

    def unsubscribe(self, sub_id: str) -> None:
        with self._lock:
            sub = self._get(sub_id)
            sub.closed = True
            del self._subs[sub_id]
            self._refresh_wanted()
            sub.cond.notify_all()

    def list(self) -> list[SubscriptionInfo]:
        with self._lock:
            return [
                SubscriptionInfo(
                    s.id, s.sql, s.table, s.window_seconds, s.end, s.end - s.base, s.active, s.error
                )
                for s in self._subs.values()
            ]

    def tables_needed(self) -> set[str]:
        """The sources that must run for the active subscriptions."""
        with self._lock:
            return {s.table for s in self._subs.values() if s.active}

    def filters_for(self, table: str) -> dict[str, list] | None:
        """In-kernel filters ({column: [values]}, as Capture.start takes) that keep every row
        any active subscription on ``table`` can match; None when one of them needs every row
        (or none exists).  A column is pushed only when EVERY subscription constrains it; its
        values are the union of theirs, so the kernel keeps a superset of what each needs."""
        with self._lock:
            subs = [s for s in self._subs.values() if s.table == table and s.active]
        maps = [s.pushdown for s in subs if s.pushdown is not None]
        if not subs or len(maps) < len(subs):
            return None
        common = set.intersection(*(set(m) for m in maps))
        if not common:
            return None
        return {c: sorted(set().union(*(m[c] for m in maps))) for c in sorted(common)}

    # -- the capture side ----------------------------------------------------------------------
    def on_batch(self, batch: Batch) -> None:
        """Called on the capture thread: enqueue only."""
        self._last_seq = batch.seq  # before the check below: see create()'s start_seq
        self._lost_total[batch.source] = batch.lost_total
        if batch.source not in self._wanted:
            return
        try:
            self._queue.put_nowait(batch)
        except queue.Full:  # never block the capture thread; say what was skipped instead
            with self._lock:
                for s in self._subs.values():
                    if s.table == batch.source:
                        n = batch.data.num_rows
                        self._fail(s, f"batch seq {batch.seq}: its {n} rows were not evaluated "
                                      "(subscription worker overloaded)")  # fmt: skip

    # -- reading -------------------------------------------------------------------------------
    def poll(
        self, sub_id: str, cursor: int | None = None, max_rows: int = 500, wait_ms: int = 0
    ) -> PollResult:
        """Rows from ``cursor`` (None: the next unread position), waiting up to ``wait_ms`` for
        the first one.  Rows before ``cursor`` are released: the caller has seen them."""
        if not 1 <= max_rows <= MAX_POLL_ROWS:
            raise ValueError(f"max_rows must be 1..{MAX_POLL_ROWS}")
        if not 0 <= wait_ms <= MAX_WAIT_MS:
            raise ValueError(f"wait_ms must be 0..{MAX_WAIT_MS}")
        deadline = time.monotonic() + wait_ms / 1000
        with self._lock:
            s = self._get(sub_id)
            start = s.read_pos if cursor is None else cursor
            if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= s.end:
                raise ValueError(f"cursor {cursor!r} is out of range: rows 0..{s.end} exist")
            # Rows in [released, base) were dropped by overflow before anyone read them.
            lost = max(0, s.base - max(start, s.released))
            if start > s.released:
                s.released = start
                self._trim(s, start - s.base)
            # Wait for rows, or news: an error this reader has not been told of, or the stop.
            while s.end <= max(start, s.base) and not lost and s.errors == s.errors_told:
                left = deadline - time.monotonic()
                if left <= 0 or s.closed or not s.active:
                    break
                s.cond.wait(left)
            s.errors_told = s.errors
            if s.closed:
                raise KeyError(f"subscription {sub_id} was unsubscribed")
            lost = max(0, s.base - max(start, s.released)) if not lost else lost
            pos = max(start, s.base)
            parts, seqs = [], []
            for c in s.chunks:
                if c.first >= pos + max_rows:
                    break
                lo, hi = max(pos, c.first), min(pos + max_rows, c.first + c.rows.num_rows)
                if lo < hi:
                    parts.append(c.rows.slice(lo - c.first, hi - lo))
                    seqs.append((c.seq_lo, c.seq_hi))
            rows = pa.concat_tables(parts) if parts else s.schema.empty_table()
            nxt = pos + rows.num_rows
            s.read_pos = max(s.read_pos, nxt)
            return PollResult(
                sub_id, rows.column_names, rows, pos, nxt, lost, s.end > nxt,
                seqs[0][0] if seqs else None, seqs[-1][1] if seqs else None,
                s.source_lost, s.late_rows, s.error,
            )  # fmt: skip

    # -- internals: bookkeeping (called with the lock held) ------------------------------------
    def _get(self, sub_id: str) -> _Sub:
        try:
            return self._subs[sub_id]
        except (KeyError, TypeError):
            raise KeyError(f"unknown subscription id {sub_id!r}") from None

    def _refresh_wanted(self) -> None:
        self._wanted = frozenset(s.table for s in self._subs.values() if s.active)

    def _trim(self, s: _Sub, n: int) -> None:
        """Drop the n oldest rows held."""
        while n > 0 and s.chunks:
            c = s.chunks[0]
            k = min(n, c.rows.num_rows)
            if k == c.rows.num_rows:
                s.chunks.popleft()
            else:
                c.rows, c.first = c.rows.slice(k), c.first + k
            s.base += k
            n -= k

    def _append(self, s: _Sub, rows: pa.Table, seq_lo: int, seq_hi: int) -> None:
        if rows.num_rows == 0:
            return
        if rows.schema != s.schema:
            rows = rows.cast(s.schema)
        with self._lock:
            if s.closed:
                return
            s.chunks.append(_Chunk(s.end, rows, seq_lo, seq_hi))
            s.end += rows.num_rows
            self._trim(s, (s.end - s.base) - self.buffer_rows)
            s.cond.notify_all()

    def _fail(self, s: _Sub, message: str, stop: bool = False) -> None:
        with self._lock:
            s.error, s.errors = message, s.errors + 1
            if stop:
                s.active = False
                self._refresh_wanted()
            s.cond.notify_all()

    # -- internals: the worker -----------------------------------------------------------------
    def _work(self) -> None:
        last_tick = time.monotonic()
        while not self._stop.is_set():
            try:
                batch = self._queue.get(timeout=TICK_S)
            except queue.Empty:
                batch = None
            try:
                if batch is not None:
                    self._evaluate(batch)
                if time.monotonic() - last_tick >= TICK_S:
                    last_tick = time.monotonic()
                    self._emit_due()
            except Exception as e:  # keep serving the other subscriptions
                self.errors.append(f"{type(e).__name__}: {e}")

    def _evaluate(self, batch: Batch) -> None:
        with self._lock:
            subs = [
                s
                for s in self._subs.values()
                if s.table == batch.source and s.active and batch.seq > s.start_seq
            ]
            for s in subs:
                s.source_lost = max(0, batch.lost_total - s.lost_base)
        if not subs:
            return
        outs: dict[str, pa.Table] = {}
        self._con.register(batch.source, batch.data)
        try:
            for s in subs:
                out = self._run(s, s.batch_sql or s.sql, batch.seq)
                if out is not None:
                    outs[s.id] = out
        finally:
            self._con.unregister(batch.source)
        for s in subs:
            if s.id not in outs:
                continue
            if s.window_ns is None:
                self._append(s, outs[s.id], batch.seq, batch.seq)
            else:
                self._accumulate(s, outs[s.id], batch)

    def _run(self, s: _Sub, sql: str, seq: int) -> pa.Table | None:
        """One evaluation; a failure is recorded on the subscription and returns None."""
        try:
            with self._watchdog.guard(self._con):
                return self._con.sql(sql).to_arrow_table()
        except EvalTimeout:
            self._fail(s, f"batch seq {seq}: evaluation exceeded {self.eval_timeout_s} s and was "
                          "interrupted; the subscription is stopped, create a cheaper one",
                       stop=True)  # fmt: skip
        except Exception as e:
            self._fail(s, f"batch seq {seq}: {type(e).__name__}: {e} (its rows were not "
                          "delivered)")  # fmt: skip
        return None

    def _accumulate(self, s: _Sub, rows: pa.Table, batch: Batch) -> None:
        assert s.window_ns is not None
        if rows.num_rows:
            wid = pc.divide(rows.column("ts").cast(pa.int64()), s.window_ns)
            for w in pc.unique(wid).to_pylist():
                part = rows.filter(pc.equal(wid, w))
                if s.emitted is not None and w <= s.emitted:
                    with self._lock:
                        s.late_rows += part.num_rows
                    continue
                win = s.windows.setdefault(w, _Window(seq_lo=batch.seq))
                if win.rows + part.num_rows > self.max_window_rows:  # memory stays bounded
                    part = part.slice(0, self.max_window_rows - win.rows)
                    if part.num_rows:  # said once per window
                        self._fail(s, f"window {_iso(w * s.window_ns)} has more than "
                                      f"{self.max_window_rows} matching rows; its aggregates "
                                      "cover only the first ones")  # fmt: skip
                win.pieces.append(part)
                win.rows += part.num_rows
                win.seq_hi = batch.seq
        if batch.data.num_rows:
            first = pc.min(batch.data.column("ts")).cast(pa.int64()).as_py()
            self._emit(s, first // s.window_ns)  # every window before the batch's first row

    def _emit_due(self) -> None:
        now = time.time_ns() - round(WINDOW_GRACE_S * 1e9)
        with self._lock:
            subs = [s for s in self._subs.values() if s.windows and s.active]
        for s in subs:
            assert s.window_ns is not None
            self._emit(s, now // s.window_ns)  # windows that ended more than the grace ago

    def _emit(self, s: _Sub, before: int) -> None:
        """Run the aggregate over each pending window older than window `before`."""
        assert s.window_ns is not None
        for w in sorted(k for k in s.windows if k < before):
            win = s.windows.pop(w)
            s.emitted = w if s.emitted is None else max(s.emitted, w)
            self._con.register(s.table, pa.concat_tables(win.pieces))
            try:
                out = self._run(s, s.sql, win.seq_hi)
            finally:
                self._con.unregister(s.table)
            if out is None:
                continue
            bounds = [w * s.window_ns, (w + 1) * s.window_ns]
            for i, (name, v) in enumerate(zip(WINDOW_COLUMNS, bounds, strict=True)):
                col = pa.array([v] * out.num_rows, pa.int64()).cast(TS_TYPE)
                out = out.add_column(i, name, col)
            self._append(s, out, win.seq_lo, win.seq_hi)

    # -- internals: dry runs ------------------------------------------------------------------
    def _dry_run(self, table: str, schema: pa.Schema, sql: str, hint: str = "") -> pa.Table:
        """Run sql over an empty table: catches binder errors now and gives the output schema."""
        with self._dry_lock:
            self._dry.register(table, schema.empty_table())
            try:
                with self._watchdog.guard(self._dry):
                    return self._dry.sql(sql).to_arrow_table()
            except (duckdb.Error, EvalTimeout) as e:
                raise QueryRejected(f"the query cannot run on table {table}: {e}{hint}") from None
            finally:
                self._dry.unregister(table)

    def close(self) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)  # wake the worker
        except queue.Full:
            pass
        self._worker.join(timeout=5)
        self._watchdog.close()
        with self._lock:
            for s in self._subs.values():
                s.closed = True
                s.cond.notify_all()
            self._subs.clear()
            self._refresh_wanted()
        self._db.close()

    def __enter__(self) -> Subscriptions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- shape checks ----------------------------------------------------------------------------


def _check_table_name(name: str) -> None:
    # It is registered as a DuckDB view of that name: a plain identifier, or a dotted name of
    # plain identifiers (tp.sched.sched_switch, which the validator renders as one quoted name).
    if not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"table name {name!r} must be a plain or dotted identifier")


def check_standing(tree: exp.Expression, tables: frozenset[str], windowed: bool) -> str:
    """The query's single table, or QueryRejected saying what is allowed instead."""
    if isinstance(tree, exp.SetOperation):
        raise QueryRejected(f"UNION/INTERSECT/EXCEPT is not allowed; {_SHAPE}")
    if not isinstance(tree, exp.Select):
        raise QueryRejected(f"expected a SELECT; {_SHAPE}")
    allowed = {"expressions", "from_", "where"} | ({"group", "having"} if windowed else set())
    for key, value in tree.args.items():
        if value and key not in allowed:
            name = _CLAUSES.get(key, key.upper())
            need = " without window_seconds" if key in ("group", "having") else ""
            raise QueryRejected(f"{name} is not allowed in a standing query{need}; {_SHAPE}")
    depth = refs = 0
    for node in tree.walk():
        if node is not tree and isinstance(node, exp.Select | exp.Subquery | exp.SetOperation):
            raise QueryRejected(f"subqueries are not allowed; {_SHAPE}")
        if isinstance(node, exp.Window):
            raise QueryRejected(
                "window functions (OVER) are not allowed; for per-interval aggregates pass "
                f"window_seconds; {_SHAPE}"
            )
        if bad := _unbounded(node):
            raise QueryRejected(
                f"function {bad} is not allowed in a standing query: it can build values of "
                "unbounded size per row, and standing queries must cost O(batch)"
            )
        if not windowed and (
            isinstance(node, exp.AggFunc)
            or (type(node) is exp.Anonymous and node.name.lower() in _AGG_NAMES)
        ):
            raise QueryRejected(f"aggregates need window_seconds; {_SHAPE}")
        if _is_call(node):
            depth = max(depth, sum(map(_is_call, _ancestors(node))) + 1)
        refs += isinstance(node, exp.Column)
    if depth > MAX_FUNC_DEPTH or refs > MAX_COLUMN_REFS:
        raise QueryRejected(
            f"standing queries may nest functions at most {MAX_FUNC_DEPTH} deep and reference "
            f"columns at most {MAX_COLUMN_REFS} times (this one: {depth}, {refs})"
        )
    source = tree.args["from_"].this if tree.args.get("from_") else None
    if len(tables) != 1 or not isinstance(source, exp.Table) or isinstance(source.this, exp.Func):
        raise QueryRejected(f"a standing query reads exactly one table; {_SHAPE}")
    if extra := [k for k, v in source.args.items() if v and k not in ("this", "alias")]:
        raise QueryRejected(f"table modifiers {extra} are not allowed; {_SHAPE}")
    return next(iter(tables))


def _is_call(node: exp.Expression) -> bool:
    return isinstance(node, exp.Func) and not isinstance(node, exp.Connector)  # not AND/OR


def _iso(ns: int) -> str:
    return pa.scalar(ns, pa.int64()).cast(TS_TYPE).as_py().isoformat()


def _ancestors(node: exp.Expression) -> Iterator[exp.Expression]:
    while node.parent is not None:
        node = node.parent
        yield node


def _unbounded(node: exp.Expression) -> str | None:
    if type(node) in _UNBOUNDED_TYPES:
        return _UNBOUNDED_TYPES[type(node)]
    if type(node) is exp.Anonymous and node.name.lower() in _UNBOUNDED_NAMES:
        return node.name.lower()
    if type(node) is exp.Replace:  # allowed only when it cannot grow the string
        old, new = node.args.get("expression"), node.args.get("replacement")
        if not (
            isinstance(old, exp.Literal) and isinstance(new, exp.Literal)
            and old.is_string and new.is_string and 0 < len(new.this) <= len(old.this)
        ):  # fmt: skip
            return "replace (unless its replacement is a literal no longer than the search)"
    return None


def _needed(tree: exp.Select, schema: pa.Schema) -> list[str]:
    """Window mode keeps only the columns the query can reference (and ts), in schema order."""
    every = bool(tree.find(exp.Columns, exp.PositionalColumn)) or any(
        isinstance(e, exp.Star) or (isinstance(e, exp.Column) and e.is_star)
        for e in tree.expressions
    )
    used = {c.name.casefold() for c in tree.find_all(exp.Column)} | {"ts"}
    return [n for n in schema.names if every or n.casefold() in used]


# -- pushdown --------------------------------------------------------------------------------


def _conjuncts(e: exp.Expression) -> Iterator[exp.Expression]:
    e = e.unnest()
    if isinstance(e, exp.And):
        yield from _conjuncts(e.this)
        yield from _conjuncts(e.expression)
    else:
        yield e


def _pushdown(where: exp.Expression | None, cols: frozenset[str]) -> dict[str, frozenset] | None:
    """{column: allowed values} implied by `col = literal` / `col IN (literals)` terms of the
    WHERE's top-level AND, for exactly-pushable columns; None when there are none.  Dropping a
    term only widens what the kernel keeps, so anything not understood exactly is skipped."""
    if where is None:
        return None
    out: dict[str, frozenset] = {}
    for term in _conjuncts(where):
        if isinstance(term, exp.EQ):
            col, lits = term.this, [term.expression]
            if isinstance(lits[0], exp.Column):
                col, lits = lits[0], [term.this]
        elif isinstance(term, exp.In) and {k for k, v in term.args.items() if v} == _IN_LIST:
            col, lits = term.this, term.expressions
        else:
            continue
        if not isinstance(col, exp.Column) or col.is_star or col.args.get("db"):
            continue
        name = col.name.casefold()
        values = [_kernel_value(name, lit) for lit in lits]
        if name not in cols or not values or any(v is None for v in values):
            continue
        out[name] = out[name] & frozenset(values) if name in out else frozenset(values)
    return out or None


def _kernel_value(col: str, lit: exp.Expression) -> int | str | None:
    """The literal as the kernel filter would compare it, or None when not exactly the same."""
    if not isinstance(lit, exp.Literal):
        return None
    if col == "comm":  # U+FFFD in a row stands for undecodable bytes the kernel compares raw
        return lit.this if lit.is_string and "\ufffd" not in lit.this else None
    text = lit.this
    if lit.is_string or not (text.isascii() and text.isdigit()):
        return None
    v = int(text)
    return v if v < 1 << _INT_BITS[col] else None
