"""The security source against the real kernel: a child performs each call for real and the
row carries that child's pid and what the kernel decoded (target, paths, flags, result)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest

pytestmark = pytest.mark.bpf
PY = sys.executable
PRELUDE = textwrap.dedent(
    """\
    import ctypes, errno, os, socket, struct, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    def sc(nr, *args):  # ints as full 64-bit registers
        r = libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
        return r if r >= 0 else -ctypes.get_errno()
    """
)


@pytest.fixture
def sec(capture):
    cap, col = capture
    cap.start("security")
    return cap, col


@pytest.fixture
def victim():
    """A process of the test's own for the child to trace and signal."""
    p = subprocess.Popen(["sleep", "30"])
    yield p
    p.kill()
    p.wait()


def run(code: str, **kw) -> int:
    """Run `code` in a new python process (the pid rows must carry); return its pid."""
    p = subprocess.Popen([PY, "-c", PRELUDE + textwrap.dedent(code)], **kw)
    assert p.wait(timeout=20) == 0
    return p.pid


def rows(col, pid: int, syscall: str | tuple[str, ...], n: int = 1, **where) -> list[dict]:
    names = (syscall,) if isinstance(syscall, str) else syscall
    return col.wait_rows(
        "security",
        lambda r: (
            r["pid"] == pid and r["syscall"] in names and all(r[k] == v for k, v in where.items())
        ),
        n=n,
    )


def test_ptrace_attach_and_process_vm_writev_name_the_target(sec, victim) -> None:
    cap, col = sec
    pid = run(
        f"""
        v = {victim.pid}
        assert sc(101, 16, v, 0, 0) == 0            # PTRACE_ATTACH
        os.waitpid(v, 0)
        assert sc(101, 17, v, 0, 0) == 0            # PTRACE_DETACH
        buf = ctypes.create_string_buffer(8)
        local = struct.pack("QQ", ctypes.addressof(buf), 8)
        remote = struct.pack("QQ", 0, 8)
        r = sc(311, v, local, 1, remote, 1, 0)     # process_vm_writev to address 0: EFAULT
        assert r == -errno.EFAULT, r
        """
    )
    att = rows(col, pid, "ptrace", request=16)
    assert len(att) == 1, att
    assert att[0]["target_pid"] == victim.pid and att[0]["target_comm"] == "sleep"
    assert att[0]["ret"] == 0 and att[0]["target_kernsight"] is False
    assert att[0]["exe"] == os.path.realpath(PY)
    assert rows(col, pid, "ptrace", request=17)[0]["target_pid"] == victim.pid
    pvm = rows(col, pid, "process_vm_writev")
    assert pvm[0]["target_pid"] == victim.pid and pvm[0]["ret"] < 0


def test_setuid_to_root_by_a_non_root_process_fails_and_is_recorded(sec) -> None:
    cap, col = sec
    pid = run(
        """
        os.setgid(65534)
        os.setuid(65534)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        assert sc(117, 0, 0, 0) == -errno.EPERM        # setresuid(0, 0, 0)
        """
    )
    drop = rows(col, pid, "setuid", arg0=65534)
    assert drop and drop[0]["uid"] == 0 and drop[0]["euid"] == 0 and drop[0]["ret"] == 0
    up = rows(col, pid, "setuid", arg0=0)
    assert len(up) == 1, up
    assert up[0]["ret"] == -errno.EPERM and up[0]["uid"] == 65534 and up[0]["euid"] == 65534
    res = rows(col, pid, "setresuid")
    assert res[0]["ret"] == -errno.EPERM and res[0]["uid"] == 65534
    assert rows(col, pid, "setgid", arg0=65534)[0]["ret"] == 0


def test_chmod_setuid_bit_and_fchmod_path_from_fd(sec, tmp_path) -> None:
    cap, col = sec
    f = tmp_path / "suid"
    f.write_bytes(b"#!/bin/sh\n")
    pid = run(
        f"""
        os.chmod({str(f)!r}, 0o4755)
        fd = os.open({str(f)!r}, os.O_RDONLY)
        os.fchmod(fd, 0o2750)
        """
    )
    ch = rows(col, pid, ("chmod", "fchmodat"))
    assert ch[0]["path"] == str(f) and ch[0]["mode"] == 0o4755 and ch[0]["ret"] == 0
    fch = rows(col, pid, "fchmod")
    assert fch[0]["path"] == str(f) and fch[0]["mode"] == 0o2750  # resolved from the fd


