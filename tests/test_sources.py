"""The first sources against the real kernel: what we cause is what they report."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid

import pytest

from kernsight.sources import SOURCES
from kernsight.sources.syscall_names import number

pytestmark = pytest.mark.bpf
PY = sys.executable


def test_process_exec_fork_exit(capture) -> None:
    cap, col = capture
    cap.start("process")
    tag = f"ks-{uuid.uuid4().hex[:12]}"
    child = subprocess.run(["/bin/sh", "-c", "exit 7", tag], check=False)
    assert child.returncode == 7

    execs = col.wait_rows("process", lambda r: r["event"] == "exec" and tag in r["argv"])
    assert len(execs) == 1, execs
    ex = execs[0]
    pid = ex["pid"]
    assert ex["filename"] == "/bin/sh"
    assert ex["argv"] == f"/bin/sh -c exit 7 {tag}"
    assert ex["ppid"] == os.getpid()
    assert ex["comm"] == "sh" and ex["tid"] == pid and ex["uid"] == os.getuid()
    assert ex["argv_truncated"] is False and ex["exe_memfd"] is False
    assert ex["exe_fstype"]  # the filesystem /bin/sh lives on

    exits = col.wait_rows("process", lambda r: r["event"] == "exit" and r["pid"] == pid)
    assert [e["exit_code"] for e in exits] == [7] and exits[0]["exit_signal"] == 0
    forks = col.wait_rows("process", lambda r: r["event"] == "fork" and r["pid"] == pid)
    assert len(forks) == 1 and forks[0]["ppid"] == os.getpid()


def test_process_killed_by_signal_and_long_argv(capture) -> None:
    cap, col = capture
    cap.start("process")
    long_arg = "A" * 700
    child = subprocess.run(["/bin/sh", "-c", "kill -9 $$", "x", long_arg], check=False)
    assert child.returncode == -9
    ex = col.wait_rows("process", lambda r: r["event"] == "exec" and "kill -9" in r["argv"])[0]
    assert ex["argv_truncated"] is True
    assert ex["argv"].startswith("/bin/sh -c kill -9 $$ x AAAA")
    assert len(ex["argv"].encode()) == 511  # the documented cap
    ext = col.wait_rows("process", lambda r: r["event"] == "exit" and r["pid"] == ex["pid"])[0]
    assert ext["exit_signal"] == 9


def test_process_memfd_exec_and_socket_stdio(capture) -> None:
    """The enrichment the security rules rely on, caused for real."""
    cap, col = capture
    cap.start("process")
    tag = uuid.uuid4().hex[:10]
    code = (
        "import os, socket\n"
        "fd = os.memfd_create('payload')\n"
        "os.write(fd, open('/bin/true','rb').read())\n"
        "a, b = socket.socketpair()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.dup2(a.fileno(), 1)\n"
        f"    os.execv(f'/proc/self/fd/{{fd}}', ['memfd-{tag}'])\n"
        "os.waitpid(pid, 0)\n"
    )
    subprocess.run([PY, "-c", code], check=True)
    ex = col.wait_rows("process", lambda r: r["event"] == "exec" and r["argv"] == f"memfd-{tag}")
    assert len(ex) == 1, ex
    assert ex[0]["exe_memfd"] is True
    assert ex[0]["exe_fstype"] in ("tmpfs", "shmem", "hugetlbfs")
    assert ex[0]["stdio_sockets"] == 0b010  # fd 1 only


def test_files_reports_path_flags_and_fd(capture, tmp_path) -> None:
    cap, col = capture
    cap.start("files")
    path = tmp_path / f"open-{uuid.uuid4().hex}"
    missing = tmp_path / f"missing-{uuid.uuid4().hex}"
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    code = (
        "import os, sys\n"
        f"fd = os.open({str(path)!r}, {flags}, 0o640)\n"
        f"try: os.open({str(missing)!r}, os.O_RDONLY)\n"
        "except FileNotFoundError: pass\n"
        "print(fd)\n"
    )
    out = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True)
    fd = int(out.stdout)
    rows = col.wait_rows("files", lambda r: r["path"] == str(path))
    assert len(rows) == 1, rows
    r = rows[0]
    assert r["syscall"] == "openat" and r["ret"] == fd
    assert r["flags"] & 0o7777777 == flags | (r["flags"] & os.O_CLOEXEC)
    assert r["mode"] == 0o640 and r["dfd"] == -100
    bad = col.wait_rows("files", lambda r: r["path"] == str(missing))
    assert len(bad) == 1 and bad[0]["ret"] == -errno.ENOENT
    assert bad[0]["pid"] == r["pid"] != os.getpid()


def test_files_ignores_kernsight_itself(capture, tmp_path) -> None:
    """Our own opens would feed back; they are dropped in the kernel, others' are not."""
    cap, col = capture
    cap.start("files")
    mine = tmp_path / "self-open"
    mine.write_text("x")
    theirs = tmp_path / "their-open"
    subprocess.run([PY, "-c", f"open({str(theirs)!r}, 'w')"], check=True)
    assert col.wait_rows("files", lambda r: r["path"] == str(theirs))
    assert col.rows("files", lambda r: r["path"] == str(mine)) == []


