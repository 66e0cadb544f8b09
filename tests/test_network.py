"""The network sources against real packets: two network namespaces joined by a veth pair
(test-only addresses, all traffic stays inside them); kernsight watches the end in namespace
B, the test sends from namespace A with scapy-built frames on a raw socket."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from kernsight.detect.engine import Detector
from kernsight.detect.rules import DEFAULT_DIR, load_rules
from kernsight.detect.vector import compile_predicate
from kernsight.kernel import tc
from kernsight.sources import SOURCES
from kernsight.sources.packets import CODE_BIT, CODES

TABLES = {n: src.schema() for n, src in SOURCES.items()}

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


@contextlib.contextmanager
def make_pair() -> Iterator[Pair]:
    """Two fresh namespaces (unique ks... names) and a veth pair; deleted on the way out."""
    tag = uuid.uuid4().hex[:6]
    p = Pair(f"ks{tag}a", f"ks{tag}b", f"ks{tag}va", f"ks{tag}vb", "", "", int(tag[:2], 16))
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


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    """The pair the module-wide capture watches."""
    with make_pair() as p:
        yield p


@pytest.fixture
def own_pair() -> Iterator[Pair]:
    """A pair nothing else watches (attach/detach tests)."""
    with make_pair() as p:
        yield p


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
    """A capture engine running packets on B's end and drops, with a collector and the
    default rule pack evaluating every batch live."""
    from conftest import Collector

    from kernsight.capture import Capture

    col = Collector()
    cap = Capture(options={"packets": {"interfaces": [pair.watched]}})
    det = Detector(load_rules(TABLES, []), TABLES, rate_limit_s=60.0)
    cap.subscribe(col)
    cap.subscribe(det.on_batch)
    cap.start("packets")
    cap.start("drops")
    cap.run_in_thread()
    try:
        yield cap, col, Sender(pair), det
    finally:
        cap.close()
        det.close()


def net_alerts(det) -> list[dict]:  # noqa: ANN001
    """The network pack's alerts so far (every batch evaluated first)."""
    det.flush()
    page = det.read(None, limit=5000)
    return [a for a in page.rows if a["rule_id"].startswith("net-")]


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
    cap, col, tx, det = watch
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
    alerts = net_alerts(det)
    assert alerts == [], f"network alerts from benign traffic: {alerts[:5]}"
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
    cap, col, tx, det = watch
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
    cap, col, tx, det = watch
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
    cap, col, tx, det = watch
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
    cap, col, tx, det = watch
    for sport, tags in ((40201, Dot1Q(vlan=42)), (40202, Dot1AD(vlan=7) / Dot1Q(vlan=43))):
        l3 = _v4(pair) / TCP(sport=sport, dport=80, flags="SF")
        tx.send(Ether(src=pair.mac_a, dst=pair.mac_b) / tags / l3)
        rows = col.wait_rows("packets", lambda r, s=sport: r["sport"] == s)
        assert len(rows) == 1 and rows[0]["anomalies"] == ["TCP_SYN_FIN"], rows
        assert rows[0]["vlan"] in (42, 7) and rows[0]["saddr"] == pair.ip_a


# -- rules on the packets the kernel reported ------------------------------------------------


def test_each_malformed_class_raises_its_rule(pair: Pair, watch) -> None:
    """Every packets row rule of the pack fires on the classes sent (live, on the kernel's
    rows), and every anomaly code is covered by one."""
    cap, col, tx, det = watch
    for code, build in CASES.items():
        frame = tx.frame(build(pair))
        if code in ETHERTYPE_V6:
            frame.type = 0x86DD
        tx.send(frame)
    time.sleep(0.3)
    cap.flush()
    rules = {r.id: r for r in load_rules(TABLES, []) if r.source == "packets" and not r.window}
    # the pack tests bits of anomaly_mask; the comment above each condition names them
    pack = (DEFAULT_DIR / "network.yaml").read_text()
    named = re.findall(r"# ([A-Z0-9_ |]+)\n\s+condition: \"\(anomaly_mask & (\d+)\) <> 0\"", pack)
    assert len(named) == len(rules) + 1  # + the windowed stealth-scan rule
    for names, mask in named:
        assert int(mask) == sum(1 << CODE_BIT[c] for c in names.split(" | ")), names
    assert {c for names, _ in named for c in names.split(" | ")} == set(CODES)
    rows = col.table("packets")
    for rule in rules.values():  # the Arrow kernels agree with DuckDB on the kernel's rows
        fn = compile_predicate(rule.predicate, TABLES["packets"])
        assert fn is not None, rule.id
        want = duckdb.sql(f"SELECT {rule.predicate} AS m FROM rows").to_arrow_table()["m"]
        assert fn(rows.combine_chunks().to_batches()[0]).to_pylist() == want.to_pylist()
    alerts = net_alerts(det)
    assert set(rules) <= {a["rule_id"] for a in alerts}, sorted(
        set(rules) - {a["rule_id"] for a in alerts}
    )
    synfin = [a for a in alerts if a["rule_id"] == "net-tcp-impossible-flags"]
    assert f"{pair.ip_a}:40017 -> {pair.ip_b}:80" in synfin[0]["output"]


