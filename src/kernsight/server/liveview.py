"""The terminal panel of `kernsight serve --http` (on a terminal): where to connect, event
rates and losses per source, top processes by syscalls, the latest execs and alerts."""

from __future__ import annotations

import collections
import threading
import time

import pyarrow as pa
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..capture import Batch
from ..runtime import Runtime
from ..untrusted import safe

WINDOW_S = 10.0


class LiveView:
    def __init__(self, rt: Runtime, header: str, console: Console | None = None) -> None:
        self.rt = rt
        self.header = header
        self.console = console or Console(stderr=True)
        self._calls: collections.deque[tuple[float, pa.Table]] = collections.deque()
        self._execs: collections.deque[tuple[str, int, str]] = collections.deque(maxlen=6)
        self._alerts: collections.deque[dict] = collections.deque(maxlen=6)
        self._alert_cursor: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        rt.add_listener(self._on_batch)

    def _on_batch(self, b: Batch) -> None:
        # Aggregates and execs only: a few rows a second, never the per-event firehose.
        if b.source == "syscall_stats":
            t = pa.Table.from_batches([b.data.select(["pid", "comm", "count"])])
            with self._lock:
                self._calls.append((time.monotonic(), t))
        elif b.source == "process":
            execs = b.data.filter(pa.compute.equal(b.data.column("event"), "exec"))
            if execs.num_rows:
                tail = execs.slice(max(0, execs.num_rows - 6)).select(["pid", "comm", "argv"])
                with self._lock:
                    for r in tail.to_pylist():
                        self._execs.append((r["comm"], r["pid"], r["argv"]))

    def _top(self, n: int = 8) -> list[dict]:
        cutoff = time.monotonic() - WINDOW_S
        with self._lock:
            while self._calls and self._calls[0][0] < cutoff:
                self._calls.popleft()
            tables = [t for _, t in self._calls]
        if not tables:
            return []
        agg = pa.concat_tables(tables).group_by(["pid", "comm"]).aggregate([("count", "sum")])
        agg = agg.sort_by([("count_sum", "descending")]).slice(0, n)
        return agg.to_pylist()

    def _latest_alerts(self) -> list[dict]:
        """The engine's alert log from where the panel last read (rendering thread only)."""
        page = self.rt.detector.read(self._alert_cursor, limit=500)
        self._alert_cursor = page.next_cursor
        self._alerts.extend(page.rows[-6:])
        return list(self._alerts)

    def render(self) -> Group:
        st = self.rt.status()
        src = Table(title="sources", expand=False, title_justify="left")
        for col in ("source", "state", "events/s", "delivered", "lost", "expired", "stored"):
            src.add_column(col, justify="left" if col in ("source", "state") else "right")
        for name, s in st["sources"].items():
            state = "[green]on[/]" if s["running"] else "[dim]off[/]"
            lost = f"[red]{s['lost']}[/]" if s["lost"] else "0"
            src.add_row(name, state, f"{s['events_per_s']:.0f}", str(s["delivered"]), lost,
                        str(s["expired"]), str(s["stored_rows"]))  # fmt: skip
        top = Table(title=f"top by syscalls ({WINDOW_S:.0f} s)",
                    title_justify="left")  # fmt: skip
        for col in ("pid", "comm", "calls"):
            top.add_column(col, justify="right" if col != "comm" else "left")
        for r in self._top():
            top.add_row(str(r["pid"]), safe(r["comm"], 16), str(r["count_sum"]))
        with self._lock:
            execs = list(self._execs)
        ex = Table(title="latest execs", title_justify="left")
        ex.add_column("pid", justify="right")
        ex.add_column("comm")
        ex.add_column("argv")
        for comm, pid, argv in reversed(execs):
            ex.add_row(str(pid), safe(comm, 16), safe(argv, 60))
        al = Table(title="latest alerts", title_justify="left")
        for col in ("severity", "rule", "pid", "output"):
            al.add_column(col, justify="right" if col == "pid" else "left")
        for a in reversed(self._latest_alerts()):
            sev = a["severity"]
            style = "red" if sev in ("high", "critical") else "yellow" if sev == "medium" else ""
            al.add_row(Text(sev, style=style), a["rule_id"], str(a["pid"]),
                       safe(a["output"], 70))  # fmt: skip
        det = st["detect"]
        footer = Text(
            f"uptime {st['uptime_s']:.0f}s · store {st['store_bytes'] / 2**20:.1f} MiB · "
            f"subscriptions {st['subscriptions']} · rules {det['rules_enabled']} · alerts "
            f"{det['alerts']} (suppressed {det['suppressed']}, unevaluated rows "
            f"{det['unevaluated_rows']})"
            + (f" · errors: {safe(st['errors'][-1], 80)}" if st["errors"] else ""),
            style="dim",
        )
        return Group(Panel(Text(self.header), title=f"kernsight {st['version']} — "
                           f"kernel {st['kernel']}"), src, top, ex, al, footer)  # fmt: skip

    def _run(self) -> None:
        with Live(self.render(), console=self.console, refresh_per_second=2,
                  transient=False) as live:  # fmt: skip
            while not self._stop.wait(1.0):
                live.update(self.render())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kernsight-liveview", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=3)
