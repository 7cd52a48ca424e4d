"""Scale-out by flow with real NFLOG traffic (issue 15).

A gateway namespace talks to an echo service in another namespace from 200
IPv4 and 200 IPv6 source addresses (one flow each); NFLOG logs both
directions: requests in OUTPUT, replies in raw PREROUTING (before
reassembly, so the big replies arrive as fragments, as NFLOG delivers them).
The sender splits the flows between two receivers, or one receiver splits
them between three FIFOs; Suricata behind each of two outputs alerts on a
marker only the reassembled TCP stream holds.
"""

import ipaddress
import json
import shutil
import subprocess
import sys
from collections import defaultdict

import pytest
from lab import ROOT, FifoReader, free_port, run, wait_until

from nflog_pipe import pcap, shard

FLOWS = ROOT / "tests" / "tools" / "flows.py"
S4, S6 = "10.77.0.254", "fd77::fe"
UDP_PORT, TCP_PORT = 7300, 7301


class Net:
    """gw (sender, clients, NFLOG rules) --veth-- srv (echo service)."""

    def __init__(self, lab, n4=200, n6=200):
        self.lab = lab
        self.gw = lab.netns("gw")
        self.srv = lab.netns("srv")
        for ns in (self.gw, self.srv):  # no duplicate address detection on the new links
            for conf in ("all", "default"):
                ns.exec("sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0")
        tag = lab.tmp.name[-6:].replace("_", "")
        ga, sb = f"nzsg{tag}"[:15], f"nzss{tag}"[:15]
        run("ip", "link", "add", ga, "netns", self.gw.name, "type", "veth", "peer", "name", sb,
            "netns", self.srv.name)
        self.src4 = [f"10.77.{1 + i // 250}.{1 + i % 250}" for i in range(n4)]
        self.src6 = [f"fd77::1:{i + 1:x}" for i in range(n6)]
        batch = [f"addr add 10.77.0.1/16 dev {ga}", f"addr add fd77::1/64 dev {ga} nodad"]
        batch += [f"addr add {a}/16 dev {ga}" for a in self.src4]
        batch += [f"addr add {a}/64 dev {ga} nodad" for a in self.src6]
        batch += [f"link set {ga} up"]
        (lab.tmp / "gw.batch").write_text("\n".join(batch) + "\n")
        self.gw.exec("ip", "-b", str(lab.tmp / "gw.batch"))
        for cmd in (["addr", "add", f"{S4}/16", "dev", sb],
                    ["addr", "add", f"{S6}/64", "dev", sb, "nodad"], ["link", "set", sb, "up"]):
            self.srv.exec("ip", *cmd)
        for v6, group, srv in ((False, "0", S4), (True, "1", S6)):
            for proto, port in (("udp", UDP_PORT), ("tcp", TCP_PORT)):
                self.gw.iptables("-A", "OUTPUT", "-d", srv, "-p", proto, "--dport", str(port),
                                 "-j", "NFLOG", "--nflog-group", group, v6=v6)
            # replies before reassembly: fragments as they come
            self.gw.iptables("-t", "raw", "-A", "PREROUTING", "-s", srv, "-p", "udp", "-j",
                             "NFLOG", "--nflog-group", group, v6=v6)
            self.gw.iptables("-t", "raw", "-A", "PREROUTING", "-s", srv, "-p", "tcp",
                             "--sport", str(TCP_PORT), "-j", "NFLOG", "--nflog-group", group,
                             v6=v6)
        self.server = lab.popen(self.srv.prefix() + [sys.executable, str(FLOWS), "server", S4, S6,
                                                     str(UDP_PORT), str(TCP_PORT), "150"],
                                stdout=subprocess.PIPE, text=True)
        assert self.server.stdout.readline().strip() == "ready"
        # the link is up both ways (before any sender binds the groups)
        wait_until(lambda: all(v[0] == v[1] for v in self.udp(
            "warmup", 0, [self.src4[0], self.src6[0]]).values()), timeout=20, what="echoes")

    def sources(self, name, addrs):
        p = self.lab.tmp / name
        p.write_text("\n".join(addrs) + "\n")
        return p

    def udp(self, rnd: str, big_every: int = 8, addrs=None) -> dict:
        srcs = self.sources(f"src-{rnd}", addrs or self.src4 + self.src6)
        r = self.gw.exec(sys.executable, str(FLOWS), "udp", S4, S6, str(UDP_PORT), str(srcs), rnd,
                         str(big_every), timeout=120)
        return json.loads(r.stdout)

    def tcp(self, addrs) -> dict:
        r = self.gw.exec(sys.executable, str(FLOWS), "tcp", S4, S6, str(TCP_PORT),
                         str(self.sources("src-tcp", addrs)), timeout=120)
        return json.loads(r.stdout)


