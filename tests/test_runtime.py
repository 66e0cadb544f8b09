"""The runtime that the server stands on: sources on demand, status, idle stop."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from kernsight.runtime import Runtime

pytestmark = pytest.mark.bpf


def test_runtime_queries_subscriptions_and_sources_on_demand(tmp_path) -> None:
    # detect=False: the default rules read files, which would keep it running
    with Runtime(tmp_path / "state", sources=("process",), idle_stop_s=0.5, detect=False) as rt:
        rt.start()
        sub = rt.subscriptions.create("SELECT pid, argv FROM process WHERE event = 'exec'")
        tag = uuid.uuid4().hex[:10]
        child = subprocess.Popen(["/bin/echo", tag], stdout=subprocess.DEVNULL)
        child.wait()
        got = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            r = rt.subscriptions.poll(sub, wait_ms=1000)
            got = [x for x in r.rows.to_pylist() if tag in x["argv"]]
        assert got == [{"pid": child.pid, "argv": f"/bin/echo {tag}"}]

        time.sleep(0.3)
        rt.capture.flush()
        q = rt.engine.query(f"SELECT count(*) FROM process WHERE argv LIKE '%{tag}%'")
        assert q.to_json()["rows"] == [[1]]

        assert "files" not in rt.capture.running()
        r = rt.engine.query("SELECT count(*) FROM files")
        assert r.meta["sources"]["files"]["started_now"] is True
        assert "files" in rt.capture.running()
        st = rt.status()
        assert st["sources"]["files"]["running"] and st["sources"]["process"]["delivered"] > 0
        assert st["subscriptions"] == 1 and st["kernel"]

        time.sleep(0.6)
        rt._stop_idle_sources()  # the housekeeping thread does this every few seconds
        assert "files" not in rt.capture.running()
        assert "process" in rt.capture.running()  # a default source stays on


def test_live_view_shows_sources_and_a_real_exec(tmp_path) -> None:
    import io

    from rich.console import Console

    from kernsight.server.liveview import LiveView

    with Runtime(tmp_path / "state", sources=("process", "syscall_stats")) as rt:
        buf = io.StringIO()
        view = LiveView(rt, "MCP endpoint: http://127.0.0.1:1/mcp", Console(file=buf, width=160))
        rt.start()
        tag = uuid.uuid4().hex[:10]
        subprocess.run(["/bin/echo", f"{tag}\x1b[2J"], stdout=subprocess.DEVNULL)
        with tempfile.TemporaryDirectory(dir="/tmp") as d:  # and an alert: exec from /tmp
            bait = Path(d) / f"bait-{tag}"
            shutil.copy("/bin/true", bait)
            probe = subprocess.Popen([str(bait)])
            assert probe.wait() == 0
        rt.capture.flush()  # render at once: the panel keeps only the latest few execs
        rt.detector.flush()
        view.console.print(view.render())
        out = buf.getvalue()
        assert "latest alerts" in out and "exec-from-temp-dir" in out, out
        assert f"{probe.pid}" in out and f"bait-{tag}" in out
        assert "MCP endpoint" in out and "syscall_stats" in out and "process" in out
        assert f"/bin/echo {tag}?[2J" in out  # shown, and its escape sequence made inert
        assert "\x1b[2J" not in out
