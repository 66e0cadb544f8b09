"""Tracepoint tables (tp.*): how fast records decode, and what the generic program costs.

1. decode: real sched_switch records (captured from the kernel for a moment, then tiled to
   full ring batches of 65,536) decoded by the tracepoint's plan into Arrow record batches,
   alone and mixed with three other tracepoints in one ring batch (grouped by slot first).
   Target: >= 1M records/s for a sched_switch-sized record.
2. overhead: bench/gen_syscalls.c calls getppid in a loop (2 copies); the rate untraced, with
   a program written for syscalls:sys_enter_getppid alone (bench/tp_dedicated.bpf.c, same
   header and raw copy, sizes fixed at compile time), and with the generic program
   (bpf/tracepoint.bpf.c: cookie lookup, per-slot config and counters, size computed at run
   time, size-class ring), each with a consumer thread reading and decoding into Arrow.

    .venv/bin/python bench/tracepoints.py [--seconds 4] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from capture import build_generator, run_generators  # noqa: E402

from kernsight.kernel.bpf import BPFObject  # noqa: E402
from kernsight.kernel.build import BPF_SRC_DIR, build_dir, compile_bpf, vmlinux_header  # noqa: E402
from kernsight.kernel.ringbuf import RingBuffer  # noqa: E402
from kernsight.kernel.system import boot_offset_ns  # noqa: E402
from kernsight.sources import tracepoint as tp  # noqa: E402
from kernsight.sources.base import HEADER_DTYPE, header_columns, mmap_pages  # noqa: E402

GETPPID = "tp.syscalls.sys_enter_getppid"
MIX = ("tp.sched.sched_switch", "tp.sched.sched_wakeup", "tp.timer.hrtimer_start",
       "tp.sched.sched_stat_runtime")  # fmt: skip


def _capture_rows(tables: tuple[str, ...], seconds: float) -> tuple[tp.TracepointRunner, dict]:
    """Real records of these tracepoints from the small-class ring, undecoded, per table."""
    r = tp.TracepointRunner(boot_offset_ns())
    for t in tables:
        r.attach(t)
    got: dict[str, list[np.ndarray]] = {}
    end = time.monotonic() + seconds
    slot_of = {a.slot: t for t, a in r.attached.items()}
    while time.monotonic() < end:
        time.sleep(0.05)
        rows = r.rings[0].read()
        if rows is None:
            continue
        slots = rows[:, 48:52].copy().view("<u4").ravel()
        for s, t in slot_of.items():
            got.setdefault(t, []).append(rows[slots == s])
    return r, {t: np.concatenate(v) for t, v in got.items() if sum(map(len, v))}


def _tile(rows: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(rows, (n, rows.shape[1])))


def bench_decode(seconds: float) -> dict:
    runner, rows = _capture_rows(MIX, 1.0)
    try:
        n = 65536
        sw = _tile(rows["tp.sched.sched_switch"], n)
        plan = tp.plan("tp.sched.sched_switch")
        out = {"record_bytes": plan.fmt.fixed_size, "ring_stride": sw.shape[1] + 8,
               "batch_rows": n,
               "real_records_tiled": len(rows["tp.sched.sched_switch"])}  # fmt: skip
        for name, fn in (
            ("sched_switch", lambda: plan.decode(sw, 0)),
            ("mixed_4", None),
        ):
            if fn is None:  # four tracepoints interleaved in one ring batch
                parts = [_tile(rows[t], n // len(rows)) for t in rows]
                mixed = np.concatenate(parts)[np.random.default_rng(1).permutation(n)]
                mixed = np.ascontiguousarray(mixed)
                out["mixed_tables"] = sorted(rows)
                fn = lambda mixed=mixed: runner.decode(mixed)  # noqa: E731
            fn()  # warm the views
            done, t0, c0 = 0, time.perf_counter(), time.thread_time()
            while time.perf_counter() - t0 < seconds:
                fn()
                done += n
            out[f"{name}_records_per_s"] = done / (time.perf_counter() - t0)
            # per second of this thread's CPU: what a loaded machine leaves out of the wall rate
            out[f"{name}_records_per_cpu_s"] = done / (time.thread_time() - c0)
        return out
    finally:
        runner.close()


class _Consumer:
    """A thread that waits on ring fds and reads until told to stop; counts rows."""

    def __init__(self, fds: list[int], read) -> None:  # noqa: ANN001
        self.read, self.rows, self.batches = read, 0, 0
        self._ep = select.epoll()
        for fd in fds:
            self._ep.register(fd, select.EPOLLIN)
        self._stop = threading.Event()
        self.cpu = 0.0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        c0 = time.thread_time()
        while not self._stop.is_set():
            self._ep.poll(0.1)
            while (n := self.read()) > 0:
                self.rows += n
                self.batches += 1
            time.sleep(tp.COALESCE_S)  # the capture engine's coalescing
        while (n := self.read()) > 0:
            self.rows += n
        self.cpu = time.thread_time() - c0

    def stop(self) -> None:
        self._stop.set()
        self._t.join()
        self._ep.close()


def enable_bpf_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): the kernel times every program run while the
    returned fd is open (nothing global is left behind if the bench dies)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(16)  # bpf_attr.enable_stats.type = 0 (RUN_TIME)
    fd = libc.syscall(321, 32, attr, 16)  # __NR_bpf (x86-64), BPF_ENABLE_STATS
    if fd < 0:
        sys.exit(f"bench: BPF_ENABLE_STATS failed: {os.strerror(ctypes.get_errno())}")
    return fd


def prog_runtime(obj: BPFObject, name: str) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of a loaded program, from its fd's fdinfo."""
    info = dict(
        line.split(":", 1) for line in
        Path(f"/proc/self/fdinfo/{obj.program_fd(name)}").read_text().splitlines()
    )  # fmt: skip
    return int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0))


