"""Standing queries: synthetic batches built from the real source schemas, plus one real test
against the kernel (process source -> Subscriptions -> long-poll)."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pytest

from kernsight.query.subscribe import PollResult, Subscriptions
from kernsight.query.validate import QueryRejected
from kernsight.sources import SOURCES

T0 = 1_700_000_000 * 10**9  # a fixed past instant (ns since the epoch)
_seq = itertools.count(1)


@dataclass(frozen=True)
class FakeBatch:  # the fields of kernsight.capture.Batch that subscriptions use
    source: str
    seq: int
    data: pa.RecordBatch
    lost_total: int = 0


def batch(source: str, rows: list[dict], lost_total: int = 0) -> FakeBatch:
    """A record batch of the source's real schema; columns not given are zero / empty."""
    schema = SOURCES[source].schema()
    cols = {}
    for f in schema:
        default = "" if pa.types.is_string(f.type) else False if pa.types.is_boolean(f.type) else 0
        vals = [r.get(f.name, default) for r in rows]
        if f.name == "ts":
            vals = [r.get("ts", T0 + i) for i, r in enumerate(rows)]
            cols[f.name] = pa.array(vals, pa.int64()).cast(f.type)
        else:
            cols[f.name] = pa.array(vals, f.type)
    return FakeBatch(
        source, next(_seq), pa.RecordBatch.from_pydict(cols, schema=schema), lost_total
    )


@pytest.fixture
def subs() -> Iterator[Subscriptions]:
    s = Subscriptions.from_sources(buffer_rows=10_000)
    try:
        yield s
    finally:
        s.close()


def drain(s: Subscriptions, sid: str, want: int, timeout: float = 10.0, **kw) -> list[PollResult]:
    """Poll (cursor=None) until `want` rows have been seen."""
    out, seen, deadline = [], 0, time.monotonic() + timeout
    while seen < want and time.monotonic() < deadline:
        r = s.poll(sid, wait_ms=200, **kw)
        out.append(r)
        seen += r.rows.num_rows
    return out


def rows_of(results: list[PollResult]) -> list[dict]:
    return [row for r in results for row in r.rows.to_pylist()]


