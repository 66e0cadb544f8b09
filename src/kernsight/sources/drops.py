"""drops: packets the kernel dropped, with the drop reason by name (bpf/drops.bpf.c).

skb:kfree_skb carries a number of the running kernel's `enum skb_drop_reason`; the numbers
differ between kernels, so the names come from this kernel's BTF. Frees that are not drops
(SKB_CONSUMED) are skipped in the kernel. tcp:tcp_bad_csum adds a row per TCP segment with a
bad checksum, where the kernel has that tracepoint.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..kernel import btf
from .base import COMMON_COLUMNS, HEADER_DTYPE, Column, Source, cstrings, header_columns
from .netfmt import PROTO_NAMES, format_addresses

RECORD = np.dtype(
    HEADER_DTYPE
    + [
        ("location", "<u8"),
        ("reason", "<u4"),
        ("ifindex", "<u4"),
        ("len", "<u4"),
        ("netns_ino", "<u4"),
        ("saddr", "u1", 16),
        ("daddr", "u1", 16),
        ("ethertype", "<u2"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("event", "u1"),
        ("ip_version", "u1"),
        ("l4proto", "u1"),
        ("pad", "u1", 7),
        ("ifname", "u1", 16),
    ]
)
EVENTS = np.array(["", "kfree_skb", "tcp_bad_csum"], dtype=object)
REASON_PREFIX = "SKB_DROP_REASON_"
SUBSYS_SHIFT = 16  # reasons above 0xffff belong to a subsystem (enum skb_drop_reason_subsys)
_ETHERTYPES = {0x0800: "ipv4", 0x86DD: "ipv6", 0x0806: "arp", 0x8100: "vlan", 0x88A8: "qinq"}


def reason_names(codes: np.ndarray) -> np.ndarray:
    """Reason numbers -> names from this kernel's BTF ("TCP_CSUM"), per distinct number."""
    names = btf.enum_values("skb_drop_reason")
    uniq, inverse = np.unique(codes, return_inverse=True)
    out = np.empty(len(uniq), dtype=object)
    for i, code in enumerate(uniq.tolist()):
        name = names.get(code)
        if name is None and code >> SUBSYS_SHIFT:
            name = f"SUBSYS_{code >> SUBSYS_SHIFT}:{code & 0xFFFF}"
        out[i] = (name or f"UNKNOWN_{code}").removeprefix(REASON_PREFIX)
    return out[inverse]


class Drops(Source):
    name = "drops"
    description = (
        "Packets the kernel dropped (skb:kfree_skb), with the drop reason named from the "
        "running kernel's BTF (enum skb_drop_reason), the kernel function that dropped it, "
        "the device, and addresses and ports when the packet has an IP header; plus one row "
        "per TCP segment with a bad checksum (tcp:tcp_bad_csum). Frees that are not drops are "
        "left out in the kernel. The task columns are whoever ran when the packet was dropped "
        "(often unrelated, in softirq)."
    )
    bpf_object = "drops"
    btf_struct = "drop_event"
    example = (
        "SELECT reason, location, interface, count(*) AS n "
        "FROM drops "
        "GROUP BY ALL ORDER BY n DESC LIMIT 20"
    )
    record = RECORD
    ring_bytes = 4 << 20
    columns = COMMON_COLUMNS + [
        Column("event", pa.string(), "kfree_skb | tcp_bad_csum"),
        Column("reason", pa.string(), "drop reason, e.g. TCP_CSUM, NO_SOCKET (kfree_skb)"),
        Column("reason_code", pa.uint32(), "the reason's number in this kernel"),
        Column("location", pa.string(), "kernel function that dropped it (symbol+offset)"),
        Column("interface", pa.string(), "device name (at the time of the drop)"),
        Column("ifindex", pa.uint32(), "device index"),
        Column("netns_ino", pa.uint32(), "inode of the device's network namespace"),
        Column("protocol", pa.string(), "ipv4, ipv6, arp... (skb->protocol)"),
        Column("l4proto", pa.string(), "transport protocol when IP: tcp, udp, icmp..."),
        Column("saddr", pa.string(), "source address (IP packets)"),
        Column("daddr", pa.string(), "destination address"),
        Column("sport", pa.uint16(), "source port (TCP/UDP)"),
        Column("dport", pa.uint16(), "destination port"),
        Column(
            "length", pa.uint32(), "bytes from the header being processed at the drop (skb->len)"
        ),
    ]

    def programs(self) -> set[str] | None:
        progs = {"kfree_skb"}
        if btf.has_type("btf_trace_tcp_bad_csum"):
            progs.add("tcp_bad_csum")
        return progs

    def decode(self, rec: np.ndarray, boot_offset_ns: int) -> pa.RecordBatch:
        ev = np.minimum(rec["event"], 2)
        family = rec["ip_version"]
        et = rec["ethertype"]
        uniq, inv = np.unique(et, return_inverse=True)
        proto = np.array([_ETHERTYPES.get(e, f"{e:#06x}") for e in uniq.tolist()], object)[inv]
        reason = np.where(ev == 1, reason_names(rec["reason"]), "")
        cols = header_columns(rec, boot_offset_ns) | {
            "event": pa.array(EVENTS[ev], pa.string()),
            "reason": pa.array(reason, pa.string()),
            "reason_code": pa.array(rec["reason"]),
            "location": pa.array(btf.kernel_symbols().name(rec["location"]), pa.string()),
            "interface": cstrings(rec["ifname"]),
            "ifindex": pa.array(rec["ifindex"]),
            "netns_ino": pa.array(rec["netns_ino"]),
            "protocol": pa.array(proto, pa.string()),
            "l4proto": pa.array(
                np.where(family != 0, PROTO_NAMES[rec["l4proto"]], ""), pa.string()
            ),
            "saddr": format_addresses(rec["saddr"], family),
            "daddr": format_addresses(rec["daddr"], family),
            "sport": pa.array(rec["sport"]),
            "dport": pa.array(rec["dport"]),
            "length": pa.array(rec["len"]),
        }
        return pa.RecordBatch.from_pydict(cols, schema=self.schema())
