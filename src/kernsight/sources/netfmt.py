"""Network values as text for the network tables, vectorized (no loop per row)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_DEC = np.array([str(i) for i in range(256)], dtype=object)
_HEX16 = np.array([format(i, "x") for i in range(1 << 16)], dtype=object)
PROTO_NAMES = np.array([str(i) for i in range(256)], dtype=object)  # IP protocol numbers
PROTO_NAMES[[1, 6, 17, 58, 0, 43, 44, 50, 51, 59, 60]] = [
    "icmp", "tcp", "udp", "icmpv6", "hopopts", "routing", "fragment", "esp", "ah", "none",
    "dstopts",
]  # fmt: skip


def _strings(parts: list[np.ndarray], sep: str) -> pa.Array:
    return pc.binary_join_element_wise(*[pa.array(p, pa.string()) for p in parts], sep)


def format_addresses(raw: np.ndarray, family: np.ndarray) -> pa.Array:
    """(n, 16) address bytes -> text (IPv4 dotted, IPv6 RFC 5952), "" when not IP; vectorized."""
    n = len(raw)
    v4 = _strings([_DEC[raw[:, i]] for i in range(4)], ".")
    groups = raw.reshape(n, 8, 2).astype(np.uint32)
    groups = (groups[:, :, 0] << 8) | groups[:, :, 1]
    v6 = _strings([_HEX16[groups[:, i]] for i in range(8)], ":")
    # RFC 5952: the longest run of two or more zero groups (the first, on a tie) becomes "::"
    done = np.zeros(n, dtype=bool)
    for k in range(8, 1, -1):
        pattern = "(^|:)" + ":".join(["0"] * k) + "(:|$)"
        hit = pc.match_substring_regex(v6, pattern).to_numpy(zero_copy_only=False) & ~done
        if hit.any():
            v6 = pc.if_else(pa.array(hit), pc.replace_substring_regex(
                v6, pattern, "::", max_replacements=1), v6)  # fmt: skip
            done |= hit
    empty = pa.array(np.full(n, "", dtype=object), pa.string())
    return pc.if_else(pa.array(family == 4), v4, pc.if_else(pa.array(family == 6), v6, empty))
