"""The network sources against real packets: two network namespaces joined by a veth pair
(test-only addresses, all traffic stays inside them); kernsight watches the end in namespace
B, the test sends from namespace A with scapy-built frames on a raw socket."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from kernsight.kernel import tc
from kernsight.sources.packets import CODE_BIT, CODES

pytestmark = pytest.mark.bpf

scapy_all = pytest.importorskip("scapy.all")
Ether, Dot1Q, Dot1AD, Raw = scapy_all.Ether, scapy_all.Dot1Q, scapy_all.Dot1AD, scapy_all.Raw
IP, IPv6, TCP, UDP, ICMP = (scapy_all.IP, scapy_all.IPv6, scapy_all.TCP, scapy_all.UDP,
                            scapy_all.ICMP)  # fmt: skip
HBH, DestOpt, Routing = (scapy_all.IPv6ExtHdrHopByHop, scapy_all.IPv6ExtHdrDestOpt,
                         scapy_all.IPv6ExtHdrRouting)  # fmt: skip
Frag6 = scapy_all.IPv6ExtHdrFragment


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@dataclass
class Pair:
    a: str  # namespace names
    b: str
    if_a: str
    if_b: str
    mac_a: str
    mac_b: str
    net: int  # 10.199.<net>.1 in A, .2 in B; fd99:199:<net>::1 / ::2

    @property
    def ip_a(self) -> str:
        return f"10.199.{self.net}.1"

    @property
    def ip_b(self) -> str:
        return f"10.199.{self.net}.2"

    @property
    def ip6_a(self) -> str:
        return f"fd99:199:{self.net}::1"

    @property
    def ip6_b(self) -> str:
        return f"fd99:199:{self.net}::2"

    @property
    def watched(self) -> str:
        return f"{self.b}/{self.if_b}"

    def in_a(self, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.a, *cmd], **kw)

    def run_a(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.a, *cmd], check=True,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def in_b(self, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.b, *cmd], **kw)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    p = Pair(f"ks{tag}a", f"ks{tag}b", f"ks{tag}va", f"ks{tag}vb", "", "",
             int(tag[:2], 16))  # fmt: skip
    try:
        sh("ip", "netns", "add", p.a)
        sh("ip", "netns", "add", p.b)
        sh("ip", "link", "add", p.if_a, "netns", p.a, "type", "veth", "peer", "name", p.if_b,
           "netns", p.b)  # fmt: skip
        for ns, dev, v4, v6 in ((p.a, p.if_a, p.ip_a, p.ip6_a), (p.b, p.if_b, p.ip_b, p.ip6_b)):
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        p.mac_a = sh("ip", "-n", p.a, "-br", "link", "show", p.if_a).stdout.split()[2]
        p.mac_b = sh("ip", "-n", p.b, "-br", "link", "show", p.if_b).stdout.split()[2]
        yield p
    finally:
        sh("ip", "netns", "del", p.a, check=False)  # takes the veth pair with it
        sh("ip", "netns", "del", p.b, check=False)


class Sender:
    """A raw socket on A's end of the pair: frames go out exactly as built."""

    def __init__(self, pair: Pair) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind((pair.if_a, 0))
            return s

        self.sock = tc.in_netns(pair.a, make)
        self.pair = pair

    def frame(self, l3, vlan: bool = False):  # noqa: ANN001, ANN201
        return Ether(src=self.pair.mac_a, dst=self.pair.mac_b) / l3

    def send(self, pkt) -> bytes:  # noqa: ANN001
        raw = bytes(pkt)
        self.sock.send(raw)
        return raw


@pytest.fixture(scope="module")
def watch(pair: Pair) -> Iterator[tuple]:
    """A capture engine running packets (and drops) on B's end, with a collector."""
    from conftest import Collector

    from kernsight.capture import Capture

    col = Collector()
    cap = Capture(options={"packets": {"interfaces": [pair.watched]}})
    cap.subscribe(col)
    cap.start("packets")
    cap.run_in_thread()
    try:
        yield cap, col, Sender(pair)
    finally:
        cap.close()


def rows_for(col, raw: bytes, timeout: float = 5.0) -> list[dict]:  # noqa: ANN001
    """The packets rows whose captured head is this frame's (waits for the first, then a
    little longer so that a duplicate would show)."""
    head = raw[:64].hex()
    col.wait_rows("packets", lambda r: r["head_hex"] == head, timeout=timeout)
    time.sleep(0.05)
    return col.rows("packets", lambda r: r["head_hex"] == head)


