"""The event sources. Adding a kernel signal = one bpf/NAME.bpf.c + one module here."""

from .base import RunningSource, Source
from .drops import Drops
from .files import Files
from .packets import Packets
from .process import Process
from .security import Security
from .syscall_stats import SyscallStats
from .syscalls import Syscalls

SOURCES: dict[str, type[Source]] = {
    s.name: s for s in (Process, Files, Security, Syscalls, SyscallStats, Packets, Drops)
}

__all__ = ["SOURCES", "RunningSource", "Source"]