def _rule_alerts(det, rule: str, needle: str, timeout: float = 5.0) -> list[dict]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        found = [a for a in net_alerts(det) if a["rule_id"] == rule and needle in a["output"]]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_scans_raise_the_windowed_rules(pair: Pair, watch) -> None:
    """FIN probes to many ports (stealth scan), SYNs to many closed ports (dropped by the
    kernel with NO_SOCKET: a port scan)."""
    cap, col, tx, det = watch
    for port in range(2000, 2012):
        tx.send(tx.frame(_v4(pair) / TCP(sport=41000, dport=port, flags="F")))
    for port in range(3000, 3025):
        tx.send(tx.frame(_v4(pair) / TCP(sport=41001, dport=port, flags="S")))
    stealth = _rule_alerts(det, "net-tcp-stealth-scan", pair.ip_a)
    assert stealth and "to 1" in stealth[0]["output"], stealth  # >= 10 ports
    scan = _rule_alerts(det, "net-port-scan", pair.ip_a)
    assert scan, net_alerts(det)
    key = scan[0]["key"]
    assert (json.loads(key) if isinstance(key, str) else key)["group"] == {"saddr": pair.ip_a}


def test_kernel_drops_bad_checksums_with_reason_names(pair: Pair, watch) -> None:
    """Packets the kernel drops for bad checksums, named from this kernel's BTF; a burst of
    them raises the drops rule."""
    from kernsight.kernel import btf

    cap, col, tx, det = watch
    tx.send(tx.frame(_v4(pair) / TCP(sport=42001, dport=5001, flags="S", chksum=0x1111)))
    tx.send(tx.frame(_v4(pair) / UDP(sport=42002, dport=5002, chksum=0x1111) / Raw(b"x" * 8)))
    tx.send(tx.frame(_v4(pair, chksum=0x1111) / UDP(sport=42003, dport=5003) / Raw(b"y" * 8)))
    expect = {42001: "TCP_CSUM", 42002: "UDP_CSUM", 42003: "IP_CSUM"}
    for sport, reason in expect.items():
        rows = col.wait_rows(
            "drops", lambda r, s=sport: r["sport"] == s and r["saddr"] == pair.ip_a
        )
        kfree = [r for r in rows if r["event"] == "kfree_skb"]
        assert len(kfree) == 1, rows
        r = kfree[0]
        assert r["reason"] == reason and r["interface"] == pair.if_b, r
        assert (r["daddr"], r["protocol"]) == (pair.ip_b, "ipv4")
        assert r["location"], r  # symbolized where /proc/kallsyms is readable
    if btf.has_type("btf_trace_tcp_bad_csum"):
        bad = col.wait_rows("drops", lambda r: r["event"] == "tcp_bad_csum" and r["sport"] == 42001)
        assert len(bad) == 1 and bad[0]["dport"] == 5001
    for i in range(12):
        tx.send(tx.frame(_v4(pair) / UDP(sport=42100 + i, dport=5100, chksum=0x2222) / Raw(b"z")))
    burst = _rule_alerts(det, "net-drops-checksum-burst", pair.if_b)
    assert burst, net_alerts(det)


# -- nothing of ours stays attached ----------------------------------------------------------

KERNSIGHT = str(Path(sys.executable).parent / "kernsight")


def _ours(iface: tc.Interface) -> dict[str, list[str]]:
    return {d: [n for n in names if n.startswith("ks_pkt")]
            for d, names in tc.attached(iface).items()}  # fmt: skip


ATTACHED = {"ingress": ["ks_pkt_ingress"], "egress": ["ks_pkt_egress"]}
DETACHED: dict[str, list[str]] = {"ingress": [], "egress": []}


