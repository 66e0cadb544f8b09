"""What the `security` source and the process source's exec enrichment cost in the kernel.

Loads `security` and `process`, enables the kernel's BPF run-time statistics for the duration
(kernel.bpf_stats_enabled; restored after), and drives three workloads:
  - an unwatched syscall in a loop (getppid): the price every other syscall pays
    (one array lookup at entry and one at exit);
  - a watched syscall in a loop (chmod of a temp file): a full record with a resolved path
    and exe;
  - fork + exec of /bin/true: the exec hook with the LD_PRELOAD env scan and exe_path walk.
Reports nanoseconds per program run, from the kernel's run_time_ns / run_cnt.

    sudo .venv/bin/python bench/security.py [--calls 300000] [--execs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kernsight.sources import SOURCES, RunningSource

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def progs() -> dict[int, dict]:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], check=True, capture_output=True)
    return {p["id"]: p for p in json.loads(out.stdout)}


def run_stats(ids: set[int]) -> dict[str, tuple[int, int]]:
    now = progs()
    return {now[i]["name"]: (now[i].get("run_cnt", 0), now[i].get("run_time_ns", 0)) for i in ids}


def prog_ids(rs: RunningSource) -> set[int]:
    """The programs of one loaded source: those using its ring buffer or its config map."""
    ids = set()
    for m in ("events", "ks_config_map"):
        info = Path(f"/proc/self/fdinfo/{rs.obj.map(m).fd}").read_text()
        ids.add(int(next(ln.split()[1] for ln in info.splitlines() if ln.startswith("map_id:"))))
    return {i for i, p in progs().items() if ids & set(p.get("map_ids", []))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300_000)
    ap.add_argument("--execs", type=int, default=300)
    args = ap.parse_args()
    running = [RunningSource(SOURCES[n](), 0) for n in ("security", "process")]
    ids = {i for rs in running for i in prog_ids(rs)}
    old = STATS.read_text().strip()
    STATS.write_text("1")
    results = {}
    try:
        with tempfile.NamedTemporaryFile(prefix="ks-bench-") as f:
            loads = {
                "unwatched syscall (getppid)": f"for _ in range({args.calls}): os.getppid()",
                "watched syscall (chmod)": f"for _ in range({args.calls // 10}): "
                f"os.chmod({f.name!r}, 0o600)",
            }
            for label, code in loads.items():
                s0 = run_stats(ids)
                subprocess.run([sys.executable, "-c", f"import os\n{code}"], check=True)
                s1 = run_stats(ids)
                results[label] = {n: _per_run(s0[n], s1[n]) for n in ("sys_enter", "sys_exit")}
                for rs in running:  # keep the rings drained
                    while rs.ring and rs.ring.read() is not None:
                        pass
        s0 = run_stats(ids)
        for _ in range(args.execs):
            subprocess.run(["/bin/true"], check=True)
        s1 = run_stats(ids)
        results["exec of /bin/true"] = {"on_exec": _per_run(s0["on_exec"], s1["on_exec"])}
    finally:
        STATS.write_text(old)
        for rs in running:
            rs.close()
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for label, r in results.items():
        print(f"{label:30} " + "  ".join(f"{n} {ns:7.1f} ns/run" for n, ns in r.items()))


def _per_run(a: tuple[int, int], b: tuple[int, int]) -> float:
    runs = b[0] - a[0]
    return (b[1] - a[1]) / runs if runs else float("nan")


if __name__ == "__main__":
    main()
