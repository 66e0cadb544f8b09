"""The kernel layer's failures are specific and say how to fix them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernsight.kernel import build
from kernsight.kernel.bpf import BPFObject
from kernsight.kernel.errors import BuildError, LoadError

ROOT = Path(__file__).resolve().parents[1]
KS = str(ROOT / ".venv" / "bin" / "kernsight")


def _without_caps(*cmd: str) -> subprocess.CompletedProcess:
    """Run a command as uid 0 with every capability dropped (so files stay readable wherever
    the checkout is, but the kernel refuses BPF)."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) not installed")
    return subprocess.run(
        [setpriv, "--inh-caps=-all", "--bounding-set=-all", *cmd],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "KERNSIGHT_STATE_DIR": "/tmp/ks-nobody"},
    )  # fmt: skip


@pytest.mark.bpf
def test_capture_without_privileges_says_what_is_missing() -> None:
    r = _without_caps(KS, "capture", "process", "--for", "1")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "missing privileges to load BPF programs" in r.stderr
    assert "CAP_BPF" in r.stderr and "run kernsight as root" in r.stderr


@pytest.mark.bpf
def test_doctor_without_privileges_fails_with_fixes() -> None:
    r = _without_caps(KS, "doctor")
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "CAP_BPF" in r.stdout


def test_missing_btf_is_explained(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(build, "BTF_PATH", tmp_path / "no-such-vmlinux")
    monkeypatch.setenv("KERNSIGHT_BPF_BUILD_DIR", str(tmp_path / "b"))
    with pytest.raises(BuildError, match="CONFIG_DEBUG_INFO_BTF"):
        build.build("process")


@pytest.mark.bpf
def test_compile_error_names_the_file(tmp_path) -> None:
    src = tmp_path / "broken.bpf.c"
    src.write_text('#include "common.h"\nint x = undefined_symbol;\n')
    hdr = build.vmlinux_header(build.build_dir())
    with pytest.raises(BuildError, match=r"broken\.bpf\.c.*undefined_symbol"):
        build.compile_bpf(src, tmp_path / "broken.bpf.o", hdr.parent)


@pytest.mark.bpf
def test_verifier_rejection_quotes_the_verifier(tmp_path) -> None:
    """A real program the real verifier rejects (unbounded read into the ring record)."""
    src = tmp_path / "reject.bpf.c"
    src.write_text(
        '#include "common.h"\n'
        'SEC("tp_btf/sched_process_exec")\n'
        "int BPF_PROG(bad, struct task_struct *p) {\n"
        "  char buf[16];\n"
        "  long n = bpf_get_prandom_u32();\n"
        "  bpf_probe_read_kernel(buf, n, p);  /* size not bounded */\n"
        "  return buf[0];\n"
        "}\n"
    )
    obj = tmp_path / "reject.bpf.o"
    build.compile_bpf(src, obj, build.vmlinux_header(build.build_dir()).parent)
    with BPFObject(obj) as o, pytest.raises(LoadError) as ei:
        o.load()
    msg = str(ei.value)
    assert "cannot load BPF object reject.bpf.o" in msg
    assert "verifier log" in msg and "R2" in msg  # the verifier's own words about the size
    assert "fix:" in msg


@pytest.mark.bpf
def test_tracefs_is_mounted_when_missing() -> None:
    """In a private mount namespace without tracefs, kernsight mounts it and the files
    source (classic tracepoints) still attaches."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) not installed")
    script = (
        "umount /sys/kernel/tracing 2>/dev/null; "
        "test ! -d /sys/kernel/tracing/events || { echo still-mounted; exit 3; }; "
        f"{sys.executable} -c 'from kernsight.capture import Capture\n"
        'c = Capture(); c.start("files"); c.close(); print("attached")\' && '
        "test -d /sys/kernel/tracing/events && echo remounted"
    )
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["attached", "remounted"]