# -- benign traffic: nothing to report ------------------------------------------------------


def _wait_listen(pair: Pair, port: int, udp: bool = False) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = sh("ip", "netns", "exec", pair.b, "ss", "-Hln" + ("u" if udp else "t")).stdout
        if f":{port} " in out:
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} in {pair.b}")


def _iface_counts(cap, pair: Pair) -> dict:  # noqa: ANN001
    return cap.stats()["packets"].extra["interfaces"][pair.watched]


HTTP_CLIENT = """
import sys, urllib.request
body = urllib.request.urlopen(sys.argv[1], timeout=10).read()
assert len(body) > 0
"""


def test_benign_traffic_gives_no_anomaly(pair: Pair, watch) -> None:
    """Runs first (file order): a 100 MB TCP transfer, IPv6 TCP, HTTP, UDP, fragmented UDP
    datagrams, ICMP and ICMPv6 echo (fragmented too) make no row, and are all counted."""
    cap, col, tx = watch
    before = _iface_counts(cap, pair)
    servers = []
    try:
        servers.append(pair.in_b("iperf3", "-s", "-p", "5201", stdout=subprocess.DEVNULL))
        servers.append(
            pair.in_b(
                sys.executable,
                "-m",
                "http.server",
                "-b",
                pair.ip_b,
                "8080",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_listen(pair, 5201)
        _wait_listen(pair, 8080)
        pair.run_a("iperf3", "-c", pair.ip_b, "-n", "100M")
        pair.run_a("iperf3", "-6", "-c", pair.ip6_b, "-n", "20M")
        pair.run_a("iperf3", "-u", "-c", pair.ip_b, "-b", "50M", "-l", "1200", "-n", "2M")
        pair.run_a("iperf3", "-u", "-c", pair.ip_b, "-b", "50M", "-l", "30000", "-n", "3M")
        pair.run_a("iperf3", "-6", "-u", "-c", pair.ip6_b, "-b", "50M", "-l", "20000", "-n", "2M")
        pair.run_a(sys.executable, "-c", HTTP_CLIENT, f"http://{pair.ip_b}:8080/")
        pair.run_a("ping", "-c", "3", "-i", "0.05", pair.ip_b)
        pair.run_a("ping", "-c", "2", "-i", "0.05", "-s", "4000", pair.ip_b)
        pair.run_a("ping", "-6", "-c", "3", "-i", "0.05", pair.ip6_b)
        pair.run_a("ping", "-6", "-c", "2", "-i", "0.05", "-s", "4000", pair.ip6_b)
    finally:
        for s in servers:
            s.terminate()
            s.wait(timeout=10)
    time.sleep(0.2)
    cap.flush()
    rows = col.rows("packets", lambda r: True)
    assert rows == [], f"{len(rows)} anomaly rows from benign traffic: {rows[:5]}"
    after = _iface_counts(cap, pair)
    got = after["ingress"]["bytes"] - before["ingress"]["bytes"]
    assert got >= 100 * 2**20, f"only {got} bytes counted on ingress"
    assert after["egress"]["packets"] > before["egress"]["packets"]
    assert after["ingress"]["anomalous"] == before["ingress"]["anomalous"]


# -- anomaly classes -------------------------------------------------------------------------


def _v4(p: Pair, **kw):  # noqa: ANN202
    return IP(src=kw.pop("src", p.ip_a), dst=kw.pop("dst", p.ip_b), **kw)


def _v6(p: Pair, **kw):  # noqa: ANN202
    return IPv6(src=p.ip6_a, dst=p.ip6_b, **kw)


# code -> builder of the L3 packet (Ether is added by the sender). Ports are unique per case.
CASES: dict[str, Callable[[Pair], object]] = {
    "IP4_VERSION": lambda p: _v4(p, version=5) / UDP(sport=40001, dport=9),
    "IP4_IHL": lambda p: _v4(p, ihl=4) / UDP(sport=40002, dport=9),
    "IP4_TOTLEN_LONG": lambda p: _v4(p, len=1000) / UDP(sport=40003, dport=9) / Raw(b"x" * 8),
    "IP4_TOTLEN_SHORT": lambda p: _v4(p, len=10) / UDP(sport=40004, dport=9),
    "IP4_CSUM": lambda p: _v4(p, chksum=0x1234) / UDP(sport=40005, dport=9),
    "IP4_RESERVED": lambda p: _v4(p, flags="evil") / UDP(sport=40006, dport=9),
    "FRAG_TINY": lambda p: _v4(p, id=4007, flags="MF", frag=0, proto=6) / Raw(b"\x9c\x47" * 4),
    "FRAG_OVERSIZE": lambda p: _v4(p, id=4008, frag=8189, proto=17) / Raw(b"z" * 100),
    "IP_LAND": lambda p: _v4(p, src=p.ip_b) / TCP(sport=40009, dport=80, flags="S"),
    "IP_SRC_MCAST": lambda p: _v4(p, src="224.0.0.9") / UDP(sport=40010, dport=9),
    "IP_LOOPBACK": lambda p: _v4(p, src="127.0.0.1") / UDP(sport=40011, dport=9),
    "IP6_PLEN": lambda p: _v6(p, plen=500) / UDP(sport=40012, dport=9),
    "IP6_EXT_BAD": lambda p: _v6(p) / DestOpt(len=10) / UDP(sport=40013, dport=9),
    "IP6_EXT_LOOP": lambda p: _v6(p) / Routing() / Routing() / UDP(sport=40014, dport=9),
    "TCP_DOFF_SHORT": lambda p: _v4(p) / TCP(sport=40015, dport=80, dataofs=3, flags="S"),
    "TCP_DOFF_PAST": lambda p: _v4(p) / TCP(sport=40016, dport=80, dataofs=15, flags="S"),
    "TCP_SYN_FIN": lambda p: _v4(p) / TCP(sport=40017, dport=80, flags="SF"),
    "TCP_SYN_RST": lambda p: _v4(p) / TCP(sport=40018, dport=80, flags="SR"),
    "TCP_FIN_NO_ACK": lambda p: _v4(p) / TCP(sport=40019, dport=80, flags="F"),
    "TCP_NULL": lambda p: _v4(p) / TCP(sport=40020, dport=80, flags=""),
    "TCP_XMAS": lambda p: _v4(p) / TCP(sport=40021, dport=80, flags="FPU"),
    "TCP_PORT0": lambda p: _v4(p) / TCP(sport=40022, dport=0, flags="S"),
    "UDP_LEN": lambda p: _v4(p) / UDP(sport=40023, dport=9, len=100) / Raw(b"u" * 8),
    "UDP_PORT0": lambda p: _v4(p) / UDP(sport=40024, dport=0),
    "ICMP_TRUNC": lambda p: _v4(p, proto=1) / Raw(b"\x08\x00\xf7\xff"),
    "TCP_TRUNC": lambda p: _v4(p, proto=6) / Raw(b"\x9c\x59\x00\x50" * 2),
    "UDP_TRUNC": lambda p: _v4(p, proto=17) / Raw(b"\x9c\x5a"),
    "IP4_HDR_TRUNC": lambda p: _v4(p, ihl=15) / Raw(b"t" * 8),
    # these two are sent with ethertype IPv6
    "IP6_VERSION": lambda p: _v4(p) / UDP(sport=40030, dport=9) / Raw(b"v" * 20),
    "IP6_TRUNC": lambda p: Raw(bytes(_v6(p))[:30]),
}
# Variants of a class: a second way to produce the same code.
VARIANTS: dict[str, tuple[str, Callable[[Pair], object]]] = {
    "ip6-hbh-not-first": (
        "IP6_EXT_BAD",
        lambda p: _v6(p) / DestOpt() / HBH() / UDP(sport=40101, dport=9),
    ),
    "ip6-long-chain": (
        "IP6_EXT_LOOP",
        lambda p: _v6(p) / DestOpt() / DestOpt() / DestOpt() / UDP(sport=40102),
    ),
    "icmpv6-trunc": ("ICMP_TRUNC", lambda p: _v6(p, nh=58) / Raw(b"\x80\x00\x00\x00")),
    "ip6-frag-oversize": (
        "FRAG_OVERSIZE",
        lambda p: _v6(p) / Frag6(offset=8189, m=0, id=7001, nh=17) / Raw(b"q" * 100),
    ),
    "ip6-frag-tiny": (
        "FRAG_TINY",
        lambda p: _v6(p) / Frag6(offset=0, m=1, id=7002, nh=6) / Raw(b"\x9c\x47" * 4),
    ),
    "ip4-ihl15-short": ("IP4_HDR_TRUNC", lambda p: Raw(bytes(_v4(p))[:12])),
}
ETHERTYPE_V6 = {"IP6_VERSION", "IP6_TRUNC"}
WITHOUT_ADDRESSES = {"IP6_TRUNC", "IP6_VERSION"}
WITHOUT_ADDRESSES_VARIANTS = {"ip4-ihl15-short"}


def _expect_row(col, raw: bytes, code: str, pair: Pair, l3, addressed: bool) -> None:  # noqa: ANN001
    rows = rows_for(col, raw)
    assert len(rows) == 1, f"{code}: {len(rows)} rows for the frame sent: {rows}"
    r = rows[0]
    assert r["anomalies"] == [code], r
    assert r["anomaly_mask"] == 1 << CODE_BIT[code]
    assert r["interface"] == pair.watched and r["direction"] == "ingress"
    assert r["length"] == len(raw)
    if addressed:
        assert (r["saddr"], r["daddr"]) == (l3.src, l3.dst), r
    else:
        assert (r["saddr"], r["daddr"]) == ("", ""), r


def test_every_anomaly_class_gives_exactly_its_code(pair: Pair, watch) -> None:
    cap, col, tx = watch
    missing = set(CODES) - set(CASES) - {"FRAG_OVERLAP"}
    assert not missing, f"anomaly codes without a test case: {missing}"
    for code, build in CASES.items():
        l3 = build(pair)
        frame = tx.frame(l3)
        if code in ETHERTYPE_V6:
            frame.type = 0x86DD
        raw = tx.send(frame)
        _expect_row(col, raw, code, pair, l3, code not in WITHOUT_ADDRESSES)


def test_anomaly_variants(pair: Pair, watch) -> None:
    cap, col, tx = watch
    for name, (code, build) in VARIANTS.items():
        l3 = build(pair)
        frame = tx.frame(l3)
        if name == "ip4-ihl15-short":
            frame.type = 0x0800
        raw = tx.send(frame)
        _expect_row(col, raw, code, pair, l3, name not in WITHOUT_ADDRESSES_VARIANTS)


def test_overlapping_fragments(pair: Pair, watch) -> None:
    """Per-datagram state in the kernel: the first fragment is fine, the one that overlaps it
    is flagged; IPv4 and IPv6."""
    cap, col, tx = watch
    first = _v4(pair, id=4242, flags="MF", frag=0, proto=17) / Raw(b"\x9c\x99\x00\x09" + b"a" * 36)
    second = _v4(pair, id=4242, flags="MF", frag=3, proto=17) / Raw(b"b" * 24)  # [24, 48)
    raw1 = tx.send(tx.frame(first))
    raw2 = tx.send(tx.frame(second))
    _expect_row(col, raw2, "FRAG_OVERLAP", pair, second, True)
    assert rows_for(col, raw1, timeout=0.2) == []
    first6 = _v6(pair) / Frag6(offset=0, m=1, id=9191, nh=17) / Raw(b"\x9c\x98\x00\x09" + b"c" * 36)
    second6 = _v6(pair) / Frag6(offset=2, m=1, id=9191, nh=17) / Raw(b"d" * 32)  # [16, 48)
    raw1 = tx.send(tx.frame(first6))
    raw2 = tx.send(tx.frame(second6))
    _expect_row(col, raw2, "FRAG_OVERLAP", pair, second6, True)
    assert rows_for(col, raw1, timeout=0.2) == []


def test_vlan_tags_are_parsed(pair: Pair, watch) -> None:
    """802.1Q and QinQ: the anomaly behind the tags is found, the VLAN id reported."""
    cap, col, tx = watch
    for sport, tags in ((40201, Dot1Q(vlan=42)), (40202, Dot1AD(vlan=7) / Dot1Q(vlan=43))):
        l3 = _v4(pair) / TCP(sport=sport, dport=80, flags="SF")
        tx.send(Ether(src=pair.mac_a, dst=pair.mac_b) / tags / l3)
        rows = col.wait_rows("packets", lambda r, s=sport: r["sport"] == s)
        assert len(rows) == 1 and rows[0]["anomalies"] == ["TCP_SYN_FIN"], rows
        assert rows[0]["vlan"] in (42, 7) and rows[0]["saddr"] == pair.ip_a
