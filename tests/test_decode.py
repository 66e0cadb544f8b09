"""Decoding helpers on byte patterns the kernel can hand us."""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import pytest

from kernsight.sources.base import cstrings, mmap_pages


def _rows(*items: bytes, width: int = 16) -> np.ndarray:
    a = np.zeros((len(items), width), dtype=np.uint8)
    for i, b in enumerate(items):
        a[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return a


def test_cstrings_stop_at_nul_and_handle_full_width() -> None:
    got = cstrings(_rows(b"bash", b"", b"x" * 16, b"ab\0cd")).to_pylist()
    assert got == ["bash", "", "x" * 16, "ab"]


def test_cstrings_replace_invalid_utf8_but_keep_valid() -> None:
    got = cstrings(_rows(b"ok", "héllo".encode(), b"\xff\xfebad")).to_pylist()
    assert got == ["ok", "héllo", "\ufffd\ufffdbad"]


def test_cstrings_with_explicit_lengths() -> None:
    assert cstrings(_rows(b"a b c"), np.array([3])).to_pylist() == ["a b"]


def test_ring_sizes_are_page_multiples_and_powers_of_two() -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    assert mmap_pages(1) == page
    assert mmap_pages(5 << 20) == 8 << 20


@pytest.mark.bpf
def test_idle_capture_does_not_busy_poll(capture) -> None:
    """The reader sleeps in epoll: two idle seconds cost (almost) no CPU. A kernel filter
    on our own (sleeping) pid keeps other activity on the host out of the measurement."""
    cap, _ = capture
    quiet = {"pid": [os.getpid()]}
    cap.start("process", filters=quiet)
    cap.start("files", filters=quiet)
    cap.start("syscall_stats", filters=quiet)
    time.sleep(0.5)
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(2.0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 0.2, f"{cpu:.3f}s of CPU in 2s idle"
