"""security: the syscalls security rules watch, with kernel enrichment (bpf/security.bpf.c).

The kernel program knows no syscall numbers: `configure` fills its `watch` map with, for
each watched syscall, which arguments are paths, fds, names, flags and mode.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..kernel.bpf import BPFObject
from . import syscall_names
from .base import COMMON_COLUMNS, HEADER_DTYPE, Column, Source, cstrings, header_columns

PATH_BYTES = 256
NAME_BYTES = 64

RECORD = np.dtype(
    HEADER_DTYPE
    + [
        ("args", "<u8", 6),
        ("ret", "<i8"),
        ("flags", "<u8"),
        ("target_pid", "<i8"),
        ("request", "<i8"),
        ("nr", "<u4"),
        ("euid", "<u4"),
        ("mode", "<u4"),
        ("signal", "<i4"),
        ("family", "<i4"),
        ("sock_type", "<i4"),
        ("protocol", "<i4"),
        ("target_kernsight", "u1"),
        ("fd_is_socket", "u1"),
        ("self_exe_deleted", "u1"),
        ("_pad", "u1"),
        ("target_comm", "u1", 16),
        ("name", "u1", NAME_BYTES),
        ("exe", "u1", PATH_BYTES),
        ("path", "u1", PATH_BYTES),
        ("path2", "u1", PATH_BYTES),
    ]
)

# enum in security.bpf.c: what the kernel decodes beyond the generic argument roles.
(K_GENERIC, K_PTRACE, K_PROCESS_VM, K_KILL, K_TKILL, K_TGKILL, K_PIDFD_SIGNAL, K_SOCKET,
 K_CLONE, K_CLONE3, K_DUP, K_BPF, K_SETNS) = range(1, 14)  # fmt: skip
W_RAW_PATH, W_RAW_PATH2, W_EXE_CHECK = 1, 2, 4
WATCH_FORMAT = "<Bbbbbbbbbb2x"  # struct watch


@dataclass(frozen=True)
class Watch:
    """Argument indexes (-1: none) of one syscall's path, dir fd, fd, name, flags and mode."""

    kind: int = K_GENERIC
    path: int = -1
    dfd: int = -1
    fd: int = -1
    path2: int = -1
    dfd2: int = -1
    name: int = -1
    flags: int = -1
    mode: int = -1
    opts: int = 0

    def pack(self) -> bytes:
        return struct.pack(WATCH_FORMAT, self.kind, self.path, self.dfd, self.fd, self.path2,
                           self.dfd2, self.name, self.flags, self.mode, self.opts)  # fmt: skip


_CRED = Watch()
_UNLINK = W_EXE_CHECK
WATCHED: dict[str, Watch] = {
    "ptrace": Watch(K_PTRACE),
    "process_vm_readv": Watch(K_PROCESS_VM),
    "process_vm_writev": Watch(K_PROCESS_VM),
    **dict.fromkeys(
        [
            "setuid",
            "setgid",
            "setreuid",
            "setregid",
            "setresuid",
            "setresgid",
            "setfsuid",
            "setfsgid",
        ],
        _CRED,
    ),
    "chmod": Watch(path=0, mode=1),
    "fchmod": Watch(fd=0, mode=1),
    "fchmodat": Watch(path=1, dfd=0, mode=2),
    "fchmodat2": Watch(path=1, dfd=0, mode=2, flags=3),
    "setxattr": Watch(path=0, name=1, flags=4),
    "lsetxattr": Watch(path=0, name=1, flags=4),
    "fsetxattr": Watch(fd=0, name=1, flags=4),
    "setxattrat": Watch(path=1, dfd=0, flags=2, name=3),
    "init_module": Watch(),
    "finit_module": Watch(fd=0, flags=2),
    "delete_module": Watch(name=0, flags=1),
    "bpf": Watch(K_BPF),
    "unshare": Watch(flags=0),
    "setns": Watch(K_SETNS, fd=0, flags=1),
    "clone": Watch(K_CLONE),
    "clone3": Watch(K_CLONE3),
    "mount": Watch(path=1, path2=0, name=2, flags=3, opts=W_RAW_PATH2),
    "umount2": Watch(path=0, flags=1),
    "fsopen": Watch(name=0, flags=1),
    "fsmount": Watch(fd=0, flags=1),
    "move_mount": Watch(path=3, dfd=2, path2=1, dfd2=0, flags=4),
    "dup2": Watch(K_DUP, fd=0),
    "dup3": Watch(K_DUP, fd=0, flags=2),
    "socket": Watch(K_SOCKET),
    "kill": Watch(K_KILL),
    "tkill": Watch(K_TKILL),
    "tgkill": Watch(K_TGKILL),
    "pidfd_send_signal": Watch(K_PIDFD_SIGNAL, flags=3),
    "unlink": Watch(path=0, opts=_UNLINK),
    "unlinkat": Watch(path=1, dfd=0, flags=2, opts=_UNLINK),
    "rename": Watch(path=0, path2=1, opts=_UNLINK),
    "renameat": Watch(path=1, dfd=0, path2=3, dfd2=2, opts=_UNLINK),
    "renameat2": Watch(path=1, dfd=0, path2=3, dfd2=2, flags=4, opts=_UNLINK),
    "truncate": Watch(path=0),
    "ftruncate": Watch(fd=0),
    "utimensat": Watch(path=1, dfd=0, flags=3),
    "utimes": Watch(path=0),
    "futimesat": Watch(path=1, dfd=0),
    "symlink": Watch(path=0, path2=1, opts=W_RAW_PATH),
    "symlinkat": Watch(path=0, path2=2, dfd2=1, opts=W_RAW_PATH),
    "link": Watch(path=0, path2=1),
    "linkat": Watch(path=1, dfd=0, path2=3, dfd2=2, flags=4),
    "memfd_create": Watch(name=0, flags=1),
}


