"""Network benchmark: what the packets source (TC program) costs.

Run as root from the project root:

    .venv/bin/python bench/network.py [--seconds N] [--rounds R] [--repeat K] [--json]

1. Throughput: two fresh network namespaces joined by a veth pair (names `ksbench...`,
   addresses 10.199.250.x, all traffic inside them); iperf3 TCP from A to B for N seconds,
   alternating R times without and with kernsight's `packets` source watching B's end (ingress
   and egress, through the real Capture engine). Reported: the median throughput of each mode,
   the ratio with/without and the loss (target: at most 5%), and the packets the kernel program
   counted during the runs with it.
2. Parser cost: the TC program run in the kernel on fixed frames with BPF_PROG_TEST_RUN
   (K repetitions each): ns per packet and packets/s for one CPU, for a benign TCP segment, a
   benign IPv6 TCP segment with two extension headers, a fragment, and an anomalous SYN+FIN (the
   one that emits a record).

This is a benchmark, not a test: it reports what it measures, whatever that is.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from kernsight.capture import Capture  # noqa: E402
from kernsight.kernel.bpf import BPFObject, _lib  # noqa: E402
from kernsight.kernel.build import build  # noqa: E402


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


class Pair:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.a, self.b = f"ksbench{tag}a", f"ksbench{tag}b"
        self.if_a, self.if_b = f"ksb{tag}a", f"ksb{tag}b"
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        sh("ip", "link", "add", self.if_a, "netns", self.a, "type", "veth", "peer", "name",
           self.if_b, "netns", self.b)  # fmt: skip
        for ns, dev, ip in (
            (self.a, self.if_a, "10.199.250.1"),
            (self.b, self.if_b, "10.199.250.2"),
        ):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def iperf(pair: Pair, seconds: float) -> float:
    out = sh("ip", "netns", "exec", pair.a, "iperf3", "-J", "-c", "10.199.250.2", "-t",
             str(seconds))  # fmt: skip
    return json.loads(out)["end"]["sum_received"]["bits_per_second"]


def throughput(seconds: float, rounds: int) -> dict:
    pair = Pair()
    server = subprocess.Popen(["ip", "netns", "exec", pair.b, "iperf3", "-s"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(1.0)
        iperf(pair, 1)  # warm up
        base, traced, counted = [], [], 0
        for _ in range(rounds):
            base.append(iperf(pair, seconds))
            with Capture(options={"packets": {"interfaces": [f"{pair.b}/{pair.if_b}"]}}) as cap:
                cap.start("packets")
                cap.run_in_thread()
                traced.append(iperf(pair, seconds))
                c = cap.stats()["packets"].extra["interfaces"][f"{pair.b}/{pair.if_b}"]
                counted += c["ingress"]["packets"] + c["egress"]["packets"]
        b, t = statistics.median(base), statistics.median(traced)
        return {"without_gbps": b / 1e9, "with_gbps": t / 1e9, "ratio": t / b,
                "loss_pct": (1 - t / b) * 100, "runs_without": [x / 1e9 for x in base],
                "runs_with": [x / 1e9 for x in traced],
                "packets_counted_with": counted}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)
        pair.close()


class TestRunOpts(ctypes.Structure):  # struct bpf_test_run_opts (libbpf 1.1)
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]  # fmt: skip


_lib.bpf_prog_test_run_opts.restype = ctypes.c_int
_lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(TestRunOpts)]


def frames() -> dict[str, bytes]:
    from scapy.all import IP, TCP, Ether, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, Raw

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    v4 = IP(src="10.199.250.1", dst="10.199.250.2")
    v6 = IPv6(src="fd99:199:250::1", dst="fd99:199:250::2")
    return {
        "tcp (benign, 1448 B payload)": bytes(eth / v4 / TCP(flags="A") / Raw(b"x" * 1448)),
        "ipv6 tcp + 2 ext headers": bytes(eth / v6 / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
                                          / TCP(flags="A") / Raw(b"x" * 64)),  # fmt: skip
        "udp fragment (first)": bytes(eth / IP(src="10.199.250.1", dst="10.199.250.2",
                                               flags="MF", id=7, proto=17) / Raw(b"y" * 1480)),
        "syn+fin (anomalous: emits a record)": bytes(eth / v4 / TCP(flags="SF")),
    }  # fmt: skip


def parser_cost(repeat: int) -> dict:
    out = {}
    with BPFObject(build("packets")) as obj:
        obj.map("events").set_max_entries(1 << 22)
        obj.load()
        fd = obj.program_fd("ks_pkt_ingress")
        for name, data in frames().items():
            buf = ctypes.create_string_buffer(data, len(data))
            o = TestRunOpts(sz=ctypes.sizeof(TestRunOpts),
                            data_in=ctypes.cast(buf, ctypes.c_void_p),
                            data_size_in=len(data), repeat=repeat)  # fmt: skip
            rc = _lib.bpf_prog_test_run_opts(fd, ctypes.byref(o))
            if rc:
                raise OSError(-rc, f"BPF_PROG_TEST_RUN: {os.strerror(-rc)}")
            ns = o.duration  # average ns per run
            out[name] = {"ns_per_packet": ns, "mpps_one_cpu": 1e3 / max(ns, 1),
                         "retval": ctypes.c_int32(o.retval).value}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/network.py: run as root")
    res = {"kernel": platform.release(), "cpus": os.cpu_count(),
           "throughput": throughput(args.seconds, args.rounds),
           "parser": parser_cost(args.repeat)}  # fmt: skip
    if args.json:
        print(json.dumps(res, indent=2))
        return
    t = res["throughput"]
    print(f"kernel {res['kernel']}, {res['cpus']} CPUs")
    print(f"iperf3 TCP over veth, {args.rounds} x {args.seconds:g} s each, medians:")
    print(f"  without TC program: {t['without_gbps']:.2f} Gbit/s  {t['runs_without']}")
    print(f"  with packets source: {t['with_gbps']:.2f} Gbit/s  {t['runs_with']}")
    print(f"  ratio {t['ratio']:.3f}, loss {t['loss_pct']:.1f}% (target <= 5%); "
          f"{t['packets_counted_with']} packets counted by the program")  # fmt: skip
    print(f"parser (BPF_PROG_TEST_RUN, {args.repeat} runs each, one CPU):")
    for name, p in res["parser"].items():
        print(f"  {name:<38} {p['ns_per_packet']:>5} ns/packet  {p['mpps_one_cpu']:.1f} Mpps")


if __name__ == "__main__":
    main()
