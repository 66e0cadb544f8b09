"""Capture benchmark: kernsight's `syscalls` source vs. bpftrace vs. no tracing, side by side.

Run as root from the project root:

    .venv/bin/python bench/capture.py [--seconds N] [--procs P] [--rounds R] [--json]

A tiny C generator (bench/gen_syscalls.c, built here with `cc -O2` into bench/.build/) calls
getppid through syscall(2) in a tight loop; P copies run in parallel for N seconds. The modes,
run in alternation R times each:

  none            the generator alone, no tracing
  kernsight       kernsight's `syscalls` source, all processes (the honest setting), through the
                  real Capture engine: epoll, mmap ring reader, numpy decode, Arrow batches,
                  a subscriber that only adds up num_rows
  kernsight-comm  the same with a `comm` filter on the generator's name, pushed into the kernel
  bpftrace        `bpftrace -f json` printing the same fields (pid, tid, uid, cgroup, comm, nr,
                  six args, ret, latency, ts) as one JSON line per syscall, entry and exit paired
                  in a map keyed by tid, into a pipe that this script reads and counts; its
                  perf buffers get the same memory as kernsight's ring (BPFTRACE_PERF_RB_PAGES)
  bpftrace-defbuf the same with bpftrace's default perf buffers (64 pages per CPU): it drops
                  more events but slows the traced program less

Every tracer excludes itself and this script in the kernel (kernsight does so by design;
bpftrace gets `pid != BENCH && pid != BPFTRACE`). Reported per mode: the generator's rate and
its slowdown vs. no tracing, events produced (kernsight: counted in the kernel; bpftrace:
printed + reported lost), delivered (rows that reached the consumer), lost, delivered/s (from
the generators' start until the last event was delivered), and the consumer's CPU use. Then the
ratios kernsight/bpftrace against the targets, each taken against the bpftrace setting that
favours bpftrace. Before each run it waits (up to --quiet-wait s) for a quiet machine, and it
reports the CPU other processes used during each run. This is a benchmark, not a test: it
reports what it measures, whatever that is.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / ".build"
GEN_SRC = HERE / "gen_syscalls.c"
GEN_BIN = BUILD / "gen_syscalls"
GEN_COMM = GEN_BIN.name[:15]  # what the kernel shows as its comm

sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

TARGET_SLOWDOWN_RATIO = 0.6  # kernsight's slowdown / bpftrace's, at most
TARGET_DELIVERED_RATIO = 2.0  # kernsight's delivered/s / bpftrace's, at least
TARGET_RATE = 1.5e6  # kernsight delivered events/s, at least, with 0 lost

# Everything this script starts, killed on any exit (by pid, through the Popen objects).
_children: list[subprocess.Popen] = []


def _kill_children() -> None:
    for p in _children:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
    _children.clear()


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _spawn(args: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(args, **kw)
    _children.append(p)
    return p


def _forget(p: subprocess.Popen) -> None:
    if p in _children:
        _children.remove(p)


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or one of its threads), from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- other tracers on the machine ---------------------------------------------------------
_BPFTOOL = shutil.which("bpftool") or next(
    (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if os.access(p, os.X_OK)), None
)
SYSCALL_TRACER_NAMES = {"sys_enter", "sys_exit"}


def syscall_tracers() -> set[int] | None:
    """Ids of the BPF programs loaded on the machine that look like syscall tracers (ours
    included, when loaded). Any such program puts every syscall of every process through the
    tracing slow path, so a foreign one (another user's test, say) skews the numbers.
    None when bpftool is missing."""
    if not _BPFTOOL:
        return None
    try:
        out = subprocess.run([_BPFTOOL, "-j", "prog", "show"], capture_output=True, text=True,
                             timeout=10).stdout  # fmt: skip
        progs = json.loads(out or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    return {
        p["id"] for p in progs
        if p.get("type") in ("tracing", "tracepoint", "raw_tracepoint", "raw_tracepoint_writable")
        and (p.get("name") in SYSCALL_TRACER_NAMES or "sys_" in str(p.get("name", "")))
    }  # fmt: skip


def _others_busy(sample_s: float = 0.3) -> float:
    """CPU used by other processes over a short sample, in cores."""
    b0, s0 = _busy_cpu_seconds(), _cpu_seconds(os.getpid())
    time.sleep(sample_s)
    b1, s1 = _busy_cpu_seconds(), _cpu_seconds(os.getpid())
    return max(0.0, (b1 - b0) - (s1 - s0)) / sample_s


def wait_for_quiet(log, limit_s: float) -> dict:
    """Before a run, wait (up to limit_s) until no syscall tracer is loaded (the previous mode's
    programs are freed after an RCU grace period; someone else's may be running) and other
    processes use less than 10% of a core. Says what it waited for; returns what remained."""
    t0 = time.monotonic()
    said = False
    while True:
        ids = syscall_tracers()
        busy = _others_busy()
        waited = time.monotonic() - t0
        if not ids and busy < 0.10:
            if said:
                print(f"  ... quiet after {waited:.1f} s", file=log)
            return {}
        if waited > limit_s:
            what = f"{len(ids or ())} syscall tracer(s), others at {100 * busy:.0f}% of a core"
            print(f"  ... not quiet after {limit_s:.0f} s ({what}): going on", file=log)
            return {"tracers": len(ids or ()), "others_busy": busy}
        if not said and waited > 1.0:
            what = f"{len(ids or ())} syscall tracer(s), others at {100 * busy:.0f}% of a core"
            print(f"  waiting for a quiet machine ({what}) ...", file=log)
            said = True
        time.sleep(0.2)


# -- the generator -------------------------------------------------------------------------
def build_generator() -> None:
    if GEN_BIN.exists() and GEN_BIN.stat().st_mtime >= GEN_SRC.stat().st_mtime:
        return
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        sys.exit("bench: no C compiler (cc) found: apt-get install gcc")
    BUILD.mkdir(exist_ok=True)
    subprocess.run([cc, "-O2", "-Wall", "-o", str(GEN_BIN), str(GEN_SRC)], check=True)


@dataclass
class GenResult:
    calls: int
    seconds: float  # the longest copy's wall time
    rate: float  # calls/s, all copies together
    t_start: float  # monotonic time when the copies were released
    busy_cpu: float  # CPU seconds spent by the whole machine (all CPUs) while they ran
    ours_cpu: float  # of which: the generators and this process (its capture thread included)
    tracers_mid: set[int] | None  # syscall tracers loaded halfway through (ours included)

    def others_cpu(self, tracer_cpu: float = 0.0) -> float:
        """CPU seconds used by everything else on the machine (other users' work, the kernel's
        background) during the run: noise, reported so that a busy machine shows."""
        return max(0.0, self.busy_cpu - self.ours_cpu - tracer_cpu)


def _busy_cpu_seconds() -> float:
    """All CPUs' non-idle time, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_generators(procs: int, seconds: float) -> GenResult:
    """Start `procs` copies, release them together, wait for all, add up what they did."""
    r, w = os.pipe()
    try:
        ps = [
            _spawn([str(GEN_BIN), str(seconds), str(r)], stdout=subprocess.PIPE, text=True,
                   pass_fds=(r,))
            for _ in range(procs)
        ]  # fmt: skip
        os.close(r)
        r = -1
        time.sleep(0.05)  # let them reach their read()
        mid: list[set[int] | None] = [None]
        sampler = threading.Timer(seconds / 2, lambda: mid.__setitem__(0, syscall_tracers()))
        sampler.daemon = True
        busy0, kids0, self0 = _busy_cpu_seconds(), _children_cpu(), _cpu_seconds(os.getpid())
        t_start = time.monotonic()
        os.write(w, b"x" * procs)
        sampler.start()
        calls, secs, rate = 0, 0.0, 0.0
        for p in ps:
            out, _ = p.communicate(timeout=seconds + 60)
            _forget(p)
            m = re.search(r"calls=(\d+) seconds=([\d.]+) rate=([\d.]+)", out or "")
            if p.returncode != 0 or not m:
                raise RuntimeError(f"generator failed (rc={p.returncode}): {out!r}")
            calls += int(m[1])
            secs = max(secs, float(m[2]))
            rate += float(m[3])
        busy1, kids1, self1 = _busy_cpu_seconds(), _children_cpu(), _cpu_seconds(os.getpid())
        ours = (kids1 - kids0) + (self1 - self0)
        sampler.join()
        return GenResult(calls, secs, rate, t_start, busy1 - busy0, ours, mid[0])
    finally:
        if r >= 0:
            os.close(r)
        os.close(w)


# -- one measurement -----------------------------------------------------------------------
@dataclass
class Run:
    mode: str
    round: int
    gen_calls: int
    gen_seconds: float
    gen_rate: float
    produced: int | None = None
    delivered: int | None = None
    lost: int | None = None
    delivered_per_s: float | None = None
    delivered_by_gen_end: int | None = None  # how much had reached the consumer when the
    # generators stopped (the rest was drained afterwards)
    drain_seconds: float | None = None  # from the generators' end to the last delivery
    consumer_cpu: float | None = None  # CPU seconds of the consumer (kernsight's capture
    # thread / the bpftrace process) during the window
    batches: int | None = None
    others_cpu: float = 0.0  # CPU seconds used by other processes during the generator run
    foreign_tracers: int | None = None  # other syscall tracers loaded during the run
    note: str = ""
    extra: dict = field(default_factory=dict)


def run_none(args: argparse.Namespace, rnd: int) -> Run:
    g = run_generators(args.procs, args.seconds)
    return Run(
        "none",
        rnd,
        g.calls,
        g.seconds,
        g.rate,
        others_cpu=g.others_cpu(),
        extra={"tracers_mid": g.tracers_mid},
    )


def run_kernsight(args: argparse.Namespace, rnd: int, comm_filter: bool) -> Run:
    from kernsight.capture import Capture

    mode = "kernsight-comm" if comm_filter else "kernsight"
    rows = [0]
    last = [0.0]  # when the last batch arrived

    def count(batch) -> None:  # minimal work: what a subscriber must at least do
        rows[0] += batch.data.num_rows
        last[0] = time.monotonic()

    cap = Capture()
    try:
        cap.subscribe(count)
        filters = {"comm": [GEN_COMM]} if comm_filter else None
        cap.start("syscalls", ring_bytes=args.ring_mb << 20, filters=filters)
        cap.run_in_thread()
        time.sleep(0.3)  # settle: the loop is waiting on the ring
        thread = cap._thread
        assert thread is not None and thread.native_id is not None
        ctid = thread.native_id
        s0 = cap.stats()["syscalls"]
        rows0 = rows[0]
        cpu0 = _cpu_seconds(os.getpid(), ctid)
        g = run_generators(args.procs, args.seconds)
        t_gen_end = time.monotonic()
        rows_at_end = rows[0]
        cpu1 = _cpu_seconds(os.getpid(), ctid)  # the capture thread, while it was racing
        cap.stop("syscalls")  # drains the ring fully (in this thread)
        t_done = max(last[0], t_gen_end)  # the last delivery (stop's own cleanup excluded)
        s1 = cap.final["syscalls"]
        delivered = rows[0] - rows0
        # Windowed counts can differ by the few events in flight when the window opened; over
        # the source's whole life, every produced event must be delivered or counted lost.
        notes = []
        if s1.delivered - s0.delivered != delivered:
            notes.append(
                f"source delivered {s1.delivered - s0.delivered}, subscriber saw {delivered}"
            )
        if s1.produced != s1.delivered + s1.lost:
            notes.append(
                f"ACCOUNTING: produced {s1.produced} != delivered {s1.delivered} + lost {s1.lost}"
            )
        note = "; ".join(notes)
        return Run(
            mode, rnd, g.calls, g.seconds, g.rate,
            produced=s1.produced - s0.produced,
            delivered=delivered,
            lost=s1.lost - s0.lost,
            delivered_per_s=delivered / (t_done - g.t_start),
            delivered_by_gen_end=rows_at_end - rows0,
            drain_seconds=t_done - t_gen_end,
            consumer_cpu=cpu1 - cpu0,
            batches=s1.batches - s0.batches,
            others_cpu=g.others_cpu(),
            note=note,
            extra={"tracers_mid": g.tracers_mid, "errors": list(cap.errors)},
        )  # fmt: skip
    finally:
        cap.close()


BPFTRACE_SCRIPT = r"""
// bench/capture.py: every syscall as one JSON line, entry paired with exit by tid.
// $1 = the bench's pid, $2 = bpftrace's own pid: both excluded, as kernsight excludes itself.
tracepoint:raw_syscalls:sys_enter /pid != $1 && pid != $2/
{
  @e[tid] = (args->id, args->args[0], args->args[1], args->args[2], args->args[3],
             args->args[4], args->args[5], nsecs);
}
tracepoint:raw_syscalls:sys_exit /pid != $1 && pid != $2/
{
  $e = @e[tid];
  if ($e.7) {
    printf("{\"ts\":%lu,\"pid\":%d,\"tid\":%d,\"uid\":%d,\"cgroup_id\":%lu,\"comm\":\"%s\",\"nr\":%d,\"args\":[%lu,%lu,%lu,%lu,%lu,%lu],\"ret\":%ld,\"latency_ns\":%lu}\n",
           $e.7, pid, tid, uid, cgroup, comm, $e.0, $e.1, $e.2, $e.3, $e.4, $e.5, $e.6,
           args->ret, nsecs - $e.7);
    delete(@e[tid]);
  }
}
END { clear(@e); }
"""

_OTHER_RECORD = re.compile(rb'^\{"type": "(?!printf")([a-z_]+)".*$', re.M)
_TEXT_LOST = re.compile(r"Lost (\d+) events")
_GEN_IN_JSON = f'\\"comm\\":\\"{GEN_COMM}\\"'.encode()  # as escaped in bpftrace's JSON


class BpftraceReader:
    """Reads bpftrace's stdout in big chunks: counts printf lines (the events), parses the
    rare other records (attached_probes, lost_events, errors)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines = 0  # printf records: one per syscall
        self.lost = 0
        self.other: list[str] = []
        self.stderr = ""
        self.attached = threading.Event()
        self.eof = threading.Event()
        self.last_data = 0.0
        self.last_gen = 0.0  # when a chunk last held an event of the generator
        self._lock = threading.Lock()
        self._t_out = threading.Thread(target=self._read_stdout, daemon=True)
        self._t_err = threading.Thread(target=self._read_stderr, daemon=True)
        self._t_out.start()
        self._t_err.start()

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.lines, self.lost

    def _read_stdout(self) -> None:
        fd = self.proc.stdout.fileno()
        tail = b""
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            whole, tail = data[:cut], data[cut:]
            n = whole.count(b"\n")
            lost = 0
            for m in _OTHER_RECORD.finditer(whole):
                n -= 1
                kind = m[1].decode()
                try:
                    rec = json.loads(m[0])
                except ValueError:
                    rec = {}
                if kind == "lost_events":
                    lost += int(rec.get("data", {}).get("events", 0))
                elif kind == "attached_probes":
                    self.attached.set()
                elif len(self.other) < 20:
                    self.other.append(m[0].decode(errors="replace")[:300])
            now = time.monotonic()
            with self._lock:
                self.lines += n
                self.lost += lost
                if n:
                    self.last_data = now
                    if _GEN_IN_JSON in whole:
                        self.last_gen = now
        self.eof.set()
        self.attached.set()  # wake a waiter if bpftrace died before attaching

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.stderr += line if len(self.stderr) < 20000 else ""
            if "Attaching" in line:
                self.attached.set()
            m = _TEXT_LOST.search(line)  # text-format lost report, in case
            if m:
                with self._lock:
                    self.lost += int(m[1])


def bpftrace_rb_pages(ring_mb: int) -> int:
    """Per-CPU perf buffer pages giving bpftrace the same memory as kernsight's one ring
    (a power of two, as perf requires)."""
    pages = max(1, (ring_mb << 20) // (os.cpu_count() or 1) // os.sysconf("SC_PAGE_SIZE"))
    return 1 << (pages.bit_length() - 1)


def run_bpftrace(args: argparse.Namespace, rnd: int, bpftrace: str, default_buffers: bool) -> Run:
    mode = "bpftrace-defbuf" if default_buffers else "bpftrace"
    script = BUILD / "syscalls.bt"
    script.write_text(BPFTRACE_SCRIPT)
    env = dict(os.environ)
    if not default_buffers:
        env["BPFTRACE_PERF_RB_PAGES"] = str(bpftrace_rb_pages(args.ring_mb))
    # `exec` keeps the shell's pid ($$) for bpftrace, so the script can exclude bpftrace itself.
    proc = _spawn(
        ["sh", "-c", 'exec "$0" -f json "$1" "$2" "$$"', bpftrace, str(script), str(os.getpid())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        rd = BpftraceReader(proc)
        if not rd.attached.wait(60) or rd.eof.is_set():
            raise RuntimeError(f"bpftrace did not attach: {rd.stderr.strip()[-800:]}")
        time.sleep(0.3)
        lines0, lost0 = rd.snapshot()
        cpu0 = _cpu_seconds(proc.pid)
        g = run_generators(args.procs, args.seconds)
        t_gen_end = time.monotonic()
        lines_at_end, _ = rd.snapshot()
        cpu1 = _cpu_seconds(proc.pid)
        # Let bpftrace drain its buffers: wait until no event of the generator has come for
        # 0.5 s (other processes keep it printing, so "quiet" would never come on a busy host).
        while time.monotonic() - max(rd.last_gen, t_gen_end) < 0.5 and not rd.eof.is_set():
            if time.monotonic() - t_gen_end > 120:
                break
            time.sleep(0.05)
        lines1, lost1 = rd.snapshot()
        t_last = max(rd.last_gen, t_gen_end)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rd.eof.wait(10)
        _, lost2 = rd.snapshot()  # lost records can come with the last flush
        delivered = lines1 - lines0
        lost = lost2 - lost0
        note = "; ".join(rd.other[:3])
        return Run(
            mode, rnd, g.calls, g.seconds, g.rate,
            produced=delivered + lost,
            delivered=delivered,
            lost=lost,
            delivered_per_s=delivered / (t_last - g.t_start),
            delivered_by_gen_end=lines_at_end - lines0,
            drain_seconds=t_last - t_gen_end,
            consumer_cpu=cpu1 - cpu0,
            others_cpu=g.others_cpu(cpu1 - cpu0),
            note=note,
            extra={"tracers_mid": g.tracers_mid},
        )  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _forget(proc)


# -- report --------------------------------------------------------------------------------
MODES = ["none", "kernsight", "kernsight-comm", "bpftrace", "bpftrace-defbuf"]
BPFTRACE_MODES = ("bpftrace", "bpftrace-defbuf")


def _mean(xs: list[float | int | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def summarize(runs: list[Run], seconds: float) -> dict:
    by_mode: dict[str, list[Run]] = {}
    for r in runs:
        by_mode.setdefault(r.mode, []).append(r)
    base = _mean([r.gen_rate for r in by_mode.get("none", [])])
    rows = {}
    for mode in MODES:
        rs = by_mode.get(mode)
        if not rs:
            continue
        rate = _mean([r.gen_rate for r in rs])
        rows[mode] = {
            "runs": len(rs),
            "gen_rate": rate,
            "gen_rate_min": min(r.gen_rate for r in rs),
            "gen_rate_max": max(r.gen_rate for r in rs),
            "slowdown": (base / rate) if base and rate else None,
            "produced": _mean([r.produced for r in rs]),
            "delivered": _mean([r.delivered for r in rs]),
            "lost": _mean([r.lost for r in rs]),
            "lost_max": max((r.lost or 0) for r in rs) if mode != "none" else None,
            "delivered_per_s": _mean([r.delivered_per_s for r in rs]),
            "delivered_by_gen_end": _mean([r.delivered_by_gen_end for r in rs]),
            "drain_seconds": _mean([r.drain_seconds for r in rs]),
            "consumer_cpu_pct": _mean(
                [100 * r.consumer_cpu / r.gen_seconds for r in rs if r.consumer_cpu is not None]
            ),
            "batches": _mean([r.batches for r in rs]),
            "others_cpu_pct": _mean([100 * r.others_cpu / r.gen_seconds for r in rs]),
        }
    ratios: dict = {}
    ks = rows.get("kernsight")
    bts = {m: rows[m] for m in BPFTRACE_MODES if m in rows and rows[m]["slowdown"]}
    if ks:
        ratios["kernsight_delivered_per_s"] = ks["delivered_per_s"]
        ratios["kernsight_lost_max"] = ks["lost_max"]
        ratios["rate_target_met"] = bool(
            ks["delivered_per_s"] >= TARGET_RATE and ks["lost_max"] == 0
        )
    if ks and ks["slowdown"] and bts:
        # Against the peer at its best: each ratio uses the bpftrace setting that favours it.
        m_slow = min(bts, key=lambda m: bts[m]["slowdown"])
        m_dlv = max(bts, key=lambda m: bts[m]["delivered_per_s"])
        ratios["slowdown_ratio"] = ks["slowdown"] / bts[m_slow]["slowdown"]
        ratios["slowdown_vs"] = m_slow
        ratios["slowdown_target_met"] = ratios["slowdown_ratio"] <= TARGET_SLOWDOWN_RATIO
        ratios["delivered_ratio"] = ks["delivered_per_s"] / max(bts[m_dlv]["delivered_per_s"], 1e-9)
        ratios["delivered_vs"] = m_dlv
        ratios["delivered_target_met"] = ratios["delivered_ratio"] >= TARGET_DELIVERED_RATIO
    return {"modes": rows, "ratios": ratios}


def _fmt(x: float | None, unit: str = "", digits: int = 0) -> str:
    if x is None:
        return "-"
    if unit == "M":
        return f"{x / 1e6:.2f}M"
    if unit == "x":
        return f"{x:.2f}x"
    return f"{x:,.{digits}f}"


def print_report(summary: dict, meta: dict, runs: list[Run]) -> None:
    print()
    print(f"kernsight capture benchmark: {meta['procs']} generator(s) x {meta['seconds']} s, "
          f"{meta['rounds']} round(s), kernel {meta['kernel']}, {meta['cpus']} CPUs")  # fmt: skip
    print(f"kernsight ring: {meta['ring_mb']} MiB; {meta.get('bpftrace_version', 'no bpftrace')}"
          f", perf buffer pages per CPU: {meta.get('bpftrace_perf_rb_pages', '-')}")  # fmt: skip
    if meta.get("bpftrace_skipped"):
        print(f"bpftrace skipped: {meta['bpftrace_skipped']}")
    head = ("mode", "gen calls/s", "slowdown", "produced", "delivered", "lost", "delivered/s",
            "consumer CPU", "others CPU")  # fmt: skip
    table = [head]
    for mode, r in summary["modes"].items():
        table.append((
            mode,
            _fmt(r["gen_rate"], "M"),
            _fmt(r["slowdown"], "x"),
            _fmt(r["produced"]),
            _fmt(r["delivered"]),
            _fmt(r["lost"]),
            _fmt(r["delivered_per_s"], "M"),
            "-" if r["consumer_cpu_pct"] is None else f"{r['consumer_cpu_pct']:.0f}%",
            f"{r['others_cpu_pct']:.0f}%",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in
                        enumerate(zip(row, widths, strict=True))))  # fmt: skip
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(
        "(means over rounds; slowdown = untraced generator rate / traced rate; delivered/s ="
        " delivered / (generator start -> last event delivered); consumer CPU = kernsight's"
        " capture thread or the bpftrace process, % of one core during the generator run;"
        " others CPU = every other process on the machine, % of one core: noise)"
    )
    noisy = [r for r in runs if r.others_cpu / r.gen_seconds > 0.10]
    if noisy:
        print(
            f"WARNING: {len(noisy)} run(s) shared the machine with other work using more than"
            " 10% of a core; their numbers are noisier (see per round)."
        )
    traced = [r for r in runs if r.foreign_tracers]
    if traced:
        print(
            f"WARNING: {len(traced)} run(s) ran while another syscall tracer was loaded on the"
            " machine (someone else's BPF program): their generator rates are skewed."
        )
    print()
    print("per round:")
    for r in runs:
        extra = ""
        if r.delivered is not None:
            extra = (
                f" produced={r.produced} delivered={r.delivered} lost={r.lost}"
                f" by_gen_end={r.delivered_by_gen_end} drain={r.drain_seconds:.2f}s"
            )
            if r.batches is not None:
                extra += f" batches={r.batches}"
        extra += f" others_cpu={100 * r.others_cpu / r.gen_seconds:.0f}%"
        if r.foreign_tracers:
            extra += f" FOREIGN_SYSCALL_TRACERS={r.foreign_tracers}"
        print(f"  round {r.round} {r.mode:<15} gen={r.gen_rate / 1e6:.2f}M/s{extra}"
              + (f"  [{r.note}]" if r.note else ""))  # fmt: skip
    rt = summary["ratios"]
    print()
    print("kernsight vs targets:")
    if "slowdown_ratio" in rt:
        met = "MET" if rt["slowdown_target_met"] else "MISSED"
        print(
            f"  slowdown ratio kernsight/{rt['slowdown_vs']}: {rt['slowdown_ratio']:.2f}"
            f"  (target <= {TARGET_SLOWDOWN_RATIO})  {met}"
        )
        met = "MET" if rt["delivered_target_met"] else "MISSED"
        print(
            f"  delivered/s ratio kernsight/{rt['delivered_vs']}: {rt['delivered_ratio']:.2f}"
            f"  (target >= {TARGET_DELIVERED_RATIO})  {met}"
        )
    else:
        print("  ratios vs bpftrace: not measured (bpftrace skipped or failed)")
    if "kernsight_delivered_per_s" in rt:
        print(
            f"  kernsight delivered/s: {rt['kernsight_delivered_per_s'] / 1e6:.2f}M with"
            f" {rt['kernsight_lost_max']} lost at most  (target >= {TARGET_RATE / 1e6:.1f}M"
            f" with 0 lost)  {'MET' if rt['rate_target_met'] else 'MISSED'}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="generator run per mode (5)")
    ap.add_argument("--procs", type=int, default=2, help="parallel generator copies (2)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of all modes (2)")
    ap.add_argument("--ring-mb", type=int, default=32, help="kernsight ring buffer MiB (32)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of modes")
    ap.add_argument(
        "--quiet-wait", type=float, default=10.0,
        help="before each run, wait up to this many seconds for a quiet machine (10)",
    )  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("bench/capture.py: run as root (loading BPF programs needs it)", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}; known: {MODES}")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(_kill_children)

    build_generator()
    meta: dict = {
        "seconds": args.seconds, "procs": args.procs, "rounds": args.rounds,
        "ring_mb": args.ring_mb, "kernel": platform.release(), "cpus": os.cpu_count(),
        "generator": f"{GEN_BIN.relative_to(ROOT)} (syscall(SYS_getppid) loop)",
    }  # fmt: skip
    bpftrace = shutil.which("bpftrace")
    if set(modes) & set(BPFTRACE_MODES) and not bpftrace:
        meta["bpftrace_skipped"] = "bpftrace not found (apt-get install bpftrace)"
        modes = [m for m in modes if m not in BPFTRACE_MODES]
    if bpftrace:
        v = subprocess.run([bpftrace, "--version"], capture_output=True, text=True)
        meta["bpftrace_version"] = v.stdout.strip()
        meta["bpftrace_perf_rb_pages"] = bpftrace_rb_pages(args.ring_mb)

    log = sys.stderr if args.json else sys.stdout
    own_programs = {"none": 0, "kernsight": 2, "kernsight-comm": 2, "bpftrace": 2,
                    "bpftrace-defbuf": 2}  # fmt: skip
    if _BPFTOOL is None:
        meta["foreign_tracer_check"] = "skipped: bpftool not found"
    runs: list[Run] = []
    try:
        for rnd in range(1, args.rounds + 1):
            for mode in list(modes):
                if mode not in modes:  # dropped this round (bpftrace failed)
                    continue
                print(f"round {rnd}/{args.rounds}: {mode} ...", file=log, flush=True)
                wait_for_quiet(log, args.quiet_wait)
                before = syscall_tracers()
                n_runs = len(runs)
                if mode == "none":
                    runs.append(run_none(args, rnd))
                elif mode == "kernsight":
                    runs.append(run_kernsight(args, rnd, comm_filter=False))
                elif mode == "kernsight-comm":
                    runs.append(run_kernsight(args, rnd, comm_filter=True))
                elif mode in BPFTRACE_MODES:
                    assert bpftrace
                    try:
                        runs.append(run_bpftrace(args, rnd, bpftrace, mode == "bpftrace-defbuf"))
                    except RuntimeError as e:
                        meta["bpftrace_skipped"] = f"bpftrace failed: {e}"
                        modes[:] = [m for m in modes if m not in BPFTRACE_MODES]
                        print(f"  {meta['bpftrace_skipped']}", file=log)
                if len(runs) > n_runs and before is not None:
                    mid = runs[-1].extra.pop("tracers_mid", None)
                    extra = len(mid - before) - own_programs[mode] if mid is not None else 0
                    runs[-1].foreign_tracers = len(before) + max(0, extra)
    finally:
        _kill_children()

    summary = summarize(runs, args.seconds)
    if args.json:
        out = {"meta": meta, **summary, "runs": [asdict(r) for r in runs]}
        print(json.dumps(out, indent=None, default=float))
    else:
        print_report(summary, meta, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