class Security(Source):
    name = "security"
    description = (
        "Security-relevant syscalls (ptrace, setuid family, chmod, setxattr, modules, bpf, "
        "namespaces, mounts, dup2 of sockets, raw/packet sockets, signals to other processes, "
        "unlink/rename/truncate/utimes/links, memfd_create): one row per completed call, "
        "selected in the kernel, with the target process, resolved paths and the caller's exe."
    )
    bpf_object = "security"
    btf_struct = "security_event"
    example = (
        "SELECT ts, pid, comm, exe, syscall, ret, path, target_pid, target_comm "
        "FROM security "
        "ORDER BY ts DESC LIMIT 20"
    )
    record = RECORD
    ring_bytes = 4 << 20
    skip_self = True
    pushdown = ("pid", "tid", "uid", "comm", "cgroup_id", "nr")
    columns = COMMON_COLUMNS + [
        Column("syscall", pa.string(), "syscall name"),
        Column("nr", pa.uint32(), "syscall number (x86-64 numbering)"),
        Column("ret", pa.int64(), "return value, or -errno (-1 = EPERM, -13 = EACCES)"),
        *[
            Column(f"arg{i}", pa.uint64(), f"raw argument {i} (pointers as numbers)")
            for i in range(6)
        ],
        Column("euid", pa.uint32(), "effective uid of the caller when the call started"),
        Column("exe", pa.string(), "the caller's executable (mm->exe_file), resolved path"),
        Column(
            "path",
            pa.string(),
            "first path argument: as passed when absolute; a relative one joined (not "
            "normalised) to its directory fd or the cwd; for fd calls (fchmod, fsetxattr, "
            "ftruncate, finit_module, setns, dup2/dup3 oldfd, futimens) the fd's file; "
            f"mount/umount2/move_mount: the mount point. First {PATH_BYTES - 1} bytes "
            "(a resolved path longer than that keeps its last components)",
        ),
        Column(
            "path2",
            pa.string(),
            "second path: rename/link/symlink new path, mount source "
            "(as passed), move_mount source",
        ),
        Column(
            "name",
            pa.string(),
            "xattr name, memfd name, module name (delete_module), "
            "fstype (mount, fsopen), bpf program name (PROG_LOAD), setns: the namespace kind "
            "(mnt, user, net...)",
        ),
        Column(
            "flags",
            pa.uint64(),
            "the call's flags (unshare/clone/clone3 CLONE_*, setns "
            "nstype, mount, dup3, unlinkat, renameat2, utimensat, memfd, xattr...)",
        ),
        Column("mode", pa.uint32(), "chmod family: the new mode (0o4000 setuid, 0o2000 setgid)"),
        Column(
            "target_pid",
            pa.int64(),
            "ptrace, process_vm_*, kill family: the target "
            "process (global pid of its thread group; the raw argument when not a live "
            "process, e.g. 0 or -pgid)",
        ),
        Column("target_comm", pa.string(), "the target's command name"),
        Column("target_kernsight", pa.bool_(), "the target is kernsight itself (kill(-1) too)"),
        Column(
            "request",
            pa.int64(),
            "ptrace request (16 ATTACH, 0x4206 SEIZE, 4-6 POKE*); bpf(): the command (5 PROG_LOAD)",
        ),
        Column("signal", pa.int32(), "kill family: the signal (0 probes, 9 KILL, 19 STOP)"),
        Column("family", pa.int32(), "socket: address family (17 AF_PACKET, 2 AF_INET...)"),
        Column("sock_type", pa.int32(), "socket: type, low 4 bits (3 SOCK_RAW, 10 SOCK_PACKET)"),
        Column("protocol", pa.int32(), "socket: protocol"),
        Column("fd_is_socket", pa.bool_(), "dup2/dup3: the duplicated fd is a socket"),
        Column(
            "self_exe_deleted",
            pa.bool_(),
            "unlink/rename: this call removed the last link of the caller's own executable",
        ),
    ]

    def configure(self, obj: BPFObject) -> None:
        """Tell the kernel which syscall numbers to record and how to decode them."""
        watch = obj.map("watch")
        for name, w in WATCHED.items():
            nr = syscall_names.number(name)
            if nr is not None and nr < watch.max_entries:
                watch.update(struct.pack("<I", nr), w.pack())

    def decode(self, rec: np.ndarray, boot_offset_ns: int) -> pa.RecordBatch:
        cols = header_columns(rec, boot_offset_ns)
        nr = rec["nr"]
        cols |= {
            "syscall": syscall_names.lookup(nr.astype(np.int64)),
            "nr": pa.array(nr),
            "ret": pa.array(rec["ret"]),
        }
        args = rec["args"]
        for i in range(6):
            cols[f"arg{i}"] = pa.array(np.ascontiguousarray(args[:, i]))
        for c in (
            "euid",
            "flags",
            "mode",
            "target_pid",
            "request",
            "signal",
            "family",
            "sock_type",
            "protocol",
        ):
            cols[c] = pa.array(rec[c])
        for c in ("exe", "path", "path2", "name", "target_comm"):
            cols[c] = cstrings(rec[c])
        for c in ("target_kernsight", "fd_is_socket", "self_exe_deleted"):
            cols[c] = pa.array(rec[c] != 0)
        return pa.RecordBatch.from_pydict(cols, schema=self.schema())