def client_of(pkt: bytes) -> tuple[str, bool, bool, int]:
    """(client address, is a request, is a fragment, protocol) of a logged packet."""
    if pkt[0] >> 4 == 4:
        src, dst = str(ipaddress.ip_address(pkt[12:16])), str(ipaddress.ip_address(pkt[16:20]))
        frag, proto = bool(int.from_bytes(pkt[6:8], "big") & 0x3FFF), pkt[9]
    else:
        src, dst = str(ipaddress.ip_address(pkt[8:24])), str(ipaddress.ip_address(pkt[24:40]))
        frag, proto = pkt[6] == 44, (pkt[40] if pkt[6] == 44 else pkt[6])
    if dst in (S4, S6):
        return src, True, frag, proto
    return dst, False, frag, proto


def records(data: bytes) -> list[bytes]:
    assert data[:24] == pcap.GLOBAL_HEADER_BYTES, "each stream starts with a pcap header"
    return [r.data for r in pcap.iter_records(data[24:])]


def by_flow(streams: list[list[bytes]]) -> dict[str, dict[int, list]]:
    """client address -> shard -> packets."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for i, pkts in enumerate(streams):
        for p in pkts:
            out[client_of(p)[0]][i].append(p)
    return out


def check_shards(flows: dict, streams: list[list[bytes]], n: int) -> None:
    """Every packet once, each flow (both directions, its fragments) in
    exactly one shard, the one the hash says, shares within 15 % of even."""
    every = [p for s in streams for p in s]
    assert len(every) == len(set(every)), "a packet was delivered twice"
    seen = by_flow(streams)
    assert set(seen) == set(flows), set(flows) ^ set(seen)
    share = [0] * n
    frag_flows = 0
    for src, (sent, echoed, big) in flows.items():
        assert echoed == sent, (src, sent, echoed, [k for k, v in flows.items() if v[0] != v[1]])
        shards = seen[src]
        assert len(shards) == 1, (src, {k: len(v) for k, v in shards.items()})
        (i, pkts), = shards.items()
        fam = 6 if ":" in src else 4
        server = S6 if fam == 6 else S4
        assert i == shard.shard_of(probe(src, server, 17), n), src
        share[i] += 1
        kinds = [client_of(p) for p in pkts]
        requests = [k for k in kinds if k[1]]
        replies = [k for k in kinds if not k[1]]
        assert len(requests) == sent, (src, kinds)
        if big:  # the 3000-byte echo came back in fragments, all of them here
            frag_flows += 1
            assert sum(k[2] for k in replies) >= 3, (src, kinds)
            assert len(replies) == sent - 1 + sum(k[2] for k in replies)
        else:
            assert len(replies) == sent and not any(k[2] for k in replies)
    even = len(flows) / n
    assert all(abs(s - even) <= 0.15 * even for s in share), share
    assert frag_flows >= len(flows) // 10


def probe(src: str, dst: str, proto: int) -> bytes:
    """A minimal packet of the flow, to ask the hash where it goes."""
    a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(a) == 4:
        return bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, proto, 0, 0]) + a + b + bytes(8)
    return bytes([0x60, 0, 0, 0, 0, 8, proto, 64]) + a + b + bytes(8)


def wait_totals(readers, want: int, timeout: float = 30) -> list[bytes]:
    def have():
        return sum(max(0, len(r.data) - 24) for r in readers)
    wait_until(lambda: have() >= want, timeout=timeout, what=f"{want} bytes at the readers")
    return [r.close() for r in readers]


@pytest.fixture
def net(lab):
    return Net(lab)


def test_400_flows_2_destinations_then_one_receiver_stopped(lab, net):
    ports = [free_port(), free_port()]
    fifos = [lab.fifo(f"shard{i}.pcap") for i in range(2)]
    recvs = [lab.daemon(net.gw, "nflog-pcap-recv", f"tcp://127.0.0.1:{p}", str(f), tag=str(i))
             for i, (p, f) in enumerate(zip(ports, fifos, strict=True))]
    readers = [FifoReader(f) for f in fifos]
    for r in recvs:
        r.wait_log("reader_attached", timeout=15)
    sender = lab.daemon(net.gw, "nflog-zmq-send", "0,1", *(f"tcp://127.0.0.1:{p}" for p in ports),
                        "--zmq-buffer-frames", "2")
    sender.wait_log("start")

    flows = net.udp("r1")
    assert len(flows) == 400
    sent_pkts = sum(v[0] for v in flows.values()) * 2 + 2 * sum(v[2] for v in flows.values())
    wait_until(lambda: sum(len(r.data) for r in readers) > 0 and
               sum(len(list(pcap.iter_records(bytes(r.data[24:])))) for r in readers) >= sent_pkts,
               timeout=30, what="round 1 at the readers")
    streams = [records(r.close()) for r in readers]
    check_shards(flows, streams, 2)

    # shard 1's receiver stops: shard 0 loses nothing, shard 1's share is counted
    t1 = recvs[1].stop()
    assert t1["counters"]["dropped.reader_gone"] + t1["counters"]["packets_out"] \
        == t1["counters"]["packets_in"]
    reader0 = FifoReader(fifos[0])
    recvs[0].wait_log("reader_attached", timeout=15)
    recvs[0].wait_log("reader_attached", timeout=15, readers=2)
    flows2 = net.udp("r2", big_every=0)
    want0 = {s for s in flows2 if shard.shard_of(probe(s, S6 if ":" in s else S4, 17), 2) == 0}
    want0_pkts = sum(flows2[s][0] + flows2[s][1] for s in want0)
    want1_pkts = sum(flows2[s][0] + flows2[s][1] for s in flows2 if s not in want0)
    wait_until(lambda: len(list(pcap.iter_records(bytes(reader0.data[24:])))) >= want0_pkts,
               timeout=30, what="round 2 at reader 0")
    st = sender.stop()
    c = st["counters"]
    got0 = records(reader0.close())
    assert {client_of(p)[0] for p in got0} == want0
    assert len(got0) == want0_pkts
    # at the sender, every packet of shard 1 is either handed to ZeroMQ (at most
    # --zmq-buffer-frames frames wait for the receiver to come back) or counted
    assert c["shard.0.dropped.queue_full"] == 0
    assert c["shard.1.dropped.queue_full"] > 0
    assert c["shard.1.packets_out"] + c["shard.1.dropped.queue_full"] \
        == len(streams[1]) + want1_pkts
    assert c["shard.0.packets_out"] == len(streams[0]) + want0_pkts
    assert c["packets_in"] == c["packets_out"] + c["dropped.queue_full"]
    assert c["packets_out"] == c["shard.0.packets_out"] + c["shard.1.packets_out"]
    assert c["dropped.kernel_overrun"] == 0
    t0 = recvs[0].stop()
    assert t0["counters"]["packets_in"] == c["shard.0.packets_out"]


def test_400_flows_3_outputs_of_one_receiver(lab, net):
    port = free_port()
    fifos = [lab.fifo(f"out{i}.pcap") for i in range(3)]
    recv = lab.daemon(net.gw, "nflog-pcap-recv", f"tcp://127.0.0.1:{port}", *map(str, fifos))
    readers = [FifoReader(f) for f in fifos]
    wait_until(lambda: sum(r.get("event") == "reader_attached" for r in recv.records()) >= 3,
               timeout=15, what="3 readers attached")
    sender = lab.daemon(net.gw, "nflog-zmq-send", "0,1", f"tcp://127.0.0.1:{port}")
    sender.wait_log("start")
    flows = net.udp("r3")
    assert len(flows) == 400
    sent_pkts = sum(v[0] for v in flows.values()) * 2 + 2 * sum(v[2] for v in flows.values())
    wait_until(lambda: sum(len(list(pcap.iter_records(bytes(r.data[24:])))) for r in readers)
               >= sent_pkts, timeout=30, what="the flows at the readers")
    st = sender.stop()
    streams = [records(r.close()) for r in readers]
    check_shards(flows, streams, 3)
    t = recv.stop()["counters"]
    assert t["packets_in"] == st["counters"]["packets_out"] == sum(map(len, streams))
    for i in range(3):
        assert t[f"shard.{i}.packets_out"] + t[f"shard.{i}.dropped.reader_gone"] == len(streams[i])
    assert t["dropped.output"] == 0


RULE = ('alert tcp any any -> any {port} (msg:"shard stream marker"; flow:to_server,established; '
        'content:"NFLOG-PIPE-SHARD-STREAM-MARKER"; sid:9150001; rev:1;)\n')


def test_suricata_per_shard_alerts_once_per_tcp_connection(lab, net, tmp_path):
    """The marker is split over two TCP segments: only the reassembled stream
    holds it.  Each connection (both directions, to its shard's Suricata)
    alerts exactly once, on the shard its flow hashes to, never on another."""
    assert shutil.which("suricata"), "Suricata is installed by tools/install-deps.sh"
    rules = tmp_path / "shard.rules"
    rules.write_text(RULE.format(port=TCP_PORT))
    port = free_port()
    fifos = [lab.fifo(f"ids{i}.pcap") for i in range(2)]
    recv = lab.daemon(net.gw, "nflog-pcap-recv", f"tcp://127.0.0.1:{port}", *map(str, fifos))
    logdirs, suris = [], []
    for i, f in enumerate(fifos):
        d = tmp_path / f"suricata{i}"
        d.mkdir()
        logdirs.append(d)
        suris.append(lab.popen(["suricata", "-r", str(f), "-S", str(rules), "-l", str(d),
                                "-k", "none", "--set", "unix-command.enabled=no",
                                "--set", "stream.inline=yes",
                                "--set", "outputs.1.eve-log.types.0=alert"],
                               stdout=open(tmp_path / f"suricata{i}.out", "w"),
                               stderr=subprocess.STDOUT))
    wait_until(lambda: sum(r.get("event") == "reader_attached" for r in recv.records()) >= 2,
               timeout=60, what="both Suricatas attached")
    sender = lab.daemon(net.gw, "nflog-zmq-send", "0,1", f"tcp://127.0.0.1:{port}")
    sender.wait_log("start")
    addrs = net.src4[:20] + net.src6[:20]
    conns = net.tcp(addrs)
    assert len(conns) == 40

    def alerts():
        out = []
        for i, d in enumerate(logdirs):
            eve = d / "eve.json"
            for line in (eve.read_text().splitlines() if eve.exists() else []):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event_type") == "alert":
                    out.append((i, str(ipaddress.ip_address(ev["src_ip"])), ev["src_port"]))
        return out

    wait_until(lambda: len(alerts()) >= 40, timeout=60, what="40 alerts")
    sender.stop()
    recv.stop()
    for s in suris:
        s.wait(60)  # Suricata ends when the writer closes the FIFO
    got = alerts()
    assert len(got) == 40, got
    for src, sport in conns.items():
        mine = [a for a in got if a[1] == str(ipaddress.ip_address(src)) and a[2] == sport]
        assert len(mine) == 1, (src, mine)
        server = S6 if ":" in src else S4
        assert mine[0][0] == shard.shard_of(probe(src, server, 6), 2), (src, mine)
    assert {a[0] for a in got} == {0, 1}
