"""The rule engine against the real kernel: each rule family is performed for real (copies, temp
dirs, the test's own children) and the alert must name the pid the test spawned; rule files
with mistakes are refused with errors that say where and what."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pyarrow.compute as pc
import pytest

from kernsight.detect.rules import RuleError, load_file, load_rules
from kernsight.sources import SOURCES

TABLES = {n: s.schema() for n, s in SOURCES.items()}
PY = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
RATE_LIMIT_S = 1.0

WINDOW_RULE = """
rules:
  - id: test-many-temp-opens
    title: One process opened many distinct test files
    description: windowed test rule
    source: files
    condition: "path LIKE '/tmp/ks-win-%'"
    severity: low
    tags: [T1083]
    window: {seconds: 10, group_by: [pid], having: "files >= 5"}
    aggregates: {files: "count(DISTINCT path)"}
    output: "pid {pid} opened {files} test files"
"""


# -- loading (no kernel needed) --------------------------------------------------------------

RULE = {
    "id": "r1", "title": "t", "description": "d", "source": "process",
    "condition": "event = 'exec'", "severity": "high", "tags": "[T1059]", "output": "'{comm}'",
}  # fmt: skip


def _file(tmp_path: Path, **over: str | None) -> Path:
    fields = {**RULE, **over}
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items() if v is not None)
    p = tmp_path / "bad.yaml"
    p.write_text("rules:\n  - " + body.lstrip())
    return p


@pytest.mark.parametrize(
    ("over", "expect"),
    [
        ({"source": "nosuch"}, "unknown source 'nosuch'"),
        ({"condition": '"nope = 1"'}, "unknown column 'nope' in table process"),
        ({"condition": '"event = = 1"'}, "bad SQL"),
        ({"condition": '"event = 1) OR (1 = 1"'}, "bad SQL"),
        ({"condition": '"length(filename)"'}, "must be a boolean expression"),
        ({"condition": '"pid IN (SELECT pid FROM files)"'}, "subqueries are not allowed"),
        ({"condition": '"count(*) > 1"'}, "aggregates need"),
        ({"condition": "\"repeat(argv, 1000) = ''\""}, "repeat"),
        ({"condition": "\"read_csv('/etc/shadow') IS NULL\""}, "condition"),
        ({"severity": "urgent"}, "bad severity 'urgent'"),
        ({"tags": "[exec]"}, "not an ATT&CK technique id"),
        ({"output": "'{nope}'"}, "unknown column 'nope' in placeholder"),
        ({"output": "'{comm!r}'"}, "format spec or conversion"),
        ({"title": None}, "missing field(s): title"),
        ({"conditon": "x"}, "unknown field(s): conditon"),
        ({"exceptions": '["filename LIKE 1 +"]'}, "exception #1: bad SQL"),
    ],
)
def test_bad_rules_are_refused_with_file_rule_and_reason(tmp_path: Path, over, expect) -> None:
    path = _file(tmp_path, **over)
    with pytest.raises(RuleError) as e:
        load_file(path, TABLES)
    msg = str(e.value)
    assert str(path) in msg and "'r1'" in msg and expect in msg, msg


def test_rule_files_ids_and_user_overrides(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("rules: {id: r1}\n")
    with pytest.raises(RuleError, match="one key, `rules`, holding a list"):
        load_file(tmp_path / "x.yaml", TABLES)
    (tmp_path / "x.yaml").write_text("rules: [\n")
    with pytest.raises(RuleError, match="not valid YAML"):
        load_file(tmp_path / "x.yaml", TABLES)
    defaults = load_rules(TABLES)
    assert {r.id for r in defaults} >= {"exec-from-temp-dir"}
    assert all(r.tags and r.severity and r.description for r in defaults)
    user = tmp_path / "user"
    user.mkdir()
    (user / "mine.yaml").write_text(
        textwrap.dedent("""\
        rules:
          - id: exec-from-temp-dir
            title: replaced
            description: a user rule replaces the default one with its id
            source: process
            condition: "event = 'exec' AND filename LIKE '/opt/%'"
            severity: low
            tags: [T1059]
            output: "{filename}"
            enabled: false
        """)
    )
    merged = {r.id: r for r in load_rules(TABLES, [user])}
    assert merged["exec-from-temp-dir"].title == "replaced"
    assert not merged["exec-from-temp-dir"].enabled and len(merged) == len(defaults)
    (user / "other.yaml").write_text((user / "mine.yaml").read_text())
    with pytest.raises(RuleError, match="id already used"):
        load_rules(TABLES, [user])
    (user / "other.yaml").write_text(WINDOW_RULE.replace("files >= 5", "nope >= 5"))
    with pytest.raises(RuleError, match="unknown column 'nope'"):
        load_rules(TABLES, [user])


# -- against the kernel ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from conftest import bpf_unavailable

    if bpf_unavailable():
        pytest.skip(bpf_unavailable())
    from kernsight.runtime import Runtime

    state = tmp_path_factory.mktemp("state")
    (state / "rules").mkdir()
    (state / "rules" / "test.yaml").write_text(WINDOW_RULE)
    runtime = Runtime(state, alert_rate_limit_s=RATE_LIMIT_S)
    runtime.seen = []  # type: ignore[attr-defined]  # real batches, for the agreement test
    runtime.add_listener(lambda b: runtime.seen.append(b) if len(runtime.seen) < 2000 else None)
    runtime.start()
    yield runtime
    runtime.close()


@pytest.fixture
def tmpdir_in_tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ks-detect-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def wait_alert(rt, rule: str, pid: int, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    cursor = None
    while time.monotonic() < deadline:
        page = rt.detector.read(cursor, rule=rule, wait_ms=500)
        cursor = page.next_cursor
        for a in page.rows:
            if a["pid"] == pid:
                return a
    raise AssertionError(f"no {rule} alert for pid {pid} within {timeout} s")


def no_alert(rt, rule: str | None, pid: int) -> None:
    """Everything the kernel gave so far is evaluated, and `rule` (None: any) spared `pid`."""
    rt.capture.flush()
    rt.detector.flush()
    assert [a for a in rt.detector.read(rule=rule, limit=5000).rows if a["pid"] == pid] == []


@pytest.mark.bpf
def test_exec_from_tmp_alerts_with_the_childs_pid(rt, tmpdir_in_tmp: Path) -> None:
    sub = rt.subscriptions.create("SELECT rule_id, pid FROM alerts WHERE severity_level >= 3")
    exe = tmpdir_in_tmp / "true-copy"
    shutil.copy("/bin/true", exe)
    child = subprocess.Popen([str(exe), "ks-arg"])
    child.wait()
    a = wait_alert(rt, "exec-from-temp-dir", child.pid)
    pushed: list[dict] = []
    deadline = time.monotonic() + 15
    while not pushed and time.monotonic() < deadline:  # pushed to live subscriptions too
        rows = rt.subscriptions.poll(sub, wait_ms=500).rows.to_pylist()
        pushed = [r for r in rows if r["pid"] == child.pid]
    rt.subscriptions.unsubscribe(sub)
    assert pushed == [{"rule_id": "exec-from-temp-dir", "pid": child.pid}]
    # a relative path from inside /tmp: caught by where the kernel found the file
    rel = subprocess.Popen(["./true-copy"], cwd=tmpdir_in_tmp)
    rel.wait()
    assert (
        f"executed ./true-copy ({exe})" in wait_alert(rt, "exec-from-temp-dir", rel.pid)["output"]
    )
    assert a["severity"] == "high" and a["comm"] == "true-copy" and "T1059" in a["tags"]
    assert str(exe) in a["output"] and "ks-arg" in a["output"]
    rt.capture.flush()
    rt.detector.flush()
    got = rt.engine.query(
        f"SELECT rule_id, severity_level, suppressed FROM alerts WHERE pid = {child.pid}"
    ).to_json()["rows"]
    assert got == [["exec-from-temp-dir", 3, 0]]  # queryable in SQL like any table


def run_py(code: str) -> int:
    """Run code in a child python (comm python3); its pid."""
    child = subprocess.Popen([PY, "-c", code])
    assert child.wait() == 0
    return child.pid


def opens(*paths: str | Path, flags: str = "os.O_WRONLY | os.O_APPEND") -> str:
    """Code that opens each path with flags and closes it without writing (ENOENT is fine)."""
    lines = ["import os"]
    for p in paths:
        lines += ["try:", f"    os.close(os.open({str(p)!r}, {flags}, 0o600))",
                  "except FileNotFoundError:", "    pass"]  # fmt: skip
    return "\n".join(lines)


@pytest.fixture
def fake_home(tmp_path: Path) -> Path:
    """A temp directory laid out like a home (for the ~/... rules): nothing real is touched."""
    for d in (".ssh", ".config/systemd/user"):
        (tmp_path / d).mkdir(parents=True)
    return tmp_path


@pytest.mark.bpf
def test_fileless_exec_from_memfd_and_the_sealed_exception(rt) -> None:
    tag = uuid.uuid4().hex[:8]

    def run(flags: str, seal: str) -> str:
        return (
            "import fcntl, os\n"
            f"fd = os.memfd_create('x', {flags})\n"
            "os.write(fd, open('/bin/true', 'rb').read())\n"
            f"{seal}"
            f"os.execv(f'/proc/self/fd/{{fd}}', ['memfd-{tag}'])\n"
        )

    loose = run_py(run("0", ""))
    a = wait_alert(rt, "exec-from-memfd", loose)
    assert a["severity"] == "critical" and f"memfd-{tag}" in a["output"]
    # sealed against writes (F_SEAL_SEAL|SHRINK|GROW|WRITE), as runc and sandbox agents do
    seal = "fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 15)\n"
    sealed = run_py(run("os.MFD_ALLOW_SEALING", seal))
    a = wait_alert(rt, "exec-from-sealed-memfd", sealed)
    assert a["severity"] == "low" and "seals 15" in a["output"]
    no_alert(rt, "exec-from-memfd", sealed)


@pytest.mark.bpf
def test_reverse_shell_with_socket_stdio(rt) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        peer, _ = srv.accept()
        with client, peer:
            child = subprocess.Popen(["/bin/sh", "-c", "exit 0"], stdin=client, stdout=client,
                                     stderr=client)  # fmt: skip
            child.wait()
    a = wait_alert(rt, "reverse-shell", child.pid)
    assert a["severity"] == "critical" and "fd bits 7" in a["output"]
    # the same shell on pipes is an ordinary pipeline
    quiet = subprocess.Popen(["/bin/sh", "-c", "exit 0"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)  # fmt: skip
    quiet.communicate()
    no_alert(rt, "reverse-shell", quiet.pid)


@pytest.mark.bpf
def test_credential_access_shadow_and_ssh_keys(rt, fake_home: Path) -> None:
    key = fake_home / ".ssh" / "id_ed25519"
    key.write_text("not a real key\n")
    pid = run_py(opens("/etc/shadow", "/etc/gshadow", key, flags="os.O_RDONLY"))
    a = wait_alert(rt, "credential-shadow-read", pid)
    assert a["severity"] == "high" and "/etc/shadow" in a["output"]
    a = wait_alert(rt, "credential-ssh-key-read", pid)
    assert str(key) in a["output"]
    # the account tools and OpenSSH are expected to read them: ssh-keygen reading the key
    keygen = shutil.which("ssh-keygen")
    if keygen:
        p = subprocess.Popen([keygen, "-l", "-f", str(key)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
        p.wait()
        no_alert(rt, "credential-ssh-key-read", p.pid)


@pytest.mark.bpf
def test_persistence_writes(rt, fake_home: Path) -> None:
    # Real system files are opened O_WRONLY|O_APPEND and closed without a byte written (or
    # fail with ENOENT where this host has none); the per-user ones live in a temp home.
    (fake_home / ".ssh" / "authorized_keys").write_text("")
    (fake_home / ".bashrc").write_text("")
    unit = fake_home / ".config" / "systemd" / "user" / "ks-test.service"
    pid = run_py(opens("/etc/passwd", "/etc/sudoers", "/etc/sudoers.d/ks-test", "/etc/crontab",
                       "/var/spool/cron/crontabs/root", fake_home / ".ssh" / "authorized_keys",
                       fake_home / ".bashrc"))  # fmt: skip
    pid_unit = run_py(opens(unit, flags="os.O_WRONLY | os.O_CREAT"))
    unit.unlink()
    for rule, needle in [
        ("persistence-account-files-write", "/etc/passwd"),
        ("persistence-sudoers-write", "/etc/sudoers"),
        ("persistence-cron-write", "/etc/crontab"),
        ("persistence-authorized-keys-write", "authorized_keys"),
        ("persistence-shell-profile-write", ".bashrc"),
    ]:
        a = wait_alert(rt, rule, pid)
        assert needle in a["output"], (rule, a)
    a = wait_alert(rt, "persistence-systemd-unit-write", pid_unit)
    assert "ks-test.service" in a["output"] and a["severity"] == "high"
    # reading them is not a write
    reader = run_py(opens("/etc/passwd", fake_home / ".bashrc", flags="os.O_RDONLY"))
    no_alert(rt, None, reader)


@pytest.mark.bpf
def test_defence_evasion_log_truncation_history_and_preload(rt, fake_home: Path) -> None:
    log = Path(f"/var/log/ks-test-{uuid.uuid4().hex[:8]}.log")
    log.write_text("evidence\n")
    hist = fake_home / ".bash_history"
    hist.write_text("ls\n")
    try:
        sh = subprocess.Popen(["/bin/sh", "-c", f": > '{log}'; : > '{hist}'"])
        sh.wait()
        preload = run_py(opens("/etc/ld.so.preload"))
    finally:
        log.unlink()
    a = wait_alert(rt, "evasion-log-truncate", sh.pid)
    assert str(log) in a["output"] and a["comm"] == "sh"
    a = wait_alert(rt, "evasion-history-clear", sh.pid)
    assert str(hist) in a["output"]
    a = wait_alert(rt, "evasion-ld-so-preload-write", preload)
    assert a["severity"] == "critical"


@pytest.mark.bpf
def test_repeats_are_rate_limited_and_counted(rt, tmpdir_in_tmp: Path) -> None:
    # One process re-executing itself from /tmp: the same (rule, pid) six times.
    script = tmpdir_in_tmp / "again.sh"
    script.write_text('#!/bin/sh\n[ "$1" -gt 0 ] && exec "$0" $(( $1 - 1 ))\nexit 0\n')
    script.chmod(0o755)
    child = subprocess.Popen([str(script), "5"])
    child.wait()
    first = wait_alert(rt, "exec-from-temp-dir", child.pid)
    assert first["suppressed"] == 0
    # when the rate-limit window ends, the last repeat is raised carrying the ones before it
    deadline = time.monotonic() + RATE_LIMIT_S + 3
    rows: list[dict] = []
    while time.monotonic() < deadline and len(rows) < 2:
        rows = [a for a in rt.detector.read(rule="exec-from-temp-dir", limit=5000).rows
                if a["pid"] == child.pid]  # fmt: skip
        time.sleep(0.1)
    assert len(rows) == 2 and rows[1]["suppressed"] == 4, rows
    assert len(rows) + sum(a["suppressed"] for a in rows) == 6  # every match accounted for


@pytest.mark.bpf
def test_windowed_rule_fires_per_group(rt) -> None:
    tag = uuid.uuid4().hex[:8]
    code = (f"import os\nfor i in range(6):\n"
            f"    fd = os.open('/tmp/ks-win-{tag}-%d' % i, os.O_RDONLY | os.O_CREAT, 0o600)\n"
            f"    os.close(fd)\n    os.unlink('/tmp/ks-win-{tag}-%d' % i)\n")  # fmt: skip
    child = subprocess.Popen(["python3", "-c", code])
    child.wait()
    a = wait_alert(rt, "test-many-temp-opens", child.pid)
    assert a["output"] in (f"pid {child.pid} opened {n} test files" for n in (5, 6))
    assert f'"group": {{"pid": {child.pid}}}' in a["key"] and a["severity"] == "low"


@pytest.mark.bpf
def test_mcp_alerts_long_poll_sees_exec_from_tmp(rt, tmpdir_in_tmp: Path) -> None:
    from mcp import Client

    from kernsight.server.app import KernsightMCP

    app = KernsightMCP(rt)
    exe = tmpdir_in_tmp / "mcp-true"
    shutil.copy("/bin/true", exe)
    spawned: list[int] = []

    def spawn() -> None:
        time.sleep(0.3)  # the long poll is already waiting
        p = subprocess.Popen([str(exe)])
        p.wait()
        spawned.append(p.pid)

    async def main() -> None:
        async with Client(app.server) as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            assert "alerts" in tools
            r = await c.call_tool("alerts", {"min_severity": "high"})
            cursor = r.structured_content["next_cursor"]
            t = threading.Thread(target=spawn)
            t.start()
            seen: list = []
            deadline = time.monotonic() + 15
            while not seen and time.monotonic() < deadline:
                r = await c.call_tool("alerts", {"cursor": cursor, "wait_ms": 3000,
                                                 "rule": "exec-from-temp-dir"})  # fmt: skip
                assert not r.is_error, r.content[0].text
                sc = r.structured_content
                cursor = sc["next_cursor"]
                cols = sc["columns"]
                seen = [dict(zip(cols, row, strict=True)) for row in sc["rows"]
                        if spawned and row[cols.index("pid")] == spawned[0]]  # fmt: skip
            t.join()
            assert seen, "the exec from /tmp did not reach the alerts long poll"
            assert seen[0]["rule_id"] == "exec-from-temp-dir" and seen[0]["severity"] == "high"
            assert "<untrusted-data" in r.content[0].text and sc["lost"] == 0
            r = await c.call_tool("alerts", {"min_severity": "urgent"})
            assert r.is_error and "unknown severity" in r.content[0].text
            r = await c.call_tool("alerts", {"cursor": 10**9})
            assert r.is_error and "out of range" in r.content[0].text

    anyio.run(main)


def test_status_counts_unevaluated_rows() -> None:
    # no kernel needed: an overloaded engine says how many rows it skipped
    import pyarrow as pa

    from kernsight.capture import Batch
    from kernsight.detect.engine import Detector

    rules = [r for r in load_rules(TABLES) if r.source == "process"][:1]
    with Detector(rules, TABLES, max_queued_batches=1) as det:
        det._stop.set()  # the worker stops taking batches: the queue fills
        det._worker.join()
        row = {n: [None] for n in TABLES["process"].names}
        data = pa.RecordBatch.from_pydict(row, schema=TABLES["process"])
        for seq in (1, 2, 3):
            det.on_batch(Batch("process", seq, data, 0))
        assert det.status()["unevaluated_rows"] == 2
        assert "not evaluated" in det.status()["errors"][-1]


EDGE = {
    "path": [None, "//etc//shadow", "/./etc/./passwd", "shadow", "/etc/shadow\n",
             "/home/u/.ssh/id_rsa.pub", "/var/log/x", "/root/.bash_history"],
    "comm": [None, "cat", "sshd", "dpkg", "vim", "python3", "sh", "bash"],
    "flags": [None, 0, 1, 0x241, 0x200, 0x80000, 2, 0x201],
}  # fmt: skip


@pytest.mark.bpf
def test_arrow_kernels_agree_with_duckdb_on_real_and_edge_rows(rt) -> None:
    """The engine runs the pack's predicates as Arrow kernels; DuckDB is the reference."""
    import duckdb
    import pyarrow as pa

    from kernsight.detect.vector import compile_predicate

    rt.capture.flush()
    batches = {src: [b.data for b in rt.seen if b.source == src] for src in ("process", "files")}
    n = len(EDGE["path"])
    edge = {c: EDGE.get(c, [None] * n) for c in TABLES["files"].names}
    batches["files"].append(pa.RecordBatch.from_pydict(edge, schema=TABLES["files"]))
    whole = {src: pa.Table.from_batches(bs, schema=TABLES[src]).combine_chunks().to_batches()
             for src, bs in batches.items()}  # fmt: skip
    con = duckdb.connect()
    checked = 0
    for rule in load_rules(TABLES):
        if rule.source not in whole:
            continue
        mask = compile_predicate(rule.predicate, TABLES[rule.source])
        assert mask is not None, f"{rule.id} fell back to DuckDB"
        for data in whole.get(rule.source, []):  # packets/drops: tests/test_network.py
            con.register("t", data)
            want = con.sql(f"SELECT {rule.predicate} AS m FROM t").to_arrow_table()["m"]
            con.unregister("t")
            got = mask(data).to_pylist()
            ref = pc.fill_null(want.combine_chunks(), False).to_pylist()
            diff = [data.slice(i, 1).drop_columns(["ts"]).to_pylist()[0]
                    for i, (x, y) in enumerate(zip(got, ref, strict=True)) if x != y]  # fmt: skip
            assert not diff, (rule.id, diff[:3])
            checked += data.num_rows
    assert checked > 1000


