"""The running kernel's BTF (/sys/kernel/btf/vmlinux), read in user space: enum values by
name (their numbers differ between kernels, e.g. `enum skb_drop_reason`) and whether a type
exists (e.g. `btf_trace_tcp_bad_csum`: the kernel has that tracepoint). Kernel symbols from
/proc/kallsyms, to name a kernel text address.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np

from .errors import KernelError

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
KALLSYMS = Path("/proc/kallsyms")
_MAGIC = 0xEB9F
_ENUM, _ENUM64 = 6, 19
# Bytes that follow the 12-byte common header, per kind: fixed, and per vlen member.
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


@functools.cache
def _parse(path: Path = BTF_PATH) -> dict[str, dict[int, str]]:
    """Every enum: name -> {value: member name}."""
    try:
        data = path.read_bytes()
    except OSError as e:
        fix = "a kernel with CONFIG_DEBUG_INFO_BTF=y; run as root"
        raise KernelError(f"cannot read {path}: {e.strerror}", fix=fix) from e
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from(
        "<HBBIIIII", data, 0
    )
    if magic != _MAGIC:
        raise KernelError(f"{path} is not BTF (magic {magic:#x})")
    strs = hdr_len + str_off

    def name(off: int) -> str:
        end = data.index(b"\0", strs + off)
        return data[strs + off : end].decode(errors="replace")

    enums: dict[str, dict[int, str]] = {}
    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        body = pos + 12
        pos = body + _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
        if not name_off or kind not in (_ENUM, _ENUM64):
            continue
        tname = name(name_off)
        if kind == _ENUM:
            raw = struct.unpack_from(f"<{2 * vlen}I", data, body)  # (name_off, value) pairs
            vals = raw[1::2]
            if not info >> 31:  # kind_flag clear: signed values
                vals = tuple(v - (1 << 32) if v >> 31 else v for v in vals)
            enums[tname] = {v: name(o) for o, v in zip(raw[0::2], vals, strict=True)}
        elif kind == _ENUM64:
            raw = struct.unpack_from(f"<{3 * vlen}I", data, body)
            enums[tname] = {
                raw[i + 1] | raw[i + 2] << 32: name(raw[i]) for i in range(0, 3 * vlen, 3)
            }
    return enums


def enum_values(enum: str) -> dict[int, str]:
    """{value: member name} of `enum <name>` in the running kernel."""
    enums = _parse()
    if enum not in enums:
        raise KernelError(f"this kernel's BTF has no enum {enum}")
    return enums[enum]


@functools.cache
def _strings(path: Path = BTF_PATH) -> bytes:
    data = path.read_bytes()
    hdr_len, str_off, str_len = struct.unpack_from("<I", data, 4)[0], *struct.unpack_from(
        "<II", data, 16
    )
    return data[hdr_len + str_off : hdr_len + str_off + str_len]


def has_type(name: str) -> bool:
    """Whether a type of that name exists (its name is in the string section: cheap, no
    walk of the types; names of types are the section's only identifiers of this form)."""
    try:
        return f"\0{name}\0".encode() in _strings()
    except OSError:
        return False


class Symbols:
    """Kernel text symbols, for naming addresses ("tcp_v4_rcv+0x1a2"); empty when the
    addresses are hidden (kptr_restrict, not root)."""

    def __init__(self, path: Path = KALLSYMS) -> None:
        addrs, names = [], []
        try:
            with path.open() as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] in "tTwW":
                        addrs.append(int(parts[0], 16))
                        names.append(parts[2])
        except OSError:
            pass
        a = np.array(addrs, dtype=np.uint64)
        order = np.argsort(a, kind="stable")
        self.addrs = a[order]
        self.names = np.array(names, dtype=object)[order] if names else np.array([], object)
        if len(self.addrs) and not self.addrs.any():
            self.addrs, self.names = self.addrs[:0], self.names[:0]  # all zero: hidden

    def name(self, addresses: np.ndarray) -> np.ndarray:
        """Each address as "symbol+0xoff" (hex when unknown), per distinct address."""
        uniq, inverse = np.unique(addresses.astype(np.uint64), return_inverse=True)
        out = np.empty(len(uniq), dtype=object)
        idx = np.searchsorted(self.addrs, uniq, side="right") - 1
        for i, (addr, j) in enumerate(zip(uniq.tolist(), idx.tolist(), strict=True)):
            if addr == 0:
                out[i] = ""
            elif j < 0 or not len(self.addrs):
                out[i] = f"{addr:#x}"
            else:
                out[i] = f"{self.names[j]}+{addr - int(self.addrs[j]):#x}"
        return out[inverse]


@functools.cache
def kernel_symbols() -> Symbols:
    return Symbols()
