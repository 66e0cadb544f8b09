"""What this host allows: privileges, BTF, tracefs. Used by `doctor` and before loading."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

from .errors import PrivilegeError, TracefsError

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF, CAP_NET_ADMIN = 21, 38, 39, 12


def effective_caps(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def has_cap(cap: int, caps: int | None = None) -> bool:
    return bool((effective_caps() if caps is None else caps) >> cap & 1)


def check_bpf_privileges() -> None:
    """Loading tracing programs needs CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN."""
    caps = effective_caps()
    if has_cap(CAP_SYS_ADMIN, caps) or (has_cap(CAP_BPF, caps) and has_cap(CAP_PERFMON, caps)):
        return
    missing = [
        n for c, n in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")) if not has_cap(c, caps)
    ]
    raise PrivilegeError(
        f"missing privileges to load BPF programs: {', '.join(missing)} (and no CAP_SYS_ADMIN); "
        f"running as uid {os.geteuid()}",
        fix="run kernsight as root (sudo), or grant CAP_BPF,CAP_PERFMON to its binary",
    )


def tracefs_root() -> Path:
    """The mounted tracefs, mounting it at /sys/kernel/tracing when it is missing."""
    for root in (TRACEFS, DEBUGFS_TRACING):
        if (root / "events").is_dir():
            return root
    if not TRACEFS.is_dir():
        raise TracefsError(
            f"{TRACEFS} does not exist: the kernel has no tracefs (CONFIG_TRACING off?)",
            fix="use a kernel with CONFIG_FTRACE / tracepoints enabled",
        )
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", str(TRACEFS).encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise TracefsError(
            f"tracefs is not mounted at {TRACEFS} and mounting it failed: {os.strerror(err)}",
            fix=f"mount -t tracefs nodev {TRACEFS}  (as root)",
        )
    if not (TRACEFS / "events").is_dir():
        raise TracefsError(f"tracefs mounted at {TRACEFS} but has no events/ directory")
    return TRACEFS


def tracepoint_exists(category: str, name: str) -> bool:
    return (tracefs_root() / "events" / category / name).is_dir()


def boot_offset_ns() -> int:
    """Add to a CLOCK_BOOTTIME stamp (bpf_ktime_get_boot_ns) to get UTC nanoseconds."""
    best = None
    for _ in range(5):
        a = time.clock_gettime_ns(time.CLOCK_REALTIME)
        b = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        c = time.clock_gettime_ns(time.CLOCK_REALTIME)
        if best is None or c - a < best[0]:
            best = (c - a, (a + c) // 2 - b)
    assert best is not None
    return best[1]
