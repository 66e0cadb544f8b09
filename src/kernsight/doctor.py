"""`kernsight doctor`: what works on this host and, for what does not, the fix."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .kernel import build, system
from .kernel.errors import KernelError


def _check(fn: Callable[[], str]) -> tuple[bool, str, str]:
    try:
        return True, fn(), ""
    except KernelError as e:
        return False, e.message, e.fix
    except Exception as e:  # doctor reports, it does not crash
        return False, f"{type(e).__name__}: {e}", ""


def _privileges() -> str:
    system.check_bpf_privileges()
    return f"uid {os.geteuid()}, CapEff {system.effective_caps():#x}"


def _btf() -> str:
    p = build.BTF_PATH
    if not p.exists():
        raise KernelError(f"{p} missing (kernel built without CONFIG_DEBUG_INFO_BTF)",
                          fix="use a kernel with BTF; CO-RE programs need it")  # fmt: skip
    try:
        size = len(p.read_bytes())
    except OSError as e:
        raise KernelError(f"{p} unreadable: {e.strerror}", fix="run as root") from e
    return f"{p} ({size // 1024} KiB)"


def _tracefs() -> str:
    return str(system.tracefs_root())


def _toolchain() -> str:
    parts = []
    for tool, pkg in (("clang", "clang"), ("bpftool", "bpftool")):
        parts.append(build._tool(tool, pkg))
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise KernelError("libbpf headers missing", fix="apt-get install libbpf-dev")
    return ", ".join(parts)


def _source(name: str) -> Callable[[], str]:
    def check() -> str:
        from .sources import SOURCES, RunningSource

        rs = RunningSource(SOURCES[name](), 0)
        try:
            return f"loaded and attached ({', '.join(rs.obj.program_names)})"
        finally:
            rs.close()

    return check


def run_checks(console: Console) -> bool:
    """Print the report; True when the essentials (privileges, BTF, sources) work."""
    from .sources import SOURCES

    essentials = [
        ("privileges", _privileges),
        ("BTF", _btf),
        ("BPF toolchain", _toolchain),
        ("tracefs", _tracefs),
    ]
    optional = [(f"source {n}", _source(n)) for n in SOURCES]
    table = Table(title=f"kernsight doctor — kernel {platform.release()}", show_lines=False)
    table.add_column("check")
    table.add_column("")
    table.add_column("detail / fix", overflow="fold")
    ok_all = True
    for name, fn in essentials + optional:
        ok, detail, fix = _check(fn)
        if not ok and (name, fn) in essentials:
            ok_all = False
        if not ok and name.startswith("source"):
            ok_all = False
        table.add_row(name, "[green]ok[/]" if ok else "[red]FAIL[/]",
                      detail + (f"\n[yellow]fix:[/] {fix}" if fix else ""))  # fmt: skip
    console.print(table)
    return ok_all