def test_relative_paths_are_joined_to_the_cwd_and_dir_fd(sec, tmp_path) -> None:
    cap, col = sec
    (tmp_path / "sub").mkdir()
    pid = run(
        f"""
        os.chdir({str(tmp_path)!r})
        open("rel", "w").close()
        os.chmod("rel", 0o600)
        d = os.open("sub", os.O_RDONLY)
        open("sub/x", "w").close()
        os.unlink("x", dir_fd=d)
        os.rename("rel", "sub/moved")
        """
    )
    assert rows(col, pid, ("chmod", "fchmodat"))[0]["path"] == f"{tmp_path}/rel"
    un = rows(col, pid, "unlinkat")
    assert un[0]["path"] == f"{tmp_path}/sub/x" and un[0]["ret"] == 0
    rn = rows(col, pid, ("rename", "renameat", "renameat2"))
    assert rn[0]["path"] == f"{tmp_path}/rel" and rn[0]["path2"] == f"{tmp_path}/sub/moved"


def test_setxattr_security_capability_by_path_and_fd(sec, tmp_path) -> None:
    cap, col = sec
    f = tmp_path / "capfile"
    f.write_bytes(b"x")
    # VFS_CAP_REVISION_2 | effective, permitted = CAP_NET_RAW
    blob = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
    pid = run(
        f"""
        for target in ({str(f)!r}, os.open({str(f)!r}, os.O_RDONLY)):
            try:
                os.setxattr(target, "security.capability", {blob!r})
            except OSError:
                pass  # the filesystem may refuse; the attempt is what counts
        """
    )
    by_path = rows(col, pid, "setxattr")
    assert by_path[0]["name"] == "security.capability" and by_path[0]["path"] == str(f)
    by_fd = rows(col, pid, "fsetxattr")
    assert by_fd[0]["name"] == "security.capability" and by_fd[0]["path"] == str(f)


def test_module_loads_are_recorded_even_when_they_fail(sec, tmp_path) -> None:
    cap, col = sec
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"not an ELF module" * 4)
    pid = run(
        f"""
        fd = os.open({str(junk)!r}, os.O_RDONLY)
        assert sc(313, fd, b"", 0) < 0                       # finit_module
        assert sc(313, -1, b"", 0) < 0                       # bad fd
        g = ctypes.create_string_buffer(b"\\x7fELFgarbage" * 8)
        assert sc(175, g, len(g), b"") < 0                   # init_module
        assert sc(176, b"ks_no_such_module", os.O_NONBLOCK) < 0   # delete_module
        """
    )
    fin = rows(col, pid, "finit_module", n=2)
    assert len(fin) == 2, fin
    assert any(r["path"] == str(junk) and r["ret"] < 0 for r in fin)
    # ENOSYS on a kernel built without module support (this VM's): still an attempt.
    assert any(r["ret"] in (-errno.EBADF, -errno.ENOSYS) and r["arg0"] == 2**64 - 1 for r in fin)
    assert rows(col, pid, "init_module")[0]["ret"] < 0
    dm = rows(col, pid, "delete_module")
    assert dm[0]["name"] == "ks_no_such_module" and dm[0]["ret"] < 0


CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWUSER = 0x20000, 0x04000000, 0x10000000


def test_namespace_calls_carry_their_flags_and_plain_forks_are_left_out(sec) -> None:
    cap, col = sec
    pid = run(
        f"""
        assert libc.unshare({CLONE_NEWUSER}) == 0
        p = os.fork()                                 # a plain fork: not recorded
        if p == 0:
            os._exit(0)
        os.waitpid(p, 0)
        c = sc(56, {CLONE_NEWUTS} | 17, 0, 0, 0, 0)   # clone(CLONE_NEWUTS | SIGCHLD)
        if c == 0:
            os._exit(0)
        assert c > 0, c
        os.waitpid(c, 0)
        print(c)
        """,
        stdout=subprocess.PIPE,
    )
    un = rows(col, pid, "unshare")
    assert un[0]["flags"] == CLONE_NEWUSER and un[0]["ret"] == 0
    cl = rows(col, pid, ("clone", "clone3"))
    assert len(cl) == 1, cl  # the fork (no namespace flag) was dropped in the kernel
    assert cl[0]["flags"] & CLONE_NEWUTS and cl[0]["ret"] > 0


