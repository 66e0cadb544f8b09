"""The commands a user runs: doctor and the live capture view, as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

KS = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "kernsight")
pytestmark = pytest.mark.bpf


def test_doctor_passes_here() -> None:
    r = subprocess.run([KS, "doctor"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for check in ("privileges", "BTF", "tracefs", "source process", "source files"):
        assert check in r.stdout


def _capture(*args: str, action) -> subprocess.CompletedProcess:
    p = subprocess.Popen([KS, "capture", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)  # fmt: skip
    first = p.stderr.readline()  # "capturing ...": loaded and attached
    action()
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, out, first + err)


def test_capture_json_lines_show_a_real_exec() -> None:
    tag = f"ks-{uuid.uuid4().hex[:10]}"
    echo = lambda: subprocess.run(["/bin/echo", tag], capture_output=True)  # noqa: E731
    r = _capture("process", "--for", "4", "--json", action=echo)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    ex = [x for x in rows if x["event"] == "exec" and x["argv"] == f"/bin/echo {tag}"]
    assert len(ex) == 1 and ex[0]["source"] == "process" and ex[0]["filename"] == "/bin/echo"
    assert ex[0]["ts"].endswith("Z") and ex[0]["batch"] >= 1
    assert "summary: process: delivered" in r.stderr and "lost 0" in r.stderr


def test_capture_view_is_aligned_and_escapes_control_characters(tmp_path) -> None:
    """A traced name carrying a terminal escape sequence is shown inert."""
    evil = tmp_path / "x\x1b[31mred"
    r = _capture(
        "files", "--for", "4", "--comm", "cat",
        action=lambda: subprocess.run(["/bin/sh", "-c", f"cat '{evil}' 2>/dev/null"]),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    assert "x?[31mred" in r.stdout
    assert r.stdout.splitlines()[0].split() == ["TIME", "SOURCE", "PID", "COMM", "EVENT"]
    assert "summary: files: delivered" in r.stderr


def test_capture_unknown_source_is_an_error() -> None:
    r = subprocess.run([KS, "capture", "nope", "--for", "1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown source 'nope'" in r.stderr and "process" in r.stderr
