"""Adversarial tests for the agent SQL surface: the allow-list validator and the hardened
DuckDB connection behind it (each layer must hold on its own)."""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pytest
import sqlglot

from kernsight.query import sandbox
from kernsight.query.sandbox import harden
from kernsight.query.validate import Checked, QueryRejected, validate

KNOWN = frozenset({"events", "procs", "tp.sched.sched_switch"})

# (sql, substring of the rejection message showing which rule fired)
REJECTED: list[tuple[str, str]] = [
    # DML hidden behind or inside WITH (a known peer's filter misses the first one)
    ("WITH x AS (SELECT 1) DELETE\tFROM events", "statement type DELETE"),
    ("WITH x AS (SELECT 1) DELETE\nFROM events", "statement type DELETE"),
    ("WITH x AS (SELECT 1) DELETE\fFROM events", "statement type DELETE"),
    ("WITH x AS (SELECT 1) DELETE\u00a0FROM events", "statement type DELETE"),
    ("WITH x AS (SELECT 1) DELETE\u2028FROM events", "statement type DELETE"),
    ("WITH x AS (SELECT 1) DELETE/**/FROM events", "statement type DELETE"),
    ("/**/DELETE/**/FROM/**/events", "statement type DELETE"),
    ("--\nDELETE FROM events", "statement type DELETE"),
    ("WITH x AS (SELECT 1) UPDATE events SET pid = 0", "statement type UPDATE"),
    ("WITH x AS (SELECT 1) INSERT INTO events SELECT * FROM events", "statement type INSERT"),
    ("WITH x AS (DELETE FROM events RETURNING *) SELECT count(*) FROM x",
     "statement type DELETE is not allowed (inside a WITH clause)"),
    ("WITH x AS (INSERT INTO events VALUES (1) RETURNING *) SELECT * FROM x",
     "statement type INSERT is not allowed (inside a WITH clause)"),
    ("WITH x AS (UPDATE events SET pid = 0 RETURNING *) SELECT * FROM x",
     "statement type UPDATE is not allowed (inside a WITH clause)"),
    ("WITH a AS (SELECT 1), b AS (DELETE FROM events RETURNING *) SELECT * FROM a",
     "statement type DELETE is not allowed (inside a WITH clause)"),
    ("DELETE FROM events", "statement type DELETE"),
    ("UPDATE events SET pid = 0", "statement type UPDATE"),
    ("INSERT INTO events VALUES (1)", "statement type INSERT"),
    ("TRUNCATE events", "statement type TRUNCATE"),
    ("MERGE INTO events USING procs ON true WHEN MATCHED THEN DELETE", "statement type MERGE"),
    ("DROP TABLE events", "statement type DROP"),
    ("ALTER TABLE events RENAME TO old_events", "statement type ALTER"),
    ("COMMENT ON TABLE events IS 'x'", "statement type COMMENT"),
    # more than one statement, empty statements, comment tricks
    ("SELECT 1; SELECT 2", "found 2 statements"),
    ("SELECT 1; DELETE FROM events", "found 2 statements"),
    ("SELECT 1 /* ; */ ; DELETE FROM events", "found 2 statements"),
    ("SELECT 1 -- harmless\n; DROP TABLE events", "found 2 statements"),
    ("SELECT 1;;", "found 2 statements (1 empty)"),
    ("; SELECT 1", "found 2 statements"),
    ("", "no SQL statement found"),
    (" \t\n ", "no SQL statement found"),
    (";", "no SQL statement found"),
    ("-- only a comment", "no SQL statement found"),
    # files and the network
    ("COPY events TO '/tmp/x.csv'", "statement type COPY"),
    ("COPY (SELECT * FROM events) TO '/tmp/x.parquet' (FORMAT parquet)", "statement type COPY"),
    ("EXPORT DATABASE '/tmp/dump'", "does not parse"),
    ("SELECT * FROM read_csv('/etc/passwd')", "function read_csv is not allowed: it reads outside"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "function read_csv_auto is not allowed"),
    ("SELECT * FROM read_csv(['/etc/passwd', '/etc/shadow'])", "function read_csv is not allowed"),
    ("SELECT * FROM read_parquet('/etc/passwd')", "function read_parquet is not allowed"),
    ("SELECT * FROM read_json_auto('/etc/passwd')", "function read_json_auto is not allowed"),
    ("SELECT * FROM read_text('/etc/passwd')", "read_text is not allowed: it reads outside"),
    ("SELECT * FROM read_blob('/etc/passwd')", "read_blob is not allowed: it reads outside"),
    ("SELECT * FROM glob('/etc/*')", "function glob is not allowed: it reads outside"),
    ("SELECT * FROM sniff_csv('/etc/passwd')", "function sniff_csv is not allowed"),
    ("SELECT * FROM parquet_metadata('/tmp/x.parquet')", "parquet_metadata is not allowed"),
    ("SELECT * FROM events, read_text('/etc/shadow')", "function read_text is not allowed"),
    ("SELECT lower((SELECT content FROM read_csv_auto('/etc/passwd')))",
     "function read_csv_auto is not allowed"),
    ("SELECT * FROM events WHERE comm IN (SELECT * FROM read_csv('/etc/passwd'))",
     "function read_csv is not allowed"),
    ("SELECT * FROM '/etc/passwd'", "'/etc/passwd' is not allowed: it looks like a file path"),
    ("SELECT * FROM 'x.csv'", "table 'x.csv' is not allowed: it looks like a file path"),
    ("SELECT * FROM 'https://evil.example/x.parquet'", "it looks like a file path"),
    ("FROM '/etc/passwd'", "it looks like a file path"),
    # quoting tricks
    ("SELECT \"read_csv\"('/etc/passwd')", "function read_csv is not allowed"),
    ("SELECT * FROM \"READ_TEXT\"('/etc/passwd')", "function read_text is not allowed"),
    ("SELECT \"getenv\"('HOME')", "function getenv is not allowed"),
    ("SELECT * FROM \"events; DROP TABLE events\"", "unknown table 'events; DROP TABLE events'"),
    ("SELECT * FROM \"main\".\"events\"", "unknown table 'main.events'"),
    # extensions, settings, session state, transactions
    ("ATTACH '/tmp/other.duckdb' AS other", "statement type ATTACH"),
    ("DETACH other", "statement type DETACH"),
    ("INSTALL httpfs", "statement type INSTALL"),
    ("FORCE INSTALL httpfs", "statement type INSTALL"),
    ("LOAD httpfs", "statement type LOAD"),
    ("LOAD '/tmp/evil.duckdb_extension'", "statement type LOAD"),
    ("PRAGMA enable_profiling", "statement type PRAGMA"),
    ("SET memory_limit = '100GB'", "statement type SET"),
    ("SET enable_external_access = true", "statement type SET"),
    ("SET VARIABLE x = 1", "statement type SET"),
    ("RESET memory_limit", "statement type RESET"),
    ("CALL pragma_version()", "statement type CALL"),
    ("BEGIN", "statement type BEGIN"),
    ("BEGIN TRANSACTION", "statement type BEGIN"),
    ("COMMIT", "statement type COMMIT"),
    ("ROLLBACK", "statement type ROLLBACK"),
    ("PREPARE p AS SELECT 1", "statement type PREPARE"),
    ("EXECUTE p", "statement type EXECUTE"),
    ("DEALLOCATE p", "expected a SELECT query"),
    ("VACUUM", "statement type VACUUM"),
    ("CHECKPOINT", "expected a SELECT query"),
    ("USE other", "statement type USE"),
    ("SUMMARIZE events", "statement type SUMMARIZE"),
    ("DESCRIBE events", "statement type DESCRIBE"),
    ("SHOW TABLES", "statement type SHOW"),
    ("CREATE TABLE t AS SELECT * FROM events", "statement type CREATE TABLE"),
    ("CREATE OR REPLACE TABLE events AS SELECT 1", "statement type CREATE TABLE"),
    ("CREATE TEMP TABLE t (i INT)", "statement type CREATE TABLE"),
    ("CREATE VIEW events_v AS SELECT * FROM events", "statement type CREATE VIEW"),
    ("CREATE MACRO f(x) AS x + 1", "statement type CREATE MACRO"),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", "statement type CREATE SECRET"),
    ("CREATE SEQUENCE s", "statement type CREATE SEQUENCE"),
    ("SELECT * INTO events_copy FROM events", "SELECT ... INTO is not allowed"),
    ("SELECT * FROM events FOR UPDATE", "FOR UPDATE / FOR SHARE is not allowed"),
    ("PIVOT events ON cpu USING count(*)", "statement type PIVOT"),
    ("SELECT * FROM (PIVOT events ON cpu USING count(*))", "statement type PIVOT"),
    ("UNPIVOT events ON cpu INTO NAME k VALUE v", "statement type UNPIVOT"),
    # functions that leave the store or touch the session
    ("SELECT getenv('HOME')", "function getenv is not allowed: it reads the host environment"),
    ("SELECT current_setting('memory_limit')", "function current_setting is not allowed"),
    ("SELECT * FROM query('SELECT 42')", "function query is not allowed: it runs dynamic SQL"),
    ("SELECT * FROM query_table('events')", "function query_table is not allowed: it runs dynamic"),
    ("SELECT json_execute_serialized_sql('{}')", "it runs dynamic SQL"),
    ("SELECT * FROM duckdb_settings()", "function duckdb_settings is not allowed"),
    ("SELECT * FROM duckdb_tables()", "function duckdb_tables is not allowed"),
    ("SELECT * FROM pragma_table_info('events')", "function pragma_table_info is not allowed"),
    ("SELECT setseed(0.5)", "function setseed is not allowed: it changes session"),
    ("SELECT nextval('seq')", "function nextval is not allowed: it changes session"),
    ("SELECT currval('seq')", "function currval is not allowed"),
    ("SELECT getvariable('x')", "function getvariable is not allowed"),
    ("SELECT current_database()", "function current_database is not allowed"),
    ("SELECT version()", "introspects the session"),
    ("SELECT sql_auto_complete('SEL')", "function sql_auto_complete is not allowed"),
    ("SELECT list_aggregate([1, 2], 'sum')", "function list_aggregate is not allowed"),
    ("SELECT no_such_function(1)", "function no_such_function is not allowed"),
    ("SELECT * FROM lower('x')", "function lower is not allowed as a table source"),
    ("SELECT * FROM main.range(10)", "must not be schema-qualified"),
    ("SELECT main.lower('x')", "qualified or method-style call"),
    ("SELECT system.main.getenv('HOME')", "qualified or method-style call"),
    ("SELECT comm.lower() FROM events", "qualified or method-style call"),
    # catalog introspection and tables outside the store
    ("SELECT * FROM duckdb_tables", "table 'duckdb_tables' is not allowed: it introspects"),
    ("SELECT * FROM information_schema.tables", "it introspects the catalog"),
    ("SELECT * FROM pg_catalog.pg_tables", "it introspects the catalog"),
    ("SELECT * FROM sqlite_master", "it introspects the catalog"),
    ("SELECT * FROM secrets", "unknown table 'secrets'; known tables: events, procs,"),
    ("SELECT * FROM events JOIN other.db.t USING (pid)", "unknown table 'other.db.t'"),
    ("SELECT * FROM tp.sched", "unknown table 'tp.sched'"),
    ("SELECT * FROM tp.\"sched.sched_switch\"", "is ambiguous"),
    ("SELECT * FROM \"tp.sched\".sched_switch", "is ambiguous"),
    # CTE names must not launder a catalog table (DuckDB resolves these to the catalog)
    ("WITH RECURSIVE secrets AS (SELECT * FROM secrets) SELECT * FROM secrets",
     "unknown table 'secrets'"),
    ("WITH RECURSIVE secrets AS (SELECT * FROM secrets UNION ALL SELECT 1) SELECT * FROM secrets",
     "unknown table 'secrets'"),
    ("WITH RECURSIVE secrets AS (SELECT 1 EXCEPT SELECT * FROM secrets) SELECT * FROM secrets",
     "unknown table 'secrets'"),
    ("WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets", "unknown table 'secrets'"),
    ("WITH a AS (SELECT * FROM secrets), secrets AS (SELECT 1) SELECT * FROM a",
     "unknown table 'secrets'"),
    ("SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) "
     "UNION ALL SELECT * FROM secrets", "unknown table 'secrets'"),
    # other constructs outside the allow-list
    ("SELECT ?", "placeholders"),
    ("SELECT * FROM events WHERE pid = $1", "placeholders"),
    ("SELECT * FROM events AT (VERSION => 1)", "time travel"),
    # sqlglot misreads E'' escape strings, so they are refused rather than re-rendered
    ("SELECT E'a\\'b; DELETE FROM events; --'", "ByteString is not allowed"),
    # raw text checks
    ("SELECT 'a\x00b'", "control character U+0000"),
    ("SELECT " + "(" * 3000 + "1" + ")" * 3000, "nested too deeply"),
]


