"""MCP benchmark: tool-call latency over Streamable HTTP, and exec-to-poll latency.

Run as root from the project root:

    .venv/bin/python bench/mcp.py [--calls N] [--execs M] [--mode legacy|2026-07-28] [--json]

It starts the real server (`kernsight serve --http` on a free loopback port, a temporary state
directory, bearer token), connects the SDK's HTTP client and measures:
  - `query` latency (a small GROUP BY over the process table) and `poll` latency (wait_ms=0),
    p50/p99 over N calls each;
  - exec-to-poll: a long-poll is waiting; the bench execs /bin/true with a unique argument; the
    time from the exec (the row's kernel timestamp, UTC ns) to the poll returning it to the
    client; p50/p99 over M execs. Target: p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

# This file is named like the SDK package: keep its own directory off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import anyio  # noqa: E402
import httpx2  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

KERNSIGHT = str(Path(sys.executable).parent / "kernsight")
PACE_S = 0.07  # stay under the server's per-client rate limit (20 calls/s): latency, not load


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(url: str, token: str, mode: str, calls: int, execs: int) -> dict:
    out: dict = {}
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as h:
        async with Client(streamable_http_client(url, http_client=h), mode=mode) as c:
            q = {"sql": "SELECT comm, count(*) AS n FROM process GROUP BY comm ORDER BY n DESC",
                 "limit": 20}  # fmt: skip
            await c.call_tool("query", q)  # warm the workers
            lat = []
            for _ in range(calls):
                await anyio.sleep(PACE_S)
                t = time.perf_counter()
                r = await c.call_tool("query", q)
                lat.append((time.perf_counter() - t) * 1e3)
                assert not r.is_error, r
            out["query_ms"] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "n": calls}

            tag = uuid.uuid4().hex[:8]
            sql = f"SELECT ts, pid, argv FROM process WHERE event = 'exec' AND argv LIKE '%{tag}%'"
            sid = (await c.call_tool("subscribe", {"sql": sql})).structured_content[
                "subscription_id"
            ]
            lat = []
            cursor = None
            for _ in range(calls):
                await anyio.sleep(PACE_S)
                args = {"subscription_id": sid, "wait_ms": 0}
                if cursor is not None:
                    args["cursor"] = cursor
                t = time.perf_counter()
                r = await c.call_tool("poll", args)
                lat.append((time.perf_counter() - t) * 1e3)
                cursor = r.structured_content["next_cursor"]
            out["poll_ms"] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "n": calls}

            e2p = []
            for i in range(execs):
                arg = f"{tag}-{i}"

                async def spawn(arg: str = arg) -> None:
                    await anyio.sleep(0.05)  # the long-poll below is waiting by now
                    await anyio.to_thread.run_sync(
                        lambda: subprocess.run(["/bin/true", arg], check=True)
                    )

                async with anyio.create_task_group() as tg:
                    tg.start_soon(spawn)
                    got = None
                    while got is None:
                        r = await c.call_tool(
                            "poll", {"subscription_id": sid, "cursor": cursor, "wait_ms": 5000}
                        )
                        now = time.time_ns()
                        sc = r.structured_content
                        cursor = sc["next_cursor"]
                        for row in sc["rows"]:
                            if row[2].endswith(arg):
                                got = row
                ts = datetime.fromisoformat(str(got[0]).replace("Z", "+00:00"))
                exec_ns = int(ts.timestamp()) * 10**9 + ts.microsecond * 1000
                e2p.append((now - exec_ns) / 1e6)
            out["exec_to_poll_ms"] = {"p50": pct(e2p, 50), "p99": pct(e2p, 99), "n": execs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--execs", type=int, default=100)
    ap.add_argument("--mode", default="2026-07-28", choices=["legacy", "2026-07-28"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/mcp.py needs root (the server loads BPF programs)")
    with tempfile.TemporaryDirectory(prefix="kernsight-bench-mcp-") as state:
        port = free_port()
        proc = subprocess.Popen(
            [KERNSIGHT, "serve", "--http", f"127.0.0.1:{port}", "--no-view"],
            env={**os.environ, "KERNSIGHT_STATE_DIR": state},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        sys.exit("the server did not start")
                    time.sleep(0.1)
            token = Path(state, "http-token").read_text().strip()
            res = anyio.run(measure, f"http://127.0.0.1:{port}/mcp", token, a.mode, a.calls,
                            a.execs)  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    res["machine"] = f"{platform.release()}, {os.cpu_count()} CPUs"
    res["mode"] = a.mode
    if a.json:
        print(json.dumps(res))
        return
    print(f"MCP over Streamable HTTP ({a.mode}), {res['machine']}")
    for k in ("query_ms", "poll_ms", "exec_to_poll_ms"):
        v = res[k]
        print(f"  {k:<16} p50 {v['p50']:7.2f}  p99 {v['p99']:7.2f}  (n={v['n']})")
    ok = res["exec_to_poll_ms"]["p99"] < 50
    print(f"  target exec-to-poll p99 < 50 ms: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
