"""Compile the BPF C sources (CO-RE) against a vmlinux.h made from the running kernel's BTF.

An object is rebuilt when its source, the shared header or the kernel's BTF changed; so
editing a `.bpf.c` is enough, the next load rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from .errors import BuildError

BPF_SRC_DIR = Path(__file__).resolve().parent.parent / "bpf"
BTF_PATH = Path("/sys/kernel/btf/vmlinux")
_ARCH = {"x86_64": "x86", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def build_dir() -> Path:
    """Next to the sources when writable (a checkout), else in the state directory."""
    override = os.environ.get("KERNSIGHT_BPF_BUILD_DIR")
    if override:
        return Path(override)
    if os.access(BPF_SRC_DIR, os.W_OK):
        return BPF_SRC_DIR / ".build"
    state = os.environ.get("KERNSIGHT_STATE_DIR", "/var/lib/kernsight")
    return Path(state) / "bpf"


def sources() -> list[str]:
    return sorted(p.name.removesuffix(".bpf.c") for p in BPF_SRC_DIR.glob("*.bpf.c"))


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if not path:
        raise BuildError(f"{name} not found", fix=f"apt-get install {package}")
    return path


def _btf_digest() -> str:
    if not BTF_PATH.exists():
        raise BuildError(
            f"{BTF_PATH} is missing: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF)",
            fix="use a kernel with CONFIG_DEBUG_INFO_BTF=y; CO-RE programs need it",
        )
    try:
        return hashlib.sha256(BTF_PATH.read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise BuildError(f"cannot read {BTF_PATH}: {e.strerror}", fix="run as root") from e


def vmlinux_header(out_dir: Path) -> Path:
    """vmlinux.h for the running kernel, regenerated when the kernel's BTF changes."""
    digest = _btf_digest()
    header = out_dir / "vmlinux.h"
    stamp = out_dir / "vmlinux.h.btf"
    if header.exists() and stamp.exists() and stamp.read_text() == digest:
        return header
    bpftool = _tool("bpftool", "bpftool")
    out_dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [bpftool, "btf", "dump", "file", str(BTF_PATH), "format", "c"],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise BuildError(f"bpftool could not dump {BTF_PATH}: {r.stderr.strip()}")
    tmp = header.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(r.stdout)
    tmp.replace(header)
    stamp.write_text(digest)
    return header


def _inputs_digest(name: str, header: Path) -> str:
    h = hashlib.sha256()
    for p in (
        BPF_SRC_DIR / f"{name}.bpf.c",
        *sorted(BPF_SRC_DIR.glob("*.h")),  # the shared headers (common.h, path.h)
        header.with_suffix(".h.btf"),
    ):
        h.update(p.read_bytes())
    return h.hexdigest()


def build(name: str, *, force: bool = False) -> Path:
    """Return the path of `name.bpf.o`, compiling it if it is missing or stale."""
    src = BPF_SRC_DIR / f"{name}.bpf.c"
    if not src.exists():
        raise BuildError(f"no BPF source {src}")
    out_dir = build_dir()
    header = vmlinux_header(out_dir)
    obj = out_dir / f"{name}.bpf.o"
    stamp = out_dir / f"{name}.bpf.o.inputs"
    digest = _inputs_digest(name, header)
    if not force and obj.exists() and stamp.exists() and stamp.read_text() == digest:
        return obj
    compile_bpf(src, obj, out_dir)
    stamp.write_text(digest)
    return obj


def compile_bpf(src: Path, obj: Path, include_dir: Path) -> None:
    """clang -target bpf (CO-RE) one source into obj; include_dir holds vmlinux.h."""
    clang = _tool("clang", "clang")
    tmp = obj.with_suffix(f".{os.getpid()}.tmp")  # concurrent builds never share a file
    cmd = [
        clang, "-g", "-O2", "-target", "bpf", "-mcpu=v3", f"-D__TARGET_ARCH_{_ARCH}",
        "-Wall", "-Wno-unused-function",
        "-I", str(include_dir), "-I", str(BPF_SRC_DIR),
        "-c", str(src), "-o", str(tmp),
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise BuildError(
            f"compiling {src.name} failed:\n{r.stderr.strip()}",
            fix="libbpf-dev provides <bpf/bpf_helpers.h>: apt-get install libbpf-dev",
        )
    tmp.replace(obj)


def build_all(force: bool = False) -> list[Path]:
    return [build(n, force=force) for n in sources()]
