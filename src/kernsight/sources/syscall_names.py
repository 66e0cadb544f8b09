"""Syscall number -> name for this architecture, from the kernel's UAPI header."""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

_HEADERS = {
    "x86_64": ["/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"],
    "aarch64": ["/usr/include/asm-generic/unistd.h"],
}
# Syscalls newer than the distribution's UAPI header may be (numbers are ABI: fixed forever).
_NEWER = {
    "x86_64": {"cachestat": 451, "fchmodat2": 452, "map_shadow_stack": 453, "futex_wake": 454,
               "futex_wait": 455, "futex_requeue": 456, "statmount": 457, "listmount": 458,
               "lsm_get_self_attr": 459, "lsm_set_self_attr": 460, "lsm_list_modules": 461,
               "mseal": 462, "setxattrat": 463, "getxattrat": 464, "listxattrat": 465,
               "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468,
               "file_setattr": 469},
}  # fmt: skip
_DEFINE = re.compile(r"^#define\s+__NR_(\w+)\s+(\d+)\s*$", re.M)
TABLE_SIZE = 1024


@functools.cache
def names() -> pa.Array:
    """A string array indexed by syscall number; unknown numbers read 'syscall_<nr>'."""
    table = [f"syscall_{i}" for i in range(TABLE_SIZE)]
    for path in _HEADERS.get(platform.machine(), []):
        p = Path(path)
        if p.exists():
            for name, nr in _DEFINE.findall(p.read_text()):
                if int(nr) < TABLE_SIZE:
                    table[int(nr)] = name
            break
    for name, nr in _NEWER.get(platform.machine(), {}).items():
        if table[nr] == f"syscall_{nr}":
            table[nr] = name
    return pa.array(table, pa.string())


def number(name: str) -> int | None:
    table = names().to_pylist()
    return table.index(name) if name in table else None


def lookup(nr: np.ndarray) -> pa.Array:
    """Vectorized nr -> name (numbers outside the table read 'syscall_<nr>' via the last slot)."""
    idx = np.where((nr >= 0) & (nr < TABLE_SIZE), nr, 0).astype(np.int64)
    out = names().take(pa.array(idx))
    bad = (nr < 0) | (nr >= TABLE_SIZE)
    if bad.any():
        fixed = out.to_pylist()
        for i in np.flatnonzero(bad):
            fixed[i] = f"syscall_{int(nr[i])}"
        out = pa.array(fixed, pa.string())
    return out