def _wait_ours(iface: tc.Interface, want: dict, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _ours(iface) != want:
        assert time.monotonic() < deadline, f"{_ours(iface)} != {want}"
        time.sleep(0.1)


def _tc_filters(pair: Pair) -> str:
    out = ""
    for hook in ("ingress", "egress"):
        r = sh("ip", "netns", "exec", pair.b, "tc", "filter", "show", "dev", pair.if_b, hook,
               check=False)  # fmt: skip
        out += r.stdout
    return out


def _serve(pair: Pair, state: Path) -> subprocess.Popen:
    env = {**os.environ, "KERNSIGHT_STATE_DIR": str(state)}
    return subprocess.Popen([KERNSIGHT, "serve", "--interfaces", pair.watched],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)  # fmt: skip


def test_server_exit_and_kill_leave_nothing_attached(own_pair: Pair, tmp_path: Path) -> None:
    pair = own_pair
    iface = tc.resolve([pair.watched])[0]
    _wait_ours(iface, DETACHED, timeout=1)
    procs = []
    try:
        p = _serve(pair, tmp_path)
        procs.append(p)
        _wait_ours(iface, ATTACHED)
        p.kill()  # kill -9: no cleanup code runs; the kernel releases the links with the fds
        p.wait(timeout=10)
        _wait_ours(iface, DETACHED, timeout=5)
        assert "ks_pkt" not in _tc_filters(pair)
        p = _serve(pair, tmp_path)  # restart: attached once, not twice
        procs.append(p)
        _wait_ours(iface, ATTACHED)
        assert p.stdin
        p.stdin.close()  # stdio ends: the server exits normally
        assert p.wait(timeout=30) == 0
        assert _ours(iface) == DETACHED
        assert "ks_pkt" not in _tc_filters(pair)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


LEAKER = """
import os, sys, time
from kernsight.capture import Capture
cap = Capture(options={"packets": {"interfaces": [sys.argv[1]]}})
cap.start("packets")
child = os.fork()
if child == 0:  # holds a copy of every fd of the parent, the tcx links too
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
time.sleep(120)
"""


def test_next_start_detaches_what_a_killed_run_leaked(
    own_pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run whose link fds survive in a forked child: the next start detaches them.
    (Private notes: another kernsight starting meanwhile would sweep them too.)"""
    from kernsight.capture import Capture

    pair = own_pair
    monkeypatch.setenv("KERNSIGHT_RUN_DIR", str(tmp_path))
    iface = tc.resolve([pair.watched])[0]
    p = subprocess.Popen([sys.executable, "-c", LEAKER, pair.watched], stdout=subprocess.PIPE,
                         text=True)  # fmt: skip
    child = 0
    try:
        assert p.stdout
        child = int(p.stdout.readline())
        _wait_ours(iface, ATTACHED)
        p.kill()
        p.wait(timeout=10)
        time.sleep(0.3)
        assert _ours(iface) == ATTACHED  # still attached: the orphan holds the fds
        assert len(list((tmp_path / "tcx").glob("packets.*.json"))) == 1
        with Capture(options={"packets": {"interfaces": [pair.watched]}}) as cap:
            cap.start("packets")
            assert _ours(iface) == ATTACHED  # the leaked pair went, ours came: once each
        assert _ours(iface) == DETACHED
    finally:
        if p.poll() is None:
            p.kill()
        if child:
            os.kill(child, signal.SIGKILL)


# -- through MCP -----------------------------------------------------------------------------


def test_mcp_alerts_long_poll_reports_a_syn_fin(own_pair: Pair, tmp_path: Path) -> None:
    import anyio
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    pair = own_pair
    params = StdioServerParameters(
        command=KERNSIGHT, args=["serve", "--interfaces", pair.watched],
        env={**os.environ, "KERNSIGHT_STATE_DIR": str(tmp_path)},
    )  # fmt: skip
    tx = Sender(pair)
    iface = tc.resolve([pair.watched])[0]
    got: dict = {}

    async def main() -> None:
        async with Client(params) as c:
            r = await c.call_tool("status", {})
            assert r.structured_content["sources"]["packets"]["running"], r.structured_content
            _wait_ours(iface, ATTACHED, timeout=5)
            start = await c.call_tool("alerts", {"rule": "net-tcp-impossible-flags"})
            cursor = start.structured_content["next_cursor"]

            async def poll() -> None:
                t0 = time.monotonic()
                got["r"] = await c.call_tool(
                    "alerts",
                    {"rule": "net-tcp-impossible-flags", "cursor": cursor, "wait_ms": 20000},
                )
                got["s"] = time.monotonic() - t0

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(1.0)
                tx.send(tx.frame(_v4(pair) / TCP(sport=43999, dport=443, flags="SF")))
            st = await c.call_tool("status", {})
            got["counters"] = st.structured_content["sources"]["packets"]["counters"]

    anyio.run(main)
    out = got["r"].structured_content
    assert not got["r"].is_error, got["r"]
    i = out["columns"].index("output")
    rows = [r for r in out["rows"] if f"{pair.ip_a}:43999 -> {pair.ip_b}:443" in r[i]]
    assert len(rows) == 1, out
    assert got["s"] < 15, f"the long poll took {got['s']:.1f} s"
    counters = got["counters"]["interfaces"][pair.watched]
    assert counters["ingress"]["anomalous"] >= 1 and counters["ingress"]["packets"] >= 1