@pytest.mark.parametrize(("sql", "reason"), REJECTED, ids=[repr(s[:60]) for s, _ in REJECTED])
def test_rejected(sql: str, reason: str) -> None:
    with pytest.raises(QueryRejected) as info:
        validate(sql, KNOWN)
    assert reason in str(info.value)


def test_corpus_is_large() -> None:
    assert len(REJECTED) >= 50


def test_size_cap_is_checked_on_raw_bytes_before_parsing() -> None:
    sql = "SELECT '" + "x" * 69_990 + "'"  # would parse fine
    with pytest.raises(QueryRejected, match=f"SQL text is {len(sql)} bytes; the limit is 64000"):
        validate(sql, KNOWN)
    with pytest.raises(QueryRejected, match="SQL text is 11 bytes; the limit is 10"):
        validate("SELECT 'é'", KNOWN, max_sql_bytes=10)  # 10 characters, but 11 UTF-8 bytes


def test_not_a_string() -> None:
    with pytest.raises(QueryRejected, match="must be a string"):
        validate(b"SELECT 1", KNOWN)  # type: ignore[arg-type]


# Legitimate queries: (sql, tables read).
ACCEPTED: list[tuple[str, set[str]]] = [
    ("SELECT 1", set()),
    ("SELECT 1;", set()),
    ("SELECT count(*) FROM events", {"events"}),
    ("FROM events", {"events"}),
    ("FROM events SELECT pid, comm", {"events"}),
    ("SELECT * FROM EVENTS", {"events"}),
    ("SELECT comm, count(*) AS n, avg(latency_ns), max(latency_ns) FROM events "
     "GROUP BY comm HAVING count(*) > 1 ORDER BY n DESC, comm LIMIT 10", {"events"}),
    ("SELECT comm, count(*) FROM events GROUP BY ALL ORDER BY ALL", {"events"}),
    ("SELECT cpu, quantile_cont(latency_ns, 0.99), median(latency_ns), "
     "approx_count_distinct(pid), arg_max(comm, latency_ns) FROM events GROUP BY cpu", {"events"}),
    ("SELECT pid, ts, row_number() OVER (PARTITION BY pid ORDER BY ts) AS rn, "
     "lag(ts) OVER w, sum(latency_ns) OVER (ORDER BY ts ROWS BETWEEN 2 PRECEDING AND "
     "CURRENT ROW) FROM events WINDOW w AS (PARTITION BY pid ORDER BY ts)", {"events"}),
    ("SELECT pid, comm FROM events QUALIFY row_number() OVER (PARTITION BY pid "
     "ORDER BY ts DESC) = 1", {"events"}),
    ("SELECT count(*) FILTER (WHERE latency_ns > 1000) AS slow, count(*) FROM events",
     {"events"}),
    ("SELECT e.comm, p.ppid FROM events e JOIN procs p ON e.pid = p.pid "
     "WHERE p.ppid IS NOT NULL", {"events", "procs"}),
    ("SELECT * FROM events LEFT JOIN procs USING (pid)", {"events", "procs"}),
    ("SELECT * FROM events e ASOF JOIN procs p ON e.pid = p.pid AND e.ts >= p.ts",
     {"events", "procs"}),
    ("SELECT * FROM events WHERE pid IN (SELECT pid FROM procs WHERE comm LIKE 'ss%')",
     {"events", "procs"}),
    ("SELECT * FROM events WHERE EXISTS (SELECT 1 FROM procs WHERE procs.pid = events.pid)",
     {"events", "procs"}),
    ("WITH slow AS (SELECT * FROM events WHERE latency_ns > 100) "
     "SELECT comm, count(*) FROM slow GROUP BY comm", {"events"}),
    ("WITH a AS (SELECT pid FROM events), b AS (SELECT * FROM a) SELECT * FROM b", {"events"}),
    ("WITH events AS (SELECT 1 AS pid) SELECT * FROM events", set()),
    ("WITH p AS (SELECT pid FROM procs) SELECT * FROM events WHERE pid IN (SELECT pid FROM p)",
     {"events", "procs"}),
    ("WITH b AS (SELECT 1 AS x) SELECT * FROM b UNION ALL SELECT * FROM b", set()),
    ("WITH RECURSIVE tree(pid, depth) AS (SELECT pid, 0 FROM procs WHERE ppid = 0 "
     "UNION ALL SELECT p.pid, t.depth + 1 FROM procs p JOIN tree t ON p.ppid = t.pid "
     "WHERE t.depth < 10) SELECT * FROM tree", {"procs"}),
    ("SELECT CASE WHEN latency_ns > 1000 THEN 'slow' WHEN latency_ns > 100 THEN 'ok' "
     "ELSE 'fast' END AS bucket, count(*) FROM events GROUP BY 1", {"events"}),
    ("SELECT comm FROM events WHERE regexp_matches(comm, '^(ba|z)sh$')", {"events"}),
    ("SELECT regexp_extract(comm, '([a-z]+)', 1), regexp_replace(comm, '[0-9]', '#', 'g') "
     "FROM events", {"events"}),
    ("SELECT date_trunc('minute', ts) AS m, count(*) FROM events GROUP BY m ORDER BY m",
     {"events"}),
    ("SELECT time_bucket(INTERVAL '10 seconds', ts) AS b, count(*) FROM events GROUP BY b",
     {"events"}),
    ("SELECT epoch(ts), epoch_ms(ts), epoch_ns(ts), ts - INTERVAL 5 MINUTE, "
     "ts + to_seconds(30), strftime(ts, '%H:%M'), extract(hour FROM ts) FROM events",
     {"events"}),
    ("SELECT * FROM events WHERE ts > now() - INTERVAL '1 hour' OR ts < current_timestamp",
     {"events"}),
    ("SELECT (epoch_ns(max(ts)) - epoch_ns(min(ts))) / 1e9 AS span_s FROM events", {"events"}),
    ("SELECT make_timestamp_ns(epoch_ns(ts)) = ts FROM events", {"events"}),
    ("SELECT list(comm ORDER BY ts), list_distinct(list(cpu)), len(args), args[1], "
     "list_transform(args, lambda x: upper(x)), list_filter(args, lambda x: x LIKE '-%') "
     "FROM events GROUP BY args", {"events"}),
    ("SELECT unnest(args) AS arg FROM events", {"events"}),
    ("SELECT e.pid, a.arg FROM events e, unnest(e.args) AS a(arg)", {"events"}),
    ("SELECT * FROM range(5) r(i)", set()),
    ("SELECT * FROM generate_series(1, 3)", set()),
    ("SELECT comm FROM events WHERE comm LIKE 'ba%' OR comm ILIKE 'Z%' "
     "OR comm NOT LIKE '%x%'", {"events"}),
    ("SELECT lower(comm), upper(comm), length(comm), concat(comm, '/', pid), comm || '!', "
     "substr(comm, 1, 2), split_part(comm, 'a', 1), starts_with(comm, 'b'), "
     "coalesce(comm, ''), nullif(pid, 0), greatest(pid, 1), abs(-pid), "
     "round(latency_ns / 3.0, 2), pid % 2, hash(comm), md5(comm) FROM events", {"events"}),
    ("SELECT CAST(pid AS VARCHAR), pid::BIGINT, TRY_CAST(comm AS INTEGER), "
     "{'p': pid, 'c': comm} AS s, [pid, cpu] AS l FROM events", {"events"}),
    ("SELECT * FROM tp.sched.sched_switch", {"tp.sched.sched_switch"}),
    ("SELECT s.prev_pid, count(*) FROM tp.sched.sched_switch AS s GROUP BY s.prev_pid",
     {"tp.sched.sched_switch"}),
    ("SELECT * FROM \"tp.sched.sched_switch\"", {"tp.sched.sched_switch"}),
    ("SELECT pid FROM events UNION SELECT pid FROM procs EXCEPT SELECT 0", {"events", "procs"}),
    ("SELECT pid FROM events INTERSECT SELECT pid FROM procs", {"events", "procs"}),
    ("(SELECT pid FROM events ORDER BY pid LIMIT 2)", {"events"}),
    ("SELECT * EXCLUDE (args) FROM events", {"events"}),
    ("SELECT DISTINCT ON (pid) pid, ts FROM events ORDER BY pid, ts", {"events"}),
    ("SELECT * FROM events USING SAMPLE 10 ROWS", {"events"}),
    ("SELECT \"DELETE\" FROM (SELECT 1 AS \"DELETE\")", set()),
    ("SELECT 1 AS \"select\", 'DROP TABLE events; --' AS s", set()),
    ("SELECT random() < 2, uuid() IS NOT NULL", set()),
    ("SELECT pid FROM events ORDER BY latency_ns DESC NULLS LAST LIMIT 3 OFFSET 1", {"events"}),
    ("SELECT 1 -- trailing */ DELETE FROM events", set()),
    ("SELECT $$it's; DROP TABLE events$$ AS s", set()),  # re-rendered as a plain literal
    ("SELECT MAP {'a': 1} AS m, CAST(ts AT TIME ZONE 'UTC' AS VARCHAR) FROM events",
     {"events"}),
    ("WITH Slow AS (SELECT pid FROM events) SELECT * FROM SLOW", {"events"}),
    ("SELECT 1 /* DELETE FROM events */", set()),
]