GETPPID_LOOP = "import os\nfor _ in range({n}): os.getppid()\n"


def test_syscall_stats_counts_calls(capture) -> None:
    cap, col = capture
    cap.start("syscall_stats")
    n = 5000
    child = subprocess.Popen([PY, "-c", GETPPID_LOOP.format(n=n)])
    child.wait()
    nr = number("getppid")
    assert nr == 110  # x86-64

    def total() -> int:
        return sum(
            r["count"]
            for r in col.rows("syscall_stats", lambda r: r["pid"] == child.pid and r["nr"] == nr)
        )

    col.wait_rows("syscall_stats", lambda r: r["pid"] == child.pid and r["nr"] == nr, timeout=5)
    cap.stop("syscall_stats")  # final read of the map
    assert total() >= n
    st = cap.final["syscall_stats"]
    assert st.lost == 0 and st.delivered <= st.produced


def test_syscalls_pairs_entry_and_exit(capture) -> None:
    cap, col = capture
    n = 300
    child = subprocess.Popen(
        [PY, "-c", "import sys; sys.stdin.readline()\n" + GETPPID_LOOP.format(n=n)],
        stdin=subprocess.PIPE,
    )
    cap.start("syscalls", filters={"pid": [child.pid]})  # pushed into the kernel
    child.communicate(b"go\n")
    rows = col.wait_rows("syscalls", lambda r: r["name"] == "getppid", n=n)
    assert len(rows) == n
    assert {r["pid"] for r in rows} == {child.pid}
    assert {r["ret"] for r in rows} == {os.getpid()}  # getppid returns the test's pid
    assert all(0 < r["latency_ns"] < 10**9 for r in rows)
    # The kernel filter kept every other process out.
    assert {r["pid"] for r in col.rows("syscalls", lambda r: True)} == {child.pid}


def test_lost_events_are_counted_exactly(capture) -> None:
    """A tiny ring, not read while flooded: the kernel refuses records and says how many."""
    cap, col = capture
    name = f"ksflood{uuid.uuid4().hex[:6]}"
    cap.start("syscalls", ring_bytes=4096, filters={"comm": [name]})
    with cap._lock:  # hold the reader off while the generator floods the ring
        code = (
            "import ctypes, os\n"
            f"ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"
            "for _ in range(20000): os.getppid()\n"
        )
        subprocess.run([PY, "-c", code], check=True)
    cap.stop("syscalls")
    st = cap.final["syscalls"]
    delivered = col.table("syscalls").num_rows
    assert st.lost > 0
    assert st.produced >= 20000
    assert delivered == st.delivered
    assert delivered + st.lost == st.produced


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_record_layout_matches_the_bpf_object(name: str) -> None:
    """The numpy dtype each decoder uses is the C struct, as the compiler laid it out (BTF)."""
    from kernsight.kernel.build import build

    src = SOURCES[name]
    obj = build(src.bpf_object)
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(obj), "-j"], check=True, capture_output=True
    )
    types = json.loads(out.stdout)["types"]
    by_id = {t["id"]: t for t in types}
    st = next(t for t in types if t["kind"] == "STRUCT" and t["name"] == src.btf_struct)
    assert st["size"] == src.record.itemsize

    def flat(struct, base=0):
        for m in struct["members"]:
            t = by_id[m["type_id"]]
            while t["kind"] in ("TYPEDEF", "VOLATILE", "CONST"):
                t = by_id[t["type_id"]]
            off = base + m["bits_offset"] // 8
            if t["kind"] == "STRUCT":
                yield from flat(t, off)
            else:
                yield m["name"], off

    btf_fields = dict(flat(st))
    dt = src.record
    np_fields = {n: dt.fields[n][1] for n in dt.names}
    assert np_fields == btf_fields


def test_pid_filter_applies_to_the_pid_a_row_carries(capture) -> None:
    """A fork row carries the child's pid: a filter on the parent's pid must not let it in
    (the kernel checks the row's identity, not the task that happens to run the hook)."""
    cap, col = capture
    parent = subprocess.Popen(
        [PY, "-c", "import subprocess, sys\nsys.stdin.readline()\n"
         "subprocess.run(['/bin/true'])\nsys.stdin.readline()\n"],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    cap.start("process", filters={"pid": [parent.pid]})
    parent.stdin.write(b"go\n")
    parent.stdin.flush()
    parent.communicate(b"end\n")
    rows = col.wait_rows("process", lambda r: r["event"] == "exit")
    assert rows and {r["pid"] for r in rows} == {parent.pid}
    cap.stop("process")
    assert {r["pid"] for r in col.rows("process", lambda r: True)} == {parent.pid}