@pytest.mark.bpf
def test_cli_rules_list_test_and_alerts(rt, tmpdir_in_tmp: Path, monkeypatch) -> None:
    import json

    from typer.testing import CliRunner

    from kernsight.cli import app

    monkeypatch.setenv("KERNSIGHT_STATE_DIR", str(rt.state_dir))  # --state-dir sets it; undone

    def ks(*args: str):  # noqa: ANN202  (in-process: the same code as the command)
        return CliRunner().invoke(app, ["--state-dir", str(rt.state_dir), *args])

    exe = tmpdir_in_tmp / "cli-true"
    shutil.copy("/bin/true", exe)
    child = subprocess.Popen([str(exe)])
    child.wait()
    wait_alert(rt, "exec-from-temp-dir", child.pid)
    rt.capture.flush()
    rt.detector.flush()
    mine = tmpdir_in_tmp / "mine.yaml"
    mine.write_text(
        textwrap.dedent("""\
        rules:
          - id: cli-true-ran
            title: cli-true ran
            description: a rule tried on stored data
            source: process
            condition: "event = 'exec' AND comm = 'cli-true'"
            severity: medium
            tags: [T1036]
            output: "{comm} pid {pid} ran {filename}"
        """)
    )
    r = ks("rules", "test", str(mine))
    assert r.exit_code == 0, r.output
    assert "1 rules, valid" in r.stdout and f"cli-true pid {child.pid} ran {exe}" in r.stdout
    mine.write_text(mine.read_text().replace("comm = 'cli-true'", "nosuch = 1"))
    r = ks("rules", "test", str(mine))
    assert r.exit_code == 2 and "unknown column 'nosuch'" in r.stderr and "cli-true-ran" in r.stderr
    r = ks("rules", "list")
    assert r.exit_code == 0 and "test-many-temp-opens" in r.stdout and "reverse-shell" in r.stdout
    r = ks("alerts", "--rule", "exec-from-temp-dir", "--json", "--since", "5m")
    doc = json.loads(r.stdout)
    pid_col = doc["columns"].index("pid")
    assert child.pid in [row[pid_col] for row in doc["rows"]]