@pytest.mark.parametrize(("sql", "tables"), ACCEPTED, ids=[repr(s[:60]) for s, _ in ACCEPTED])
def test_accepted(sql: str, tables: set[str]) -> None:
    checked = validate(sql, KNOWN)
    assert isinstance(checked, Checked)
    assert checked.tables == frozenset(tables)
    assert "DELETE FROM" not in checked.sql  # comments are dropped from the normalized SQL
    assert validate(checked.sql, KNOWN) == checked  # normalization is a fixed point


def test_checked_is_frozen() -> None:
    checked = validate("FROM events", KNOWN)
    assert checked == Checked("SELECT * FROM events", frozenset({"events"}))
    with pytest.raises(AttributeError):
        checked.sql = "DELETE FROM events"  # type: ignore[misc]


def test_table_names_fold_case_like_duckdb_and_no_further() -> None:
    assert validate("SELECT * FROM Tp.Sched.SCHED_SWITCH", KNOWN).tables == {
        "tp.sched.sched_switch"
    }
    # str.casefold() would equate these; DuckDB does not, so neither may we
    with pytest.raises(QueryRejected, match="unknown table 'eventß'"):
        validate("SELECT * FROM eventß", {"eventss"})


def test_known_tables_must_not_be_a_string() -> None:
    with pytest.raises(TypeError):
        validate("SELECT 1", "events")