def test_mount_tmpfs_in_a_private_mount_namespace(sec, tmp_path) -> None:
    cap, col = sec
    target = tmp_path / "mnt"
    target.mkdir()
    MS_REC, MS_PRIVATE = 0x4000, 0x40000
    pid = run(
        f"""
        assert libc.unshare({CLONE_NEWNS}) == 0
        assert libc.mount(b"none", b"/", None, {MS_REC | MS_PRIVATE}, None) == 0
        assert libc.mount(b"ks-src", {str(target).encode()!r}, b"tmpfs", 0, b"size=1m") == 0
        assert libc.umount2({str(target).encode()!r}, 0) == 0
        """
    )
    m = rows(col, pid, "mount", name="tmpfs")
    assert m[0]["path"] == str(target) and m[0]["path2"] == "ks-src" and m[0]["ret"] == 0
    assert rows(col, pid, "mount", flags=MS_REC | MS_PRIVATE)[0]["path"] == "/"
    assert rows(col, pid, "umount2")[0]["path"] == str(target)
    assert rows(col, pid, "unshare")[0]["flags"] == CLONE_NEWNS


def test_setns_names_the_namespace_kind(sec) -> None:
    cap, col = sec
    pid = run(
        """
        fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
        assert libc.setns(fd, 0) == 0                 # nstype 0: any kind
        """
    )
    ns = rows(col, pid, "setns")
    assert ns[0]["name"] == "mnt" and ns[0]["flags"] == 0 and ns[0]["ret"] == 0


def test_dup2_of_a_socket_onto_stdout_is_marked(sec) -> None:
    cap, col = sec
    pid = run(
        """
        a, b = socket.socketpair()
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(a.fileno(), 1)
        os.dup2(null, 2)
        """
    )
    s = rows(col, pid, "dup2", arg1=1)
    assert s[0]["fd_is_socket"] is True and s[0]["path"].startswith("sockfs:")
    n = rows(col, pid, "dup2", arg1=2)
    assert n[0]["fd_is_socket"] is False and n[0]["path"] == "/dev/null"


def test_packet_and_raw_sockets_only(sec) -> None:
    cap, col = sec
    pid = run(
        """
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()   # not recorded
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()  # nor netlink's raw
        """
    )
    pk = rows(col, pid, "socket", family=socket.AF_PACKET)
    assert pk[0]["sock_type"] == socket.SOCK_RAW and pk[0]["protocol"] == socket.htons(3)
    assert pk[0]["ret"] >= 0
    raw = rows(col, pid, "socket", family=socket.AF_INET)
    assert len(raw) == 1 and raw[0]["sock_type"] == socket.SOCK_RAW  # the TCP one was left out
    assert (
        col.rows("security", lambda r: r["pid"] == pid and r["family"] == socket.AF_NETLINK) == []
    )


def test_signals_to_kernsight_are_marked_and_self_signals_left_out(sec, victim) -> None:
    cap, col = sec
    pid = run(
        f"""
        os.kill({os.getpid()}, 0)                 # kernsight (this test process)
        os.kill({victim.pid}, {int(signal.SIGSTOP)})
        os.kill(os.getpid(), 0)                   # itself: left out
        pfd = os.pidfd_open({victim.pid})
        signal_ = {int(signal.SIGCONT)}
        assert sc(424, pfd, signal_, 0, 0) == 0   # pidfd_send_signal
        """
    )
    ks = rows(col, pid, "kill", target_pid=os.getpid())
    assert ks[0]["target_kernsight"] is True and ks[0]["signal"] == 0
    st = rows(col, pid, "kill", target_pid=victim.pid)
    assert st[0]["signal"] == signal.SIGSTOP and st[0]["target_kernsight"] is False
    assert st[0]["target_comm"] == "sleep"
    pf = rows(col, pid, "pidfd_send_signal")
    assert pf[0]["target_pid"] == victim.pid and pf[0]["signal"] == signal.SIGCONT
    assert col.rows("security", lambda r: r["pid"] == pid and r["target_pid"] == pid) == []