def _dedicated_object() -> Path:
    out = build_dir()
    vmlinux_header(out)
    obj = out / "bench_tp_dedicated.bpf.o"
    src = HERE / "tp_dedicated.bpf.c"
    stale = not obj.exists() or any(
        p.stat().st_mtime > obj.stat().st_mtime for p in (src, BPF_SRC_DIR / "common.h")
    )
    if stale:
        compile_bpf(src, obj, out)
    return obj


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    if mode == "none":
        g = run_generators(args.procs, args.seconds)
        return {"mode": mode, "rate": g.rate, "others_cpu_pct": 100 * g.others_cpu() / g.seconds}
    boff = boot_offset_ns()
    if mode == "dedicated":
        obj = BPFObject(_dedicated_object())
        obj.map("events").set_max_entries(mmap_pages(8 << 20))
        obj.load()
        obj.attach_all()
        ring = RingBuffer(obj.map("events"), tp.HDR + 16)
        dt = np.dtype(HEADER_DTYPE + [("slot", "<u4"), ("size", "<u2"), ("kept", "<u2"),
                                      ("raw", "u1", 16)])  # fmt: skip

        def read() -> int:
            rows = ring.read()
            if rows is None:
                return 0
            rec = rows.view(dt).ravel()
            cols = header_columns(rec, boff)  # the same Arrow work as a built-in source
            cols["nr"] = rec["raw"][:, 8:12].copy().view("<i4").ravel()
            return len(rec)

        cons = _Consumer([ring.fd], read)
        try:
            g = run_generators(args.procs, args.seconds)
        finally:
            cons.stop()
            runs, ns = prog_runtime(obj, "ded_getppid")
            m = obj.map("counters")
            produced = m.percpu_sum_u64((0).to_bytes(4, "little"))
            lost = m.percpu_sum_u64((1).to_bytes(4, "little"))
            ring.close()
            obj.close()
    else:
        r = tp.TracepointRunner(boff)
        r.attach(GETPPID)

        def read() -> int:
            return sum(b.num_rows for _, b in r.read())

        cons = _Consumer(r.fds, read)
        try:
            g = run_generators(args.procs, args.seconds)
        finally:
            cons.stop()
            runs, ns = prog_runtime(r.obj, r.PROGRAM)
            c = r.counters(GETPPID)
            produced, lost = c.produced, c.lost
            r.close()
    return {"mode": mode, "rate": g.rate, "produced": produced, "delivered": cons.rows,
            "lost": lost, "consumer_cpu_pct": 100 * cons.cpu / g.seconds,
            "batches": cons.batches, "prog_ns_per_event": ns / max(runs, 1),
            "others_cpu_pct": 100 * g.others_cpu() / g.seconds}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--decode-seconds", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root")
    build_generator()
    stats_fd = enable_bpf_stats()
    dec = bench_decode(args.decode_seconds)
    runs = [run_mode(m, args) for _ in range(args.rounds) for m in ("none", "dedicated", "generic")]
    os.close(stats_fd)
    modes = {}
    for m in ("none", "dedicated", "generic"):
        rs = [r for r in runs if r["mode"] == m]
        modes[m] = {k: sum(r[k] for r in rs) / len(rs) for k in rs[0] if k != "mode"}
    base = modes["none"]["rate"]
    for m in modes.values():
        m["slowdown"] = base / m["rate"]
    summary = {
        "machine": f"Linux {platform.release()}, {os.cpu_count()} CPUs",
        "decode": dec,
        "overhead": modes,
        "generic_vs_dedicated_rate": modes["generic"]["rate"] / modes["dedicated"]["rate"],
        "generic_vs_dedicated_prog_ns": modes["generic"]["prog_ns_per_event"]
        / modes["dedicated"]["prog_ns_per_event"],
        "targets": {"decode >= 1M records/s": dec["sched_switch_records_per_s"] >= 1e6},
        "runs": runs,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(summary["machine"])
    print(f"decode, sched_switch ({dec['record_bytes']}-byte records, stride "
          f"{dec['ring_stride']}, batches of {dec['batch_rows']}): "
          f"{dec['sched_switch_records_per_s'] / 1e6:.2f}M records/s "
          f"({dec['sched_switch_records_per_cpu_s'] / 1e6:.2f}M per CPU-second); four "
          f"tracepoints mixed in one batch: {dec['mixed_4_records_per_s'] / 1e6:.2f}M "
          f"records/s ({dec['mixed_4_records_per_cpu_s'] / 1e6:.2f}M per CPU-second)")  # fmt: skip
    print("mode       gen calls/s  slowdown  others CPU  produced   delivered  lost  consumer CPU"
          "  program ns/event")  # fmt: skip
    for m, s in modes.items():
        extra = "" if m == "none" else (
            f"{s['produced']:>10,.0f} {s['delivered']:>10,.0f} {s['lost']:>5,.0f}  "
            f"{s['consumer_cpu_pct']:>10.0f}%  {s['prog_ns_per_event']:>10.0f}")  # fmt: skip
        print(f"{m:<10} {s['rate'] / 1e6:>10.2f}M {s['slowdown']:>8.2f}x  "
              f"{s['others_cpu_pct']:>9.0f}%  {extra}")  # fmt: skip
    print(f"generic / dedicated: generator rate {summary['generic_vs_dedicated_rate']:.3f}, "
          f"program time per event {summary['generic_vs_dedicated_prog_ns']:.2f}")
    for r in runs:
        print("  round:", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
