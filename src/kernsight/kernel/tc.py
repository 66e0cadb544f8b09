"""TC programs on network interfaces, attached as tcx links (kernel 6.6+).

A tcx link belongs to its file descriptor: when the last descriptor closes (normal exit, a
crash, kill -9) the kernel detaches the program, so a dead kernsight leaves no filter behind.
`TcxLink.destroy()` detaches explicitly first (BPF_LINK_DETACH), so a descriptor another
process inherited by fork cannot keep our program attached either; and every run records its
link ids in run_dir() so that the next run detaches what such a leaked descriptor still holds.

Interfaces can live in another network namespace: "NETNS/IFNAME", where NETNS is a name in
/run/netns (as `ip netns` makes them) or a path such as /proc/PID/ns/net. Work inside a
namespace runs on a short-lived thread that enters it, so no other thread ever changes netns.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .bpf import _lib
from .errors import AttachError, KernelError

_c = ctypes
_lib.bpf_link_create.restype = _c.c_int
_lib.bpf_link_create.argtypes = [_c.c_int, _c.c_int, _c.c_int, _c.c_void_p]
_lib.bpf_link_detach.restype = _c.c_int
_lib.bpf_link_detach.argtypes = [_c.c_int]
_lib.bpf_obj_get_info_by_fd.restype = _c.c_int
_lib.bpf_obj_get_info_by_fd.argtypes = [_c.c_int, _c.c_void_p, _c.POINTER(_c.c_uint32)]
_lib.bpf_link_get_fd_by_id.restype = _c.c_int
_lib.bpf_link_get_fd_by_id.argtypes = [_c.c_uint32]
_lib.bpf_prog_get_fd_by_id.restype = _c.c_int
_lib.bpf_prog_get_fd_by_id.argtypes = [_c.c_uint32]
_lib.bpf_prog_query_opts.restype = _c.c_int
_lib.bpf_prog_query_opts.argtypes = [_c.c_int, _c.c_int, _c.c_void_p]
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.restype = _c.c_int
_libc.setns.argtypes = [_c.c_int, _c.c_int]

BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
BPF_LINK_TYPE_TCX = 11
DIRECTIONS = {"ingress": BPF_TCX_INGRESS, "egress": BPF_TCX_EGRESS}
CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71
SIOCGIFFLAGS, SIOCGIFHWADDR = 0x8913, 0x8927
IFF_UP, IFF_LOOPBACK = 0x1, 0x8
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
NETNS_DIR = Path("/run/netns")


def run_dir() -> Path:
    """Where runs note their links (KERNSIGHT_RUN_DIR, default /run/kernsight: gone at boot,
    like the links)."""
    return Path(os.environ.get("KERNSIGHT_RUN_DIR", "/run/kernsight")) / "tcx"


T = TypeVar("T")


def netns_path(netns: str) -> Path:
    return Path(netns) if netns.startswith("/") else NETNS_DIR / netns


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """fn() inside network namespace `netns` (None: ours), on a thread of its own."""
    if netns is None:
        return fn()
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(
            f"network namespace {netns!r}: cannot open {path}: {e.strerror}",
            fix="name one listed by `ip netns list`, or a path like /proc/PID/ns/net",
        ) from e
    out: dict = {}

    def run() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWNET):
                err = ctypes.get_errno()
                raise KernelError(f"cannot enter network namespace {netns!r}: {os.strerror(err)}")
            out["value"] = fn()
        except BaseException as e:  # handed to the caller
            out["error"] = e

    try:
        t = threading.Thread(target=run, name=f"kernsight-netns-{netns}", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in out:
        raise out["error"]
    return out["value"]


@dataclass(frozen=True)
class Interface:
    name: str
    ifindex: int
    netns: str | None  # None: the namespace kernsight runs in
    netns_cookie: int
    up: bool
    loopback: bool
    has_l2: bool  # frames start with an Ethernet header

    @property
    def label(self) -> str:
        return f"{self.netns}/{self.name}" if self.netns else self.name


def _interfaces_here(netns: str | None) -> list[Interface]:
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        cookie = struct.unpack("<Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        for ifindex, name in socket.if_nameindex():
            req = struct.pack("16s16x", name.encode())
            try:
                flags = struct.unpack_from("<H", fcntl.ioctl(s, SIOCGIFFLAGS, req), 16)[0]
                hwtype = struct.unpack_from("<H", fcntl.ioctl(s, SIOCGIFHWADDR, req), 16)[0]
            except OSError:  # gone meanwhile
                continue
            out.append(Interface(name, ifindex, netns, cookie, bool(flags & IFF_UP),
                                 bool(flags & IFF_LOOPBACK),
                                 hwtype in (ARPHRD_ETHER, ARPHRD_LOOPBACK)))  # fmt: skip
    return out


def interfaces(netns: str | None = None) -> list[Interface]:
    """Every interface of a network namespace."""
    return in_netns(netns, lambda: _interfaces_here(netns))


def resolve(specs: list[str] | None, loopback: bool = False) -> list[Interface]:
    """Interfaces named "IFNAME" or "NETNS/IFNAME"; "NETNS/*" is every interface that is up
    there. No specs: every interface that is up here (loopback only when asked)."""
    if not specs:
        return [i for i in interfaces() if i.up and (loopback or not i.loopback)]
    out: list[Interface] = []
    by_ns: dict[str | None, list[Interface]] = {}
    for spec in specs:
        netns, _, name = spec.rpartition("/")
        ns = netns or None
        if not name:
            raise KernelError(f"interface spec {spec!r}: no interface name after the '/'")
        if ns not in by_ns:
            by_ns[ns] = interfaces(ns)
        known = by_ns[ns]
        if name == "*":
            out += [i for i in known if i.up and (loopback or not i.loopback)]
            continue
        match = [i for i in known if i.name == name]
        if not match:
            where = f" in network namespace {ns!r}" if ns else ""
            names = ", ".join(i.name for i in known) or "none"
            raise KernelError(f"no interface {name!r}{where} (there: {names})")
        out += match
    seen: set[tuple[int, int]] = set()
    return [i for i in out if not ((i.netns_cookie, i.ifindex) in seen
                                   or seen.add((i.netns_cookie, i.ifindex)))]  # fmt: skip


# -- links ------------------------------------------------------------------------------------


def _info(fd: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    n = _c.c_uint32(size)
    rc = _lib.bpf_obj_get_info_by_fd(fd, buf, _c.byref(n))
    if rc:
        raise KernelError(f"bpf_obj_get_info_by_fd failed: {os.strerror(-rc)}")
    return buf.raw


def link_info(fd: int) -> tuple[int, int, int, int, int]:
    """(link id, link type, program id, ifindex, attach type) of a link fd; the last two are
    meaningful for tcx links only."""
    raw = _info(fd, 64)
    ltype, lid, prog_id = struct.unpack_from("<III", raw, 0)
    ifindex, attach_type = struct.unpack_from("<II", raw, 16)
    return lid, ltype, prog_id, ifindex, attach_type


def prog_name(prog_id: int) -> str | None:
    fd = _lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return None
    try:
        return _info(fd, 256)[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


class TcxLink:
    """One program attached to one interface and direction; destroy() detaches it."""

    def __init__(self, fd: int, iface: Interface, direction: str, program: str) -> None:
        self.fd: int | None = fd
        self.iface, self.direction, self.program = iface, direction, program
        self.id = link_info(fd)[0]

    def destroy(self) -> None:
        if self.fd is None:
            return
        _lib.bpf_link_detach(self.fd)  # even if a forked child still holds the fd
        os.close(self.fd)
        self.fd = None


class _QueryOpts(ctypes.Structure):  # struct bpf_prog_query_opts (libbpf 1.1)
    _fields_ = [("sz", _c.c_size_t), ("query_flags", _c.c_uint32), ("attach_flags", _c.c_uint32),
                ("prog_ids", _c.POINTER(_c.c_uint32)), ("prog_cnt", _c.c_uint32),
                ("prog_attach_flags", _c.POINTER(_c.c_uint32))]  # fmt: skip


def attached(iface: Interface) -> dict[str, list[str]]:
    """The names of the tcx programs attached to an interface, per direction (ours or not)."""

    def query() -> dict[str, list[str]]:
        out = {}
        for direction, attach_type in DIRECTIONS.items():
            ids = (_c.c_uint32 * 64)()
            opts = _QueryOpts(sz=ctypes.sizeof(_QueryOpts), prog_ids=ids, prog_cnt=64)
            rc = _lib.bpf_prog_query_opts(iface.ifindex, attach_type, ctypes.byref(opts))
            if rc:
                raise KernelError(f"cannot query tcx programs on {iface.label}: "
                                  f"{os.strerror(-rc)}")  # fmt: skip
            out[direction] = [prog_name(ids[i]) or "?" for i in range(opts.prog_cnt)]
        return out

    return in_netns(iface.netns, query)


def attach_tcx(prog_fd: int, program: str, iface: Interface, direction: str) -> TcxLink:
    attach_type = DIRECTIONS[direction]

    def create() -> int:
        ctypes.set_errno(0)
        fd = _lib.bpf_link_create(prog_fd, iface.ifindex, attach_type, None)
        return fd if fd >= 0 else -(ctypes.get_errno() or -fd)

    fd = in_netns(iface.netns, create)
    if fd < 0:
        err = -fd
        fix = "tcx needs Linux 6.6 or newer" if err in (errno.EINVAL, errno.ENOTSUP) else ""
        raise AttachError(
            f"cannot attach {program} to {iface.label} ({direction}): {os.strerror(err)}", fix
        )
    return TcxLink(fd, iface, direction, program)


# -- what a killed run may have left ----------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_links(tag: str, links: list[TcxLink]) -> Path:
    """Note this process's link ids, for sweep() after a crash. Returns the note's path."""
    notes = run_dir()
    notes.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid = os.getpid()
    path = notes / f"{tag}.{pid}.json"
    doc = {"pid": pid, "start": _start_time(pid), "links": [link.id for link in links]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)
    return path


def sweep(tag: str, programs: set[str]) -> list[int]:
    """Detach the links that dead runs recorded, when they still run one of `programs`.
    Returns the ids detached."""
    detached: list[int] = []
    notes = run_dir()
    if not notes.is_dir():
        return detached
    for note in notes.glob(f"{tag}.*.json"):
        try:
            doc = json.loads(note.read_text())
        except (OSError, ValueError):
            note.unlink(missing_ok=True)
            continue
        start = _start_time(doc.get("pid", 0))
        if start is not None and start == doc.get("start"):
            continue  # that run is alive
        for lid in doc.get("links", []):
            fd = _lib.bpf_link_get_fd_by_id(lid)
            if fd < 0:
                continue  # already gone
            try:
                _, ltype, prog_id, _, _ = link_info(fd)
                if ltype == BPF_LINK_TYPE_TCX and prog_name(prog_id) in programs:
                    _lib.bpf_link_detach(fd)
                    detached.append(lid)
            finally:
                os.close(fd)
        note.unlink(missing_ok=True)
    return detached
