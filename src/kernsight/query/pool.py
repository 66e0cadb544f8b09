"""A pool of query worker processes: each query gets one worker; a worker that runs past the
timeout or dies (memory cap) is killed and replaced, and the caller gets a clear error."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection


class QueryFailed(RuntimeError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # timeout | memory | sql | internal | busy


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        self.conn.close()


class WorkerPool:
    def __init__(self, size: int = 2, memory_bytes: int = 1 << 30, threads: int = 1) -> None:
        self.size = size
        self.memory_bytes = memory_bytes
        self.threads = threads
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.killed = 0  # workers killed for timeout or memory
        for _ in range(size):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        # A fresh interpreter (never a fork of the threaded server), talking over a socketpair.
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        p = subprocess.Popen(
            [sys.executable, "-m", "kernsight.query.worker", str(fd), str(self.memory_bytes),
             str(self.threads)],
            pass_fds=[fd], stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        theirs.close()
        return _Worker(p, Connection(os.dup(ours.fileno())))

    def run(self, request: dict, timeout_s: float, wait_s: float = 30.0) -> dict:
        try:
            w = self._idle.get(timeout=wait_s)
        except queue.Empty:
            raise QueryFailed(
                "busy", f"all {self.size} query workers stayed busy for {wait_s:g}s"
            ) from None
        deadline = time.monotonic() + timeout_s
        try:
            w.conn.send(request)
            if not w.conn.poll(max(0.0, deadline - time.monotonic())):
                self._replace(w)
                raise QueryFailed(
                    "timeout", f"query stopped: it ran longer than the {timeout_s:g}s timeout"
                )
            resp = w.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = w.proc.poll()
            self._replace(w)
            mib = self.memory_bytes >> 20
            raise QueryFailed(
                "memory",
                f"query stopped: its worker died (exit {code}), most likely at the {mib} MiB "
                "memory cap; the server is unaffected",
            ) from None
        except QueryFailed:
            raise
        except BaseException:
            self._replace(w)
            raise
        threading.Thread(target=self._check_in, args=(w,), daemon=True).start()
        if not resp["ok"]:
            raise QueryFailed(resp["kind"], resp["error"])
        return resp

    def _check_in(self, w: _Worker) -> None:
        """Back to the idle queue once the worker reports its catalog clean; else replace it."""
        try:
            clean = w.conn.poll(10) and w.conn.recv() is True
        except (EOFError, OSError):
            clean = False
        if clean:
            self._idle.put(w)
        else:
            self._replace(w)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.killed += 1
        if not self._closed:
            self._idle.put(self._spawn())

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                break
