"""packets: anomalous packets on the watched interfaces, from a TC (tcx) program on ingress
and egress (bpf/packets.bpf.c). Every packet is counted per interface and direction in the
kernel; only packets with at least one anomaly become rows. Packets are never changed.

Anomaly codes (stable: bit i of `anomaly_mask` is CODES[i]; never renumber, only append):

  bit  code                meaning
   0   IP4_VERSION         ethertype IPv4 but the version field is not 4
   1   IP4_IHL             IPv4 header length (IHL) below 5
   2   IP4_TOTLEN_LONG     IPv4 total length larger than the frame
   3   IP4_TOTLEN_SHORT    IPv4 total length smaller than its header
   4   IP4_CSUM            bad IPv4 header checksum
   5   IP4_RESERVED        IPv4 reserved ("evil") flag set
   6   FRAG_TINY           first fragment too short to hold the transport header
   7   FRAG_OVERLAP        fragment overlapping one seen before (or TCP at offset 8, RFC 1858)
   8   FRAG_OVERSIZE       fragment ending past 65535 bytes (ping of death)
   9   IP_LAND             source address equals destination address
  10   IP_SRC_MCAST        multicast or broadcast source address
  11   IP_LOOPBACK         loopback address (127/8, ::1) on a non-loopback interface
  12   IP6_PLEN            IPv6 payload length inconsistent with the frame
  13   IP6_EXT_BAD         IPv6 extension header truncated, or hop-by-hop not first
  14   IP6_EXT_LOOP        IPv6 extension header repeated, or a chain longer than 8 headers
  15   TCP_DOFF_SHORT      TCP data offset below 5
  16   TCP_DOFF_PAST       TCP data offset past the end of the segment
  17   TCP_SYN_FIN         SYN and FIN
  18   TCP_SYN_RST         SYN and RST
  19   TCP_FIN_NO_ACK      FIN without ACK
  20   TCP_NULL            no TCP flag set
  21   TCP_XMAS            FIN+PSH+URG
  22   TCP_PORT0           TCP source or destination port 0
  23   UDP_LEN             UDP length field differs from the IP payload length
  24   UDP_PORT0           UDP source or destination port 0
  25   ICMP_TRUNC          ICMP / ICMPv6 header truncated (< 8 bytes)
  26   TCP_TRUNC           TCP header truncated (< 20 bytes)
  27   UDP_TRUNC           UDP header truncated (< 8 bytes)
  28   IP4_HDR_TRUNC       frame shorter than the IPv4 header
  29   IP6_VERSION         ethertype IPv6 but the version field is not 6
  30   IP6_TRUNC           frame shorter than the IPv6 header

The TCP flag classes are exclusive, most specific first: NULL, XMAS, SYN_FIN, SYN_RST,
FIN_NO_ACK. A header that is broken stops the parse, so one fault gives one code.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ..kernel import tc
from ..kernel.bpf import possible_cpus
from ..kernel.errors import AttachError
from .base import COMMON_COLUMNS, HEADER_DTYPE, Column, Source, cstrings, header_columns
from .netfmt import PROTO_NAMES, format_addresses

if TYPE_CHECKING:
    from .base import RunningSource

CODES = (
    "IP4_VERSION", "IP4_IHL", "IP4_TOTLEN_LONG", "IP4_TOTLEN_SHORT", "IP4_CSUM", "IP4_RESERVED",
    "FRAG_TINY", "FRAG_OVERLAP", "FRAG_OVERSIZE", "IP_LAND", "IP_SRC_MCAST", "IP_LOOPBACK",
    "IP6_PLEN", "IP6_EXT_BAD", "IP6_EXT_LOOP", "TCP_DOFF_SHORT", "TCP_DOFF_PAST", "TCP_SYN_FIN",
    "TCP_SYN_RST", "TCP_FIN_NO_ACK", "TCP_NULL", "TCP_XMAS", "TCP_PORT0", "UDP_LEN",
    "UDP_PORT0", "ICMP_TRUNC", "TCP_TRUNC", "UDP_TRUNC", "IP4_HDR_TRUNC", "IP6_VERSION",
    "IP6_TRUNC",
)  # fmt: skip
CODE_BIT = {c: i for i, c in enumerate(CODES)}
PROGRAMS = {"ingress": "ks_pkt_ingress", "egress": "ks_pkt_egress"}
HEAD_BYTES = 64
ENV_INTERFACES = "KERNSIGHT_INTERFACES"  # comma-separated, as --interfaces

RECORD = np.dtype(
    HEADER_DTYPE
    + [
        ("anomalies", "<u8"),
        ("netns_cookie", "<u8"),
        ("ifindex", "<u4"),
        ("len", "<u4"),
        ("saddr", "u1", 16),
        ("daddr", "u1", 16),
        ("ip_id", "<u4"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("ethertype", "<u2"),
        ("vlan", "<u2"),
        ("frag_off", "<u2"),
        ("direction", "u1"),
        ("ip_version", "u1"),
        ("l4proto", "u1"),
        ("tcp_flags", "u1"),
        ("frag_more", "u1"),
        ("ttl", "u1"),
        ("addr_family", "u1"),
        ("pad", "u1", 3),
        ("head_len", "<u4"),
        ("reserved", "<u4"),
        ("head", "u1", HEAD_BYTES),
    ]
)
IF_KEY = np.dtype([("netns_cookie", "<u8"), ("ifindex", "<u4"), ("direction", "<u4")])
IF_COUNTS = ("packets", "bytes", "anomalous", "not_ip")
IF_VALUE = np.dtype([(f, "<u8") for f in (*IF_COUNTS, "flags")])  # struct if_counts
IF_NO_L2, IF_LOOPBACK = 1, 2

_HEXCHARS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_FLAGS = np.array(
    ["|".join(n for b, n in enumerate("FIN SYN RST PSH ACK URG ECE CWR".split()) if i >> b & 1)
     for i in range(256)], dtype=object,
)  # fmt: skip
_DIRECTIONS = np.array(["ingress", "egress"], dtype=object)


def decode_mask(mask: np.ndarray) -> pa.Array:
    """Bitmask -> list of code names, without a loop per row."""
    bits = (mask[:, None] >> np.arange(len(CODES), dtype=np.uint64)) & 1 == 1
    names = np.broadcast_to(np.array(CODES, dtype=object), bits.shape)[bits]
    offsets = np.zeros(len(mask) + 1, dtype=np.int32)
    np.cumsum(bits.sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(names, pa.string()))


def hex_bytes(a: np.ndarray, lengths: np.ndarray) -> pa.Array:
    out = np.empty((len(a), a.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = _HEXCHARS[a >> 4]
    out[:, 1::2] = _HEXCHARS[a & 15]
    return cstrings(out, np.minimum(lengths, a.shape[1]) * 2)


def configured_interfaces() -> list[str] | None:
    raw = os.environ.get(ENV_INTERFACES, "")
    specs = [s.strip() for s in raw.split(",") if s.strip()]
    return specs or None


class Packets(Source):
    name = "packets"
    description = (
        "Anomalous packets on the watched interfaces (ingress and egress), checked in the "
        "kernel by a TC program that never changes a packet: malformed Ethernet/VLAN, IPv4, "
        "IPv6 (extension headers), TCP, UDP and ICMP headers, impossible TCP flag "
        "combinations, fragment attacks. One row per anomalous packet with its anomaly codes "
        "(docs/network.md); every packet and byte is counted per interface and direction in "
        "status. Default: every interface that is up, loopback excluded (serve --interfaces)."
    )
    bpf_object = "packets"
    btf_struct = "packet_event"
    example = (
        "SELECT ts, interface, direction, anomalies, saddr, sport, daddr, dport, protocol "
        "FROM packets "
        "ORDER BY ts DESC LIMIT 20"
    )
    record = RECORD
    ring_bytes = 4 << 20
    pushdown = ()
    columns = COMMON_COLUMNS + [
        Column("interface", pa.string(), "interface name (NETNS/NAME when in another netns)"),
        Column("direction", pa.string(), "ingress | egress"),
        Column("anomalies", pa.list_(pa.string()), "anomaly codes (docs/network.md)"),
        Column("anomaly_mask", pa.uint64(), "the same codes as a bitmask (bit i: code i)"),
        Column("ip_version", pa.uint8(), "4, 6, or the bad version field seen"),
        Column("protocol", pa.string(), "transport protocol: tcp, udp, icmp, icmpv6, or number"),
        Column("saddr", pa.string(), "source address"),
        Column("daddr", pa.string(), "destination address"),
        Column("sport", pa.uint16(), "source port (ICMP: type)"),
        Column("dport", pa.uint16(), "destination port (ICMP: code)"),
        Column("tcp_flags", pa.uint8(), "TCP flags byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32)"),
        Column("tcp_flag_names", pa.string(), "TCP flags, e.g. SYN|FIN"),
        Column("length", pa.uint32(), "frame length in bytes (from the L2 header)"),
        Column("ttl", pa.uint8(), "IPv4 TTL / IPv6 hop limit"),
        Column("ip_id", pa.uint32(), "IPv4 id / IPv6 fragment id of a fragment, else 0"),
        Column("frag_offset", pa.uint32(), "fragment offset in bytes"),
        Column("frag_more", pa.bool_(), "more fragments follow"),
        Column("vlan", pa.uint16(), "outermost VLAN id, 0 if untagged"),
        Column("ethertype", pa.uint16(), "ethertype after the VLAN tags"),
        Column("head_hex", pa.string(), f"first {HEAD_BYTES} bytes of the frame, hex"),
    ]

    def __init__(self, interfaces: list[str] | None = None, loopback: bool = False) -> None:
        self.specs = interfaces if interfaces is not None else configured_interfaces()
        self.loopback = loopback
        self.watched: list[tc.Interface] = []
        self.not_watched: dict[str, str] = {}  # default interfaces that refused the program

    # -- kernel side -----------------------------------------------------------------------
    def attach(self, rs: RunningSource) -> None:
        tc.sweep("packets", set(PROGRAMS.values()))  # what a killed run's leaked fds hold
        self.watched = tc.resolve(self.specs, self.loopback)  # none up: an idle source
        stats = rs.obj.map("if_stats")
        ncpu = possible_cpus()
        links = []
        for iface in self.watched:  # the counters' entries, holding the interface's flags
            value = np.zeros(ncpu, IF_VALUE)
            value["flags"] = (0 if iface.has_l2 else IF_NO_L2) | (IF_LOOPBACK * iface.loopback)
            for d in range(len(_DIRECTIONS)):
                key = struct.pack("<QII", iface.netns_cookie, iface.ifindex, d)
                stats.update(key, value.tobytes())
            for direction, prog in PROGRAMS.items():
                try:
                    link = tc.attach_tcx(rs.obj.program_fd(prog), prog, iface, direction)
                except AttachError as e:
                    if self.specs:  # named by the user: say so and stop
                        raise
                    self.not_watched[f"{iface.label} {direction}"] = e.message
                    continue
                rs.obj.own(link)
                links.append(link)
        rs.state["note"] = tc.record_links("packets", links)

    def detach(self, rs: RunningSource) -> None:
        note = rs.state.pop("note", None)
        if note is not None:
            note.unlink(missing_ok=True)

    def status(self, rs: RunningSource) -> dict:
        """Packets, bytes and anomalous packets per interface and direction, from the
        kernel's per-CPU counters."""
        stats = rs.obj.map("if_stats")
        out: dict[str, dict] = {}
        for iface in self.watched:
            per: dict[str, dict] = {}
            for d, direction in enumerate(_DIRECTIONS):
                raw = stats.lookup(struct.pack("<QII", iface.netns_cookie, iface.ifindex, d))
                v = np.frombuffer(raw, IF_VALUE) if raw else np.zeros(1, IF_VALUE)
                per[direction] = {f: int(v[f].sum()) for f in IF_COUNTS}
            out[iface.label] = per
        ps = rs.obj.map("parser_stats").percpu_sum_u64(struct.pack("<I", 0))
        return {"interfaces": out, "fragment_ranges_full": ps} | (
            {"not_watched": dict(self.not_watched)} if self.not_watched else {}
        )

    # -- decoding --------------------------------------------------------------------------
    def _interface_names(self, cookie: np.ndarray, ifindex: np.ndarray) -> pa.Array:
        names = np.full(len(cookie), "", dtype=object)
        unknown = np.ones(len(cookie), dtype=bool)
        for iface in self.watched:  # a loop over interfaces, not rows
            hit = (cookie == iface.netns_cookie) & (ifindex == iface.ifindex)
            names[hit] = iface.label
            unknown &= ~hit
        if unknown.any():
            names[unknown] = np.char.add("ifindex ", ifindex[unknown].astype(str)).astype(object)
        return pa.array(names, pa.string())

    def decode(self, rec: np.ndarray, boot_offset_ns: int) -> pa.RecordBatch:
        mask = rec["anomalies"]
        version = rec["ip_version"]
        family = rec["addr_family"]
        cols = header_columns(rec, boot_offset_ns) | {
            "interface": self._interface_names(rec["netns_cookie"], rec["ifindex"]),
            "direction": pa.array(_DIRECTIONS[np.minimum(rec["direction"], 1)], pa.string()),
            "anomalies": decode_mask(mask),
            "anomaly_mask": pa.array(mask),
            "ip_version": pa.array(version),
            "protocol": pa.array(
                np.where(family != 0, PROTO_NAMES[rec["l4proto"]], ""), pa.string()
            ),
            "saddr": format_addresses(rec["saddr"], family),
            "daddr": format_addresses(rec["daddr"], family),
            "sport": pa.array(rec["sport"]),
            "dport": pa.array(rec["dport"]),
            "tcp_flags": pa.array(rec["tcp_flags"]),
            "tcp_flag_names": pa.array(
                np.where(rec["l4proto"] == 6, _FLAGS[rec["tcp_flags"]], ""), pa.string()
            ),  # fmt: skip
            "length": pa.array(rec["len"]),
            "ttl": pa.array(rec["ttl"]),
            "ip_id": pa.array(rec["ip_id"]),
            "frag_offset": pa.array(rec["frag_off"].astype(np.uint32)),
            "frag_more": pa.array(rec["frag_more"] != 0),
            "vlan": pa.array(rec["vlan"]),
            "ethertype": pa.array(rec["ethertype"]),
            "head_hex": hex_bytes(rec["head"], rec["head_len"]),
        }
        return pa.RecordBatch.from_pydict(cols, schema=self.schema())
