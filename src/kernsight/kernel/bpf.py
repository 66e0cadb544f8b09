"""libbpf through ctypes: BPF objects, programs, links and maps with explicit lifetimes.

`BPFObject` is a context manager; closing it destroys its links before the object, so
nothing of ours stays attached to the kernel after `close()` (or process exit).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import AttachError, KernelError, LoadError

_c = ctypes
_P = _c.c_void_p


def _load_libbpf() -> ctypes.CDLL:
    names = ["libbpf.so.1", ctypes.util.find_library("bpf") or "libbpf.so"]
    last: OSError | None = None
    for name in names:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            last = e
    raise KernelError(f"cannot load libbpf: {last}", fix="apt-get install libbpf1")


_lib = _load_libbpf()
_libc = ctypes.CDLL(None, use_errno=True)

_PRINT_FN = _c.CFUNCTYPE(_c.c_int, _c.c_int, _c.c_char_p, _P)


def _sig(name: str, res, *args) -> None:
    f = getattr(_lib, name)
    f.restype = res
    f.argtypes = list(args)


_sig("libbpf_set_print", _P, _PRINT_FN)
_sig("bpf_object__open_file", _P, _c.c_char_p, _P)
_sig("bpf_object__load", _c.c_int, _P)
_sig("bpf_object__close", None, _P)
_sig("bpf_object__find_map_by_name", _P, _P, _c.c_char_p)
_sig("bpf_object__next_program", _P, _P, _P)
_sig("bpf_object__next_map", _P, _P, _P)
_sig("bpf_program__name", _c.c_char_p, _P)
_sig("bpf_program__section_name", _c.c_char_p, _P)
_sig("bpf_program__set_autoload", _c.c_int, _P, _c.c_bool)
_sig("bpf_program__attach", _P, _P)
_sig("bpf_program__attach_tracepoint_opts", _P, _P, _c.c_char_p, _c.c_char_p, _P)
_sig("bpf_program__fd", _c.c_int, _P)
_sig("bpf_link__destroy", _c.c_int, _P)
_sig("bpf_map__name", _c.c_char_p, _P)
_sig("bpf_map__fd", _c.c_int, _P)
_sig("bpf_map__set_max_entries", _c.c_int, _P, _c.c_uint32)
_sig("bpf_map__max_entries", _c.c_uint32, _P)
_sig("bpf_map__key_size", _c.c_uint32, _P)
_sig("bpf_map__value_size", _c.c_uint32, _P)
_sig("bpf_map__type", _c.c_int, _P)
_sig("bpf_map_update_elem", _c.c_int, _c.c_int, _P, _P, _c.c_uint64)
_sig("bpf_map_lookup_elem", _c.c_int, _c.c_int, _P, _P)
_sig("bpf_map_delete_elem", _c.c_int, _c.c_int, _P)
_sig("bpf_map_get_next_key", _c.c_int, _c.c_int, _P, _P)
_sig("bpf_map_lookup_batch", _c.c_int, _c.c_int, _P, _P, _P, _P, _c.POINTER(_c.c_uint32), _P)
_sig("libbpf_num_possible_cpus", _c.c_int)
_libc.vsnprintf.restype = _c.c_int
_libc.vsnprintf.argtypes = [_c.c_char_p, _c.c_size_t, _c.c_char_p, _P]

BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
_PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}
BPF_ANY, BPF_NOEXIST = 0, 1

# libbpf reports through one global print callback; we collect its lines while loading so
# that a failure can quote the verifier log. Loads are serialised by _load_lock.
_log_lines: list[str] = []
_load_lock = threading.Lock()


@_PRINT_FN
def _on_libbpf_print(level: int, fmt: bytes, va_list: int) -> int:
    buf = ctypes.create_string_buffer(8192)
    _libc.vsnprintf(buf, len(buf), fmt, va_list)
    _log_lines.extend(buf.value.decode(errors="replace").splitlines())
    return 0


_lib.libbpf_set_print(_on_libbpf_print)


def possible_cpus() -> int:
    n = _lib.libbpf_num_possible_cpus()
    if n <= 0:
        raise KernelError(f"libbpf_num_possible_cpus failed: {os.strerror(-n)}")
    return n


def _verifier_excerpt(lines: list[str], keep: int = 25) -> str:
    """The end of the verifier log (where the rejection is), plus libbpf's own error lines."""
    try:
        begin = max(i for i, ln in enumerate(lines) if "BEGIN PROG LOAD LOG" in ln)
        end = next(i for i in range(begin, len(lines)) if "END PROG LOAD LOG" in lines[i])
        body = lines[begin + 1 : end]
        head = [ln for ln in lines[:begin] if "libbpf:" in ln][-3:]
        tail = body[-keep:]
        skipped = len(body) - len(tail)
        note = [f"  ... ({skipped} earlier verifier lines omitted)"] if skipped else []
        return "\n".join(head + ["verifier log (end):"] + note + ["  " + ln for ln in tail])
    except (ValueError, StopIteration):
        return "\n".join(ln for ln in lines[-keep:])