def test_deleting_ones_own_executable(sec, tmp_path) -> None:
    cap, col = sec
    exe = tmp_path / f"pycopy-{uuid.uuid4().hex[:6]}"
    shutil.copy(os.path.realpath(PY), exe)
    other = tmp_path / "other"
    other.write_text("x")
    env = dict(os.environ, PYTHONHOME=sys.base_prefix)
    p = subprocess.Popen(
        [str(exe), "-c", f"import os; os.unlink({str(other)!r}); os.unlink({str(exe)!r})"],
        env=env,
    )
    assert p.wait(timeout=20) == 0
    own = rows(col, p.pid, "unlink", path=str(exe))
    assert own[0]["self_exe_deleted"] is True and own[0]["exe"].startswith(str(exe))
    assert rows(col, p.pid, "unlink", path=str(other))[0]["self_exe_deleted"] is False


def test_utimensat_by_path_and_futimens_by_fd(sec, tmp_path) -> None:
    cap, col = sec
    f = tmp_path / "stamped"
    f.write_text("x")
    pid = run(
        f"""
        os.utime({str(f)!r}, (1000000000, 1000000000))
        fd = os.open({str(f)!r}, os.O_RDONLY)
        os.utime(fd, (1000000000, 1000000000))
        os.truncate({str(f)!r}, 0)
        os.symlink("/dev/null", {str(f)!r} + ".lnk")
        os.memfd_create("ks-payload")
        """
    )
    ut = rows(col, pid, "utimensat", n=2)
    assert len(ut) == 2 and {r["path"] for r in ut} == {str(f)}
    assert {r["arg1"] == 0 for r in ut} == {True, False}  # one by fd (NULL path)
    assert rows(col, pid, "truncate")[0]["path"] == str(f)
    sl = rows(col, pid, "symlink")
    assert sl[0]["path"] == "/dev/null" and sl[0]["path2"] == f"{f}.lnk"
    assert rows(col, pid, "memfd_create")[0]["name"] == "ks-payload"


def test_ld_preload_in_an_execd_environment(capture) -> None:
    cap, col = capture
    cap.start("process")
    tag = uuid.uuid4().hex[:10]
    env = dict(os.environ, LD_PRELOAD="/nonexistent-ks.so", KS_FILLER="y" * 6000)
    subprocess.run(["/bin/true", f"with-{tag}"], env=env, stderr=subprocess.DEVNULL, check=True)
    clean = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    subprocess.run(["/bin/true", f"without-{tag}"], env=clean, check=True)
    subprocess.run(["/bin/true", f"empty-{tag}"], env=dict(clean, LD_PRELOAD=""), check=True)

    def ex(word: str) -> dict:
        found = col.wait_rows("process", lambda r: r["event"] == "exec" and word in r["argv"])
        assert len(found) == 1, found
        return found[0]

    w = ex(f"with-{tag}")
    assert w["ld_preload"] is True and w["exe_path"] == os.path.realpath("/bin/true")
    assert ex(f"without-{tag}")["ld_preload"] is False
    assert ex(f"empty-{tag}")["ld_preload"] is False


def test_nothing_lost_and_kernsight_itself_left_out(sec, tmp_path) -> None:
    cap, col = sec
    mine = tmp_path / "mine"
    mine.write_text("x")
    os.chmod(mine, 0o600)  # the test process is kernsight: dropped in the kernel
    pid = run(f"os.chmod({str(mine)!r}, 0o644)")
    assert rows(col, pid, ("chmod", "fchmodat"))
    assert col.rows("security", lambda r: r["pid"] == os.getpid()) == []
    cap.stop("security")
    st = cap.final["security"]
    assert st.lost == 0 and st.delivered == st.produced