def wait_rows(s: Subscriptions, sid: str, n: int, timeout: float = 10.0) -> None:
    """Until n rows exist (without reading them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if next(i for i in s.list() if i.sub_id == sid).next_row >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{sid}: fewer than {n} rows after {timeout} s")


# -- delivery -------------------------------------------------------------------------------


def test_every_matching_row_exactly_once_in_order(subs: Subscriptions) -> None:
    sid = subs.create("SELECT pid, event FROM process WHERE event = 'exec' AND pid % 3 = 0")
    expected, seqs = [], []
    for b in range(200):
        rows = [{"pid": b * 50 + i, "event": ("exec", "fork", "exit")[i % 3]} for i in range(50)]
        fb = batch("process", rows)
        subs.on_batch(fb)
        subs.on_batch(batch("files", [{"pid": 3, "path": "/x"}]))  # another table: ignored
        match = [r for r in rows if r["event"] == "exec" and r["pid"] % 3 == 0]
        expected += [{"pid": r["pid"], "event": "exec"} for r in match]
        seqs += [fb.seq] if match else []
    results = drain(subs, sid, len(expected), max_rows=37)
    assert rows_of(results) == expected
    assert all(r.lost == 0 and r.error is None for r in results)
    got = [r for r in results if r.rows.num_rows]
    assert got[0].seq_first == seqs[0] and got[-1].seq_last == seqs[-1]
    assert all(a.next_cursor == b.cursor for a, b in itertools.pairwise(results))
    assert subs.poll(sid).rows.num_rows == 0  # nothing twice


def test_projection_and_where(subs: Subscriptions) -> None:
    sid = subs.create(
        "SELECT pid + 1 AS p1, upper(comm) AS c FROM process AS p "
        "WHERE p.uid = 0 AND comm LIKE 'b%'"
    )
    subs.on_batch(batch("process", [
        {"pid": 10, "uid": 0, "comm": "bash"},
        {"pid": 11, "uid": 1000, "comm": "bash"},
        {"pid": 12, "uid": 0, "comm": "zsh"},
        {"pid": 13, "uid": 0, "comm": "busybox"},
    ]))  # fmt: skip
    r = drain(subs, sid, 2)
    assert r[0].columns == ["p1", "c"]
    assert rows_of(r) == [{"p1": 11, "c": "BASH"}, {"p1": 14, "c": "BUSYBOX"}]


def test_only_batches_after_creation(subs: Subscriptions) -> None:
    subs.create("SELECT pid FROM process")  # makes the process table wanted
    subs.on_batch(batch("process", [{"pid": 1}]))
    sid = subs.create("SELECT pid FROM process")
    subs.on_batch(batch("process", [{"pid": 2}]))
    assert rows_of(drain(subs, sid, 1)) == [{"pid": 2}]


def test_cursor_retries_are_idempotent(subs: Subscriptions) -> None:
    sid = subs.create("SELECT pid FROM process")
    subs.on_batch(batch("process", [{"pid": i} for i in range(10)]))
    wait_rows(subs, sid, 10)
    a = subs.poll(sid, cursor=0, max_rows=4)
    b = subs.poll(sid, cursor=0, max_rows=4)  # the retry of a lost response
    assert a.rows.equals(b.rows) and a.next_cursor == b.next_cursor == 4 and a.has_more
    c = subs.poll(sid, cursor=a.next_cursor, max_rows=100)  # releases rows 0..3
    assert [x["pid"] for x in c.rows.to_pylist()] == list(range(4, 10))
    assert subs.poll(sid, cursor=a.next_cursor, max_rows=100).rows.equals(c.rows)
    assert subs.poll(sid).rows.num_rows == 0  # cursor=None: the next unread position (10)
    stale = subs.poll(sid, cursor=0)  # released rows were read, not lost
    assert stale.lost == 0 and stale.cursor == 10 and stale.rows.num_rows == 0
    with pytest.raises(ValueError, match="out of range"):
        subs.poll(sid, cursor=11)


def test_overflow_reports_exact_lost_count() -> None:
    with Subscriptions.from_sources(buffer_rows=10) as s:
        sid = s.create("SELECT pid FROM process")
        s.on_batch(batch("process", [{"pid": i} for i in range(7)]))
        s.on_batch(batch("process", [{"pid": i} for i in range(7, 25)]))
        wait_rows(s, sid, 25)
        r = s.poll(sid, cursor=0, max_rows=100)
        assert r.lost == 15 and r.cursor == 15 and r.next_cursor == 25
        assert [x["pid"] for x in r.rows.to_pylist()] == list(range(15, 25))
        assert s.poll(sid, cursor=r.next_cursor).lost == 0
        s.on_batch(batch("process", [{"pid": i} for i in range(25, 40)]))
        wait_rows(s, sid, 40)
        r2 = s.poll(sid, cursor=r.next_cursor, max_rows=3)
        assert (r2.lost, r2.cursor, r2.rows.num_rows, r2.has_more) == (5, 30, 3, True)
        assert s.poll(sid, cursor=r.next_cursor, max_rows=3).lost == 5  # retry: same answer


def test_long_poll_returns_as_soon_as_a_row_arrives(subs: Subscriptions) -> None:
    sid = subs.create("SELECT pid FROM process WHERE pid = 4242")
    subs.on_batch(batch("process", [{"pid": 1}]))  # not matching: must not wake the poll
    threading.Timer(0.2, lambda: subs.on_batch(batch("process", [{"pid": 4242}]))).start()
    t0 = time.monotonic()
    r = subs.poll(sid, wait_ms=10_000)
    elapsed = time.monotonic() - t0
    assert r.rows.to_pylist() == [{"pid": 4242}]
    assert 0.15 < elapsed < 2.0, elapsed
    t0 = time.monotonic()
    assert subs.poll(sid, wait_ms=300).rows.num_rows == 0  # times out empty
    assert time.monotonic() - t0 >= 0.29


def test_kernel_losses_are_reported(subs: Subscriptions) -> None:
    subs.on_batch(batch("process", [{"pid": 1}], lost_total=5))  # before: not ours
    sid = subs.create("SELECT pid FROM process WHERE pid = 9")
    subs.on_batch(batch("process", [{"pid": 1}], lost_total=8))
    subs.on_batch(batch("process", [{"pid": 9}], lost_total=12))
    assert drain(subs, sid, 1)[-1].source_lost == 7


def test_error_of_one_subscription_does_not_stop_others(subs: Subscriptions) -> None:
    bad = subs.create("SELECT CAST(comm AS INTEGER) AS n FROM process")
    good = subs.create("SELECT comm FROM process")
    subs.on_batch(batch("process", [{"comm": "bash"}]))
    subs.on_batch(batch("process", [{"comm": "sh"}]))
    assert rows_of(drain(subs, good, 2)) == [{"comm": "bash"}, {"comm": "sh"}]
    r = subs.poll(bad, wait_ms=2000)
    assert r.rows.num_rows == 0 and r.error and "Conversion" in r.error and "seq" in r.error


def test_too_slow_subscription_is_stopped_and_others_continue() -> None:
    with Subscriptions.from_sources(eval_timeout_s=0.1) as s:
        slow = s.create("SELECT levenshtein(argv, reverse(argv)) AS d FROM process")
        fast = s.create("SELECT pid FROM process WHERE pid = 7")
        argv = "x" * 250 + "y" * 250
        s.on_batch(batch("process", [{"pid": i % 10, "argv": argv} for i in range(100_000)]))
        assert len(rows_of(drain(s, fast, 10_000, max_rows=10_000))) == 10_000
        r = s.poll(slow, wait_ms=5000)
        assert r.error and "exceeded" in r.error
        assert not next(i for i in s.list() if i.sub_id == slow).active


# -- window mode ----------------------------------------------------------------------------


def test_window_counts_emitted_when_a_later_window_arrives(subs: Subscriptions) -> None:
    base = (time.time_ns() // 10**9 + 1000) * 10**9  # in the future: the timer stays quiet
    sid = subs.create(
        "SELECT comm, count(*) AS n FROM process WHERE event = 'exec' GROUP BY comm",
        window_seconds=1,
    )

    def ev(sec: float, comm: str, event: str = "exec") -> dict:
        return {"ts": base + int(sec * 1e9), "comm": comm, "event": event}

    subs.on_batch(batch("process", [ev(0.1, "a"), ev(0.2, "a"), ev(0.3, "b"), ev(0.4, "b", "x")]))
    subs.on_batch(batch("process", [ev(0.9, "a"), ev(1.2, "b")]))  # spans windows 0 and 1
    assert subs.poll(sid, wait_ms=300).rows.num_rows == 0  # window 0 may still get rows
    subs.on_batch(batch("process", [ev(1.5, "b"), ev(1.6, "c", "fork")]))  # now it cannot
    r = drain(subs, sid, 2)
    subs.on_batch(batch("process", [ev(2.5, "a")]))  # window 2: window 1 is over
    r += drain(subs, sid, 1)
    got = [(x["window_start"].timestamp(), x["comm"], x["n"]) for x in rows_of(r)]
    s0 = base / 1e9
    assert sorted(got[:2]) == [(s0, "a", 3), (s0, "b", 1)] and got[2:] == [(s0 + 1, "b", 2)]
    assert r[-1].columns == ["window_start", "window_end", "comm", "n"]
    assert all(x["window_end"] == x["window_start"] + pa.scalar(1, pa.duration("s")).as_py()
               for x in rows_of(r))  # fmt: skip
    subs.on_batch(batch("process", [ev(0.95, "a"), ev(2.6, "a")]))  # window 0 is closed
    time.sleep(0.3)
    assert subs.poll(sid).late_rows == 1


def test_window_emitted_by_the_timer(subs: Subscriptions) -> None:
    sid = subs.create("SELECT count(*) AS n, max(pid) AS top FROM process", window_seconds=2)
    subs.on_batch(batch("process", [{"ts": T0 + i, "pid": i} for i in range(5)]))
    t0 = time.monotonic()
    r = subs.poll(sid, wait_ms=5000)  # the window ended long ago: out within a tick or so
    assert time.monotonic() - t0 < 1.0
    [row] = r.rows.to_pylist()
    start = T0 // (2 * 10**9) * 2 * 10**9
    assert (row["n"], row["top"]) == (5, 4)
    assert row["window_start"].timestamp() == start / 1e9


def test_window_rows_are_capped() -> None:
    with Subscriptions.from_sources(max_window_rows=3) as s:
        sid = s.create("SELECT count(*) AS n FROM process", window_seconds=1)
        s.on_batch(batch("process", [{"ts": T0 + i} for i in range(5)]))
        r = drain(s, sid, 1)
        assert rows_of(r) and rows_of(r)[0]["n"] == 3
        assert "more than 3 matching rows" in (r[-1].error or "")


# -- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT p.pid FROM process p JOIN files f ON p.pid = f.pid", "JOIN is not allowed"),
        ("SELECT pid FROM process, files", "JOIN is not allowed"),
        ("SELECT pid FROM process WHERE pid IN (SELECT pid FROM files)", "subqueries"),
        ("SELECT pid FROM process ORDER BY pid", "ORDER BY is not allowed"),
        ("SELECT pid FROM process LIMIT 5", "LIMIT is not allowed"),
        ("SELECT DISTINCT pid FROM process", "DISTINCT is not allowed"),
        ("SELECT pid FROM process UNION SELECT pid FROM files", "UNION"),
        ("SELECT pid FROM nosuchtable", "unknown table 'nosuchtable'"),
        ("DELETE FROM process", "DELETE is not allowed"),
        ("INSERT INTO process SELECT * FROM process", "INSERT is not allowed"),
        ("SELECT repeat(comm, 1000000) FROM process", "function repeat"),
        ("SELECT lpad(comm, 100000, 'x') FROM process", "function lpad/rpad"),
        ("SELECT range(pid) FROM process", "function range"),
        ("SELECT list_transform([1], x -> x) FROM process", "lambda"),
        ("SELECT replace(argv, ' ', 'a longer string') FROM process", "function replace"),
        ("SELECT count(*) FROM process", "aggregates need window_seconds"),
        ("SELECT mean(pid) FROM process", "aggregates need window_seconds"),
        ("SELECT string_agg(comm, ',') FROM process", "aggregates need window_seconds"),
        ("SELECT comm FROM process GROUP BY comm", "GROUP BY is not allowed"),
        ("SELECT row_number() OVER () FROM process", "window functions"),
        ("SELECT 1", "exactly one table"),
        ("SELECT * FROM range(10)", "function range"),
        ("SELECT nosuchcolumn FROM process", "cannot run on table process"),
    ],
)
def test_rejections(subs: Subscriptions, sql: str, reason: str) -> None:
    with pytest.raises(QueryRejected, match=reason) as e:
        subs.create(sql)
    if "allowed" in reason:
        assert "standing query is SELECT" in str(e.value) or "O(batch)" in str(e.value)


def test_window_mode_rejections(subs: Subscriptions) -> None:
    with pytest.raises(QueryRejected, match="string_agg|unbounded"):
        subs.create("SELECT repeat(comm, 10) FROM process", window_seconds=1)
    with pytest.raises(QueryRejected, match="ORDER BY"):
        subs.create("SELECT count(*) FROM process ORDER BY 1", window_seconds=1)
    with pytest.raises(QueryRejected, match="reserved"):
        subs.create("SELECT count(*) AS window_start FROM process", window_seconds=1)
    with pytest.raises(QueryRejected, match="window_seconds must be"):
        subs.create("SELECT count(*) FROM process", window_seconds=0)
    assert subs.create("SELECT string_agg(comm, ',') AS s FROM process", window_seconds=5)


def test_unknown_id_and_management(subs: Subscriptions) -> None:
    with pytest.raises(KeyError, match="unknown subscription id 'nope'"):
        subs.poll("nope")
    a = subs.create("SELECT pid FROM process")
    b = subs.create("SELECT path FROM files WHERE pid = 1")
    assert subs.tables_needed() == {"process", "files"}
    assert {i.sub_id for i in subs.list()} == {a, b}
    subs.unsubscribe(a)
    assert subs.tables_needed() == {"files"}
    with pytest.raises(KeyError):
        subs.unsubscribe(a)


def test_subscription_cap() -> None:
    with Subscriptions.from_sources(max_subscriptions=1) as s:
        s.create("SELECT pid FROM process")
        with pytest.raises(RuntimeError, match="at most 1"):
            s.create("SELECT pid FROM process")


# -- pushdown -------------------------------------------------------------------------------


def test_filters_for(subs: Subscriptions) -> None:
    assert subs.filters_for("files") is None  # no subscription
    subs.create("SELECT path FROM files WHERE pid = 42 AND (comm IN ('a', 'b')) AND ret < 0")
    assert subs.filters_for("files") == {"comm": ["a", "b"], "pid": [42]}
    subs.create("SELECT path FROM files WHERE 7 = pid AND uid = 0")
    assert subs.filters_for("files") == {"pid": [7, 42]}  # union of values, common columns
    subs.create("SELECT path FROM files WHERE pid = 1 OR pid = 2")  # not a top-level AND
    assert subs.filters_for("files") is None

    subs.create("SELECT pid FROM process WHERE pid = 5 AND comm = 'sshd'")
    # fork rows carry the child's pid while the kernel tests the parent: pid is not exact
    assert subs.filters_for("process") == {"comm": ["sshd"]}
    subs.create("SELECT nr FROM syscalls WHERE nr IN (0, 1) AND pid = '5' AND tid = 3")
    assert subs.filters_for("syscalls") == {"nr": [0, 1]}  # '5' is a cast; tid not exact


def test_filters_for_only_when_exact(subs: Subscriptions) -> None:
    for where in ("pid = 4294967296", "pid = -1", "pid = 1.0", "NOT pid = 1", "pid IN (1, tid)",
                  "comm = 'a\ufffd'", "pid <> 1", "pid IS NOT DISTINCT FROM 1"):  # fmt: skip
        with Subscriptions.from_sources() as s:
            s.create(f"SELECT path FROM files WHERE {where}")
            assert s.filters_for("files") is None, where


# -- the real kernel ------------------------------------------------------------------------


@pytest.mark.bpf
def test_real_exec_seen_by_a_long_poll(capture) -> None:
    cap, _ = capture
    tag = f"ks-sub-{uuid.uuid4().hex}"
    with Subscriptions.from_sources() as subs:
        sid = subs.create(
            f"SELECT pid, argv FROM process WHERE event = 'exec' AND argv LIKE '%{tag}%'"
        )
        cap.subscribe(subs.on_batch)
        cap.start("process")
        child = subprocess.Popen(["/bin/echo", tag], stdout=subprocess.DEVNULL)
        child.wait()
        t0 = time.monotonic()
        r = subs.poll(sid, wait_ms=10_000)
        assert time.monotonic() - t0 < 5
        assert r.rows.to_pylist() == [{"pid": child.pid, "argv": f"/bin/echo {tag}"}]
        assert r.lost == 0 and r.error is None and r.seq_first is not None
        assert subs.poll(sid, wait_ms=500).rows.num_rows == 0  # exactly once
        cap.unsubscribe(subs.on_batch)