class Map:
    """A map of a loaded object. Keys and values are bytes-like or numpy scalars/arrays."""

    def __init__(self, ptr: int, obj: BPFObject) -> None:
        self._ptr = ptr
        self._obj = obj
        self.name = _lib.bpf_map__name(ptr).decode()

    @property
    def fd(self) -> int:
        return _lib.bpf_map__fd(self._ptr)

    @property
    def max_entries(self) -> int:
        return _lib.bpf_map__max_entries(self._ptr)

    @property
    def key_size(self) -> int:
        return _lib.bpf_map__key_size(self._ptr)

    @property
    def value_size(self) -> int:
        return _lib.bpf_map__value_size(self._ptr)

    @property
    def percpu(self) -> bool:
        return _lib.bpf_map__type(self._ptr) in _PERCPU_TYPES

    def set_max_entries(self, n: int) -> None:
        if self._obj.loaded:
            raise KernelError(f"map {self.name}: max_entries can only change before load")
        rc = _lib.bpf_map__set_max_entries(self._ptr, n)
        if rc:
            raise KernelError(f"map {self.name}: cannot set max_entries={n}: {os.strerror(-rc)}")

    def _value_bytes(self) -> int:
        # Per-CPU values are an array of possible_cpus() slots, each rounded up to 8 bytes.
        if self.percpu:
            return ((self.value_size + 7) // 8 * 8) * possible_cpus()
        return self.value_size

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        rc = _lib.bpf_map_update_elem(self.fd, key, value, flags)
        if rc:
            raise KernelError(f"map {self.name}: update failed: {os.strerror(-rc)}")

    def delete(self, key: bytes) -> bool:
        rc = _lib.bpf_map_delete_elem(self.fd, key)
        if rc and rc != -errno.ENOENT:
            raise KernelError(f"map {self.name}: delete failed: {os.strerror(-rc)}")
        return rc == 0

    def lookup(self, key: bytes) -> bytes | None:
        out = ctypes.create_string_buffer(self._value_bytes())
        rc = _lib.bpf_map_lookup_elem(self.fd, key, out)
        if rc == -errno.ENOENT:
            return None
        if rc:
            raise KernelError(f"map {self.name}: lookup failed: {os.strerror(-rc)}")
        return out.raw

    def keys(self) -> Iterator[bytes]:
        cur = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        prev = None
        while _lib.bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            ctypes.memmove(cur, nxt, self.key_size)
            prev = cur
            yield cur.raw

    def dump(self, key_dtype: np.dtype, value_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Every entry of a (non per-CPU) hash map, read with batch lookups into numpy arrays."""
        if key_dtype.itemsize != self.key_size or value_dtype.itemsize != self.value_size:
            raise KernelError(f"map {self.name}: key/value dtypes do not match the map's sizes")
        cap = self.max_entries
        keys = np.zeros(cap, dtype=key_dtype)
        values = np.zeros(cap, dtype=value_dtype)
        tok_in = ctypes.create_string_buffer(64)
        tok_out = ctypes.create_string_buffer(64)
        total, first = 0, True
        while total < cap:
            count = _c.c_uint32(cap - total)
            rc = _lib.bpf_map_lookup_batch(
                self.fd, None if first else tok_in, tok_out,
                keys.ctypes.data + total * self.key_size,
                values.ctypes.data + total * self.value_size,
                _c.byref(count), None,
            )  # fmt: skip
            total += count.value
            if rc == -errno.ENOENT:
                break
            if rc:
                raise KernelError(f"map {self.name}: batch lookup failed: {os.strerror(-rc)}")
            ctypes.memmove(tok_in, tok_out, 64)
            first = False
        return keys[:total], values[:total]

    def clear(self) -> None:
        for k in list(self.keys()):
            self.delete(k)

    def percpu_sum_u64(self, key: bytes) -> int:
        """Sum of a per-CPU u64 value over all CPUs (0 if the key is absent)."""
        raw = self.lookup(key)
        return 0 if raw is None else int(np.frombuffer(raw, dtype=np.uint64).sum())


class _TracepointOpts(ctypes.Structure):
    _fields_ = [("sz", _c.c_size_t), ("bpf_cookie", _c.c_uint64)]  # libbpf.h, 1.1


class Detachable(Protocol):
    def destroy(self) -> None: ...


class Link:
    def __init__(self, ptr: int, program: str) -> None:
        self._ptr: int | None = ptr
        self.program = program

    def destroy(self) -> None:
        if self._ptr:
            _lib.bpf_link__destroy(self._ptr)
            self._ptr = None


class BPFObject:
    """One compiled `.bpf.o`: open, size its maps, load, attach, close.

    with BPFObject(path) as obj:
        obj.map("events").set_max_entries(1 << 24)
        obj.load()
        obj.attach_all()
    """

    def __init__(self, path: str | Path, autoload: set[str] | None = None) -> None:
        self.path = Path(path)
        self.loaded = False
        self._links: list[Detachable] = []
        ctypes.set_errno(0)
        ptr = _lib.bpf_object__open_file(str(self.path).encode(), None)
        if not ptr:
            err = ctypes.get_errno()
            raise LoadError(f"cannot open BPF object {self.path}: {os.strerror(err)}")
        self._ptr: int | None = ptr
        if autoload is not None:
            for name, prog in self._programs():
                _lib.bpf_program__set_autoload(prog, name in autoload)
        self._autoload = autoload

    def _programs(self) -> Iterator[tuple[str, int]]:
        prog = _lib.bpf_object__next_program(self._ptr, None)
        while prog:
            yield _lib.bpf_program__name(prog).decode(), prog
            prog = _lib.bpf_object__next_program(self._ptr, prog)

    @property
    def program_names(self) -> list[str]:
        return [n for n, _ in self._programs()]

    def map(self, name: str) -> Map:
        ptr = _lib.bpf_object__find_map_by_name(self._ptr, name.encode())
        if not ptr:
            raise KernelError(f"{self.path.name}: no map named {name!r}")
        return Map(ptr, self)

    def load(self) -> None:
        with _load_lock:
            _log_lines.clear()
            rc = _lib.bpf_object__load(self._ptr)
            lines = list(_log_lines)
        if rc:
            err = -rc
            fix = ""
            if err == errno.EPERM:
                fix = "run as root (or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE)"
            elif err == errno.EACCES or err == errno.EINVAL:
                fix = "the verifier rejected a program: see the log above"
            raise LoadError(
                f"cannot load BPF object {self.path.name}: {os.strerror(err)}",
                log=_verifier_excerpt(lines),
                fix=fix,
            )
        self.loaded = True

    def attach_all(self) -> None:
        """Attach every loaded program by its section name (tracepoint, tp_btf, ...)."""
        for name, prog in self._programs():
            if self._autoload is not None and name not in self._autoload:
                continue
            section = (_lib.bpf_program__section_name(prog) or b"").decode()
            self._attach(
                name, f"{name} ({section})", lambda prog=prog: _lib.bpf_program__attach(prog)
            )

    def _attach(self, program: str, what: str, call) -> Link:  # noqa: ANN001
        """Run one libbpf attach call, collecting its log lines; a Link or a clear error."""
        with _load_lock:
            _log_lines.clear()
            ctypes.set_errno(0)
            link = call()
            err = ctypes.get_errno()
            lines = list(_log_lines)
        if not link:
            detail = "; ".join(ln.strip() for ln in lines[-3:])
            raise AttachError(
                f"cannot attach {self.path.name}:{what}: "
                f"{os.strerror(err or errno.EINVAL)}" + (f" [{detail}]" if detail else ""),
                fix="check that the tracepoint exists: kernsight doctor",
            )
        out = Link(link, program)
        self._links.append(out)
        return out

    def _find_program(self, name: str) -> int:
        prog = next((p for n, p in self._programs() if n == name), None)
        if prog is None:
            raise KernelError(f"{self.path.name}: no program named {name!r}")
        return prog

    def attach_tracepoint(self, program: str, category: str, name: str, cookie: int) -> Link:
        """Attach `program` to the classic tracepoint category:name with a BPF cookie (what
        bpf_get_attach_cookie returns in the program). `detach(link)` undoes it early;
        close() destroys whatever is left."""
        prog = self._find_program(program)
        opts = _TracepointOpts(ctypes.sizeof(_TracepointOpts), cookie)
        return self._attach(
            program, f"{program} to tracepoint {category}:{name}",
            lambda: _lib.bpf_program__attach_tracepoint_opts(
                prog, category.encode(), name.encode(), ctypes.byref(opts)
            ),
        )  # fmt: skip

    def detach(self, *links: Detachable) -> None:
        """Destroy these links, in order. Destroying a tracepoint's perf link waits for RCU
        grace periods (~85 ms measured here), so libbpf links (independent of each other)
        are destroyed from threads at once, where part of those waits overlaps."""
        bpf_links = [x for x in links if isinstance(x, Link)]
        if len(bpf_links) > 2:
            with ThreadPoolExecutor(min(64, len(bpf_links))) as pool:
                list(pool.map(Link.destroy, bpf_links))  # ctypes drops the GIL in the call
        for link in links:
            link.destroy()
        gone = {id(x) for x in links}
        self._links = [x for x in self._links if id(x) not in gone]

    def program_fd(self, name: str) -> int:
        for n, prog in self._programs():
            if n == name:
                fd = _lib.bpf_program__fd(prog)
                if fd < 0:
                    raise KernelError(f"{self.path.name}:{name} is not loaded")
                return fd
        raise KernelError(f"{self.path.name}: no program named {name!r}")

    def own(self, link: Detachable) -> None:
        """Destroy `link` (attached by other means, e.g. kernel/tc.py) when this closes."""
        self._links.append(link)

    def close(self) -> None:
        self.detach(*reversed(self._links))
        if self._ptr:
            _lib.bpf_object__close(self._ptr)
            self._ptr = None
        self.loaded = False

    def __enter__(self) -> BPFObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Last resort only; owners close explicitly.
        if getattr(self, "_ptr", None):
            self.close()