@pytest.fixture
def store() -> duckdb.DuckDBPyConnection:
    """An in-memory store shaped like kernsight's, with every ACCEPTED table name."""
    conn = duckdb.connect(":memory:")
    conn.execute("""
        CREATE TABLE events AS SELECT
            i AS pid, TIMESTAMP '2024-01-01' + to_seconds(i * 7) AS ts, i % 2 AS cpu,
            ['bash', 'zsh', 'sshd', 'cron'][i % 4 + 1] AS comm, i * 97 % 2000 AS latency_ns,
            ['-c', 'x' || i] AS args
        FROM range(40) t(i);
        CREATE TABLE procs AS SELECT
            i AS pid, CASE WHEN i = 0 THEN 0 ELSE i // 2 END AS ppid,
            ['bash', 'sshd'][i % 2 + 1] AS comm, TIMESTAMP '2024-01-01' AS ts
        FROM range(40) t(i);
        ATTACH ':memory:' AS tp;
        CREATE SCHEMA tp.sched;
        CREATE TABLE tp.sched.sched_switch AS
            SELECT i AS prev_pid, i + 1 AS next_pid FROM range(10) t(i);
        CREATE TABLE "tp.sched.sched_switch" AS FROM tp.sched.sched_switch;
    """)
    return conn


