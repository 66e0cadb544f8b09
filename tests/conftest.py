"""BPF tests run for real as root. Where BPF is unavailable they skip with the reason,
unless KERNSIGHT_REQUIRE_BPF=1 (set by CI), where they fail instead."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator

import pyarrow as pa
import pytest

REQUIRE_BPF = os.environ.get("KERNSIGHT_REQUIRE_BPF") == "1"


@functools.cache
def bpf_unavailable() -> str | None:
    """Why BPF tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "not root: BPF tests need root"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "no /sys/kernel/btf/vmlinux: kernel without BTF"
    try:
        from kernsight.capture import Capture

        with Capture() as cap:
            cap.start("process")
    except Exception as e:  # any failure to load is the reason
        return f"cannot load a BPF program: {e}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bpf: needs root and a working eBPF (real kernel)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("bpf"):
        reason = bpf_unavailable()
        if reason:
            if REQUIRE_BPF:
                pytest.fail(f"KERNSIGHT_REQUIRE_BPF=1 but {reason}")
            pytest.skip(reason)


class Collector:
    """Keeps every batch the capture engine delivers, per source, and waits for rows."""

    def __init__(self) -> None:
        self.batches: dict[str, list] = {}
        self._cv = threading.Condition()

    def __call__(self, batch) -> None:
        with self._cv:
            self.batches.setdefault(batch.source, []).append(batch)
            self._cv.notify_all()

    def table(self, source: str) -> pa.Table:
        with self._cv:
            bs = [b.data for b in self.batches.get(source, [])]
        from kernsight.sources import SOURCES, tracepoint

        schema = tracepoint.schema(source) if tracepoint.is_table(source) else None
        return pa.Table.from_batches(bs, schema=schema or SOURCES[source].schema())

    def rows(self, source: str, where: Callable[[dict], bool]) -> list[dict]:
        t = self.table(source).drop_columns(["ts"])
        return [r for r in t.to_pylist() if where(r)]

    def wait_rows(
        self, source: str, where: Callable[[dict], bool], n: int = 1, timeout: float = 10.0
    ) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.rows(source, where)
            if len(found) >= n or time.monotonic() > deadline:
                return found
            with self._cv:
                self._cv.wait(0.05)


@pytest.fixture
def capture() -> Iterator[tuple]:
    """A running capture engine and a collector subscribed to it; sources started by the test."""
    from kernsight.capture import Capture

    col = Collector()
    cap = Capture()
    cap.subscribe(col)
    cap.run_in_thread()
    try:
        yield cap, col
    finally:
        cap.close()
