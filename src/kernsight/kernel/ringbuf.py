"""BPF ring buffer read by mmap, whole batches at a time, with no Python per record.

Layout (kernel/bpf/ringbuf.c): page 0 is the consumer position (we write it); from page 1 the
producer position page, then the data area mapped twice in a row, so any run of records
starting inside the area is contiguous in our mapping even when it wraps. Each record is an
8-byte header (u32 length with BUSY/DISCARD bits, u32 page offset) and the payload, padded to
8 bytes. Every record of one source has the same size, so records sit at a fixed stride and
numpy can view them all at once.
"""

from __future__ import annotations

import mmap

import numpy as np

from .bpf import Map
from .errors import KernelError

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8


class RingBuffer:
    def __init__(self, ring_map: Map, record_size: int, max_batch: int = 65536) -> None:
        self.name = ring_map.name
        self.fd = ring_map.fd
        self.size = ring_map.max_entries
        self.mask = self.size - 1
        self.record_size = record_size
        self.stride = (record_size + HDR_SIZE + 7) & ~7
        self.max_batch = max_batch
        page = mmap.PAGESIZE
        try:
            self._cons_mm = mmap.mmap(
                self.fd, page, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
            self._prod_mm = mmap.mmap(
                self.fd, page + 2 * self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                offset=page,
            )  # fmt: skip
        except OSError as e:
            raise KernelError(f"cannot mmap ring buffer {self.name}: {e.strerror}") from e
        self._cons = np.frombuffer(self._cons_mm, dtype=np.uint64, count=1)
        self._prod = np.frombuffer(self._prod_mm, dtype=np.uint64, count=1)
        self._data = np.frombuffer(self._prod_mm, dtype=np.uint8, offset=page)

    def pending_bytes(self) -> int:
        return int(self._prod[0]) - int(self._cons[0])

    def read(self) -> np.ndarray | None:
        """Consume the committed records at the head (up to max_batch) as an (n, record_size)
        uint8 array (a copy), or None when there is nothing committed yet."""
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        avail = prod - cons
        if avail <= 0:
            return None
        if avail % self.stride:
            raise KernelError(
                f"ring {self.name}: {avail} pending bytes is not a multiple of the record "
                f"stride {self.stride}: the BPF program and its decoder disagree on the size"
            )
        n = min(avail // self.stride, self.max_batch)
        start = cons & self.mask
        region = self._data[start : start + n * self.stride].reshape(n, self.stride)
        # Snapshot the headers first; a record is ours once its BUSY bit is clear. The data
        # is read after the headers (x86 keeps loads in order; arm64 would need a barrier).
        hdr = region[:, :4].copy().view(np.uint32).ravel()
        busy = (hdr & BUSY_BIT) != 0
        if busy.any():
            n = int(busy.argmax())
            if n == 0:
                return None
            hdr = hdr[:n]
            region = region[:n]
        keep = (hdr & DISCARD_BIT) == 0
        lengths = hdr[keep] & ~np.uint32(BUSY_BIT | DISCARD_BIT)
        if lengths.size and (lengths != self.record_size).any():
            bad = int(lengths[lengths != self.record_size][0])
            raise KernelError(
                f"ring {self.name}: record of {bad} bytes, expected {self.record_size}: "
                "the BPF object and its decoder are out of date with each other (rebuild)"
            )
        payload = region[:, HDR_SIZE : HDR_SIZE + self.record_size]
        out = payload[keep] if not keep.all() else payload.copy()
        self._cons[0] = cons + n * self.stride  # release the space to the producer
        return out

    def close(self) -> None:
        # Views into the mappings must go before the mappings can close.
        self._cons = self._prod = self._data = None  # type: ignore[assignment]
        for mm in (self._cons_mm, self._prod_mm):
            try:
                mm.close()
            except BufferError:
                pass  # a caller still holds a view; the mapping goes with the last reference