def test_normalized_sql_means_the_same_in_duckdb(store: duckdb.DuckDBPyConnection) -> None:
    """Executing Checked.sql gives the same rows as the agent's text (sqlglot's rewriting is
    what runs, so it must not change the meaning of legitimate queries)."""
    for sql, _ in ACCEPTED:
        checked = validate(sql, KNOWN)
        raw = store.execute(sql).fetchall()
        normalized = store.execute(checked.sql).fetchall()
        if any(word in sql for word in ("random()", "uuid()", "SAMPLE")):
            raw, normalized = len(raw), len(normalized)  # nondeterministic: compare shape
        elif not sqlglot.parse_one(sql, read="duckdb").args.get("order"):
            # Only a top-level ORDER BY fixes row order (one inside an aggregate does not).
            raw, normalized = sorted(map(repr, raw)), sorted(map(repr, normalized))
        assert normalized == raw, sql


# --- second layer: the hardened connection, tested WITHOUT the validator ----------------

@pytest.fixture
def hardened(store: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    harden(store, memory_limit="256MB", threads=1)
    return store


def _settings(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(conn.execute("SELECT name, value FROM duckdb_settings()").fetchall())


def test_harden_sets_and_locks(hardened: duckdb.DuckDBPyConnection) -> None:
    s = _settings(hardened)
    assert s["enable_external_access"] == "false"
    assert s["autoinstall_known_extensions"] == "false"
    assert s["autoload_known_extensions"] == "false"
    assert s["allow_community_extensions"] == "false"
    assert s["threads"] == "1"
    assert s["temp_directory"] == ""
    assert s["lock_configuration"] == "true"
    assert hardened.execute("SELECT count(*) FROM events").fetchone() == (40,)
    harden(hardened)  # idempotent on an already hardened instance


def test_hardened_connection_cannot_write_files(
    hardened: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    target = tmp_path / "x.csv"
    with pytest.raises(duckdb.Error):
        hardened.execute(f"COPY events TO '{target}'")
    with pytest.raises(duckdb.Error):
        hardened.execute(f"EXPORT DATABASE '{tmp_path / 'dump'}'")
    with pytest.raises(duckdb.Error):
        hardened.execute(f"ATTACH '{tmp_path / 'other.duckdb'}' AS other")
    assert list(tmp_path.iterdir()) == []


def test_hardened_connection_cannot_write_to_the_temp_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disabling external access alone whitelists the temp directory (./.tmp by default)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    conn = duckdb.connect(":memory:")
    harden(conn)
    with pytest.raises(duckdb.Error):
        conn.execute("COPY (SELECT 1) TO '.tmp/x.csv'")
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_hardened_connection_cannot_read_files(hardened: duckdb.DuckDBPyConnection) -> None:
    for sql in (
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM '/etc/passwd'",
    ):
        with pytest.raises(duckdb.Error):
            hardened.execute(sql).fetchall()


def test_hardened_connection_cannot_touch_extensions(hardened: duckdb.DuckDBPyConnection) -> None:
    for sql in ("INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL json"):
        with pytest.raises(duckdb.Error):
            hardened.execute(sql)


def test_hardened_connection_cannot_change_settings(hardened: duckdb.DuckDBPyConnection) -> None:
    for sql in (
        "SET memory_limit = '10GB'",
        "RESET memory_limit",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "SET allowed_paths = ['/etc/passwd']",
        "SET threads = 64",
        "PRAGMA threads = 64",
    ):
        with pytest.raises(duckdb.Error):
            hardened.execute(sql)
    s = _settings(hardened)
    assert (s["enable_external_access"], s["threads"]) == ("false", "1")


def test_harden_does_not_make_the_store_read_only(hardened: duckdb.DuckDBPyConnection) -> None:
    """Documents the limit of the second layer: DuckDB has no runtime read-only switch, so
    DML (including DuckDB 2.0's data-modifying CTEs, which report as SELECT statements)
    still works on a hardened connection.  Only the validator stops these."""
    sql = "WITH d AS (DELETE FROM procs RETURNING *) SELECT count(*) FROM d"
    assert [s.type for s in duckdb.extract_statements(sql)] == [duckdb.StatementType.SELECT]
    assert hardened.execute(sql).fetchone() == (40,)
    with pytest.raises(QueryRejected, match="DELETE is not allowed"):
        validate(sql, KNOWN)


def test_harden_refuses_an_instance_locked_unhardened() -> None:
    conn = duckdb.connect(":memory:")
    conn.execute("SET lock_configuration = true")
    with pytest.raises(RuntimeError, match="not hardened"):
        harden(conn)


def test_harden_skips_optional_settings_missing_from_this_duckdb(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = sandbox._settings
    monkeypatch.setattr(sandbox, "_settings", lambda c: {
        k: v for k, v in real(c).items() if k != "allow_extension_repositories"
    })
    conn = duckdb.connect(":memory:")
    with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
        harden(conn)
    assert "allow_extension_repositories" in caplog.text
    assert real(conn)["lock_configuration"] == "true"


def test_harden_refuses_when_a_required_setting_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = sandbox._settings
    monkeypatch.setattr(sandbox, "_settings", lambda c: {
        k: v for k, v in real(c).items() if k != "enable_external_access"
    })
    conn = duckdb.connect(":memory:")
    with pytest.raises(RuntimeError, match="enable_external_access"):
        harden(conn)
    assert real(conn)["lock_configuration"] == "false"  # nothing was half-applied


def test_harden_rejects_bad_threads() -> None:
    with pytest.raises(ValueError):
        harden(duckdb.connect(":memory:"), threads=0)
