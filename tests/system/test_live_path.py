"""The live path never waits on a side service: real NFLOG traffic at 10 kpps flows
whole while the side service misbehaves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import payload_file
from lab import send_udp, tool, wait_until

from nflog_pipe import bpf, pcap, query, security

RATE_PACE = 10          # udpsend pauses 1 ms every 10 datagrams: at most 10 kpps
PACKETS = 20_000        # two seconds of it
#: the silent resolver holds each lookup this long (glibc's maximum); all traffic must
#: be through in a fraction of it, and SIGTERM obeyed long before it ends
RESOLVER_HANG = 30
QUERY = "tcp://127.0.0.1:5600"
BIG = 50_000           # 1400-byte packets: 70 MB, five seconds at 10 kpps


def whole_records(reader) -> int:
    try:
        return len(pcap.parse(bytes(reader.data))[1])
    except ValueError:
        return 0


def silent_resolver(pipe, ns) -> Path:
    """Point ns at a resolver that never answers (the other side of the link, where
    port 53 is dropped); returns the /etc/netns directory to remove afterwards."""
    d = Path("/etc/netns") / ns.name
    d.mkdir(parents=True)
    other = pipe.link.b4 if ns is pipe.gw else pipe.link.a4
    (d / "resolv.conf").write_text(f"nameserver {other}\noptions timeout:{RESOLVER_HANG} attempts:1\n")
    for n in (pipe.gw, pipe.ids):
        for proto in ("udp", "tcp"):
            n.iptables("-I", "INPUT", "-p", proto, "--dport", "53", "-j", "DROP")
    return d


def test_a_silent_resolver_for_statsd_costs_the_data_path_nothing(pipe, tmp_path):
    """Both daemons name a statsd server that only a resolver which never answers could
    resolve (getaddrinfo hangs 30 s there): every packet arrives long before the lookup
    gives up, and both daemons obey SIGTERM while it still hangs. (Before, the loop made
    the lookup itself: nothing moved for the whole 30 s.)"""
    etcs = [silent_resolver(pipe, pipe.gw), silent_resolver(pipe, pipe.ids)]
    try:
        # the resolver really is silent: a lookup from the gateway hangs past 3 s
        probe = pipe.gw.exec("timeout", "3", "getent", "hosts", "statsd.example.invalid",
                             check=False)
        assert probe.returncode == 124, (probe.returncode, probe.stdout, probe.stderr)

        statsd = ("-m", "statsd.example.invalid:8125", "--statsd-interval", "0.2")
        pipe.nflog_rule(3, 7400)
        pipe.start_receiver(*statsd)
        reader = pipe.reader()
        sender = pipe.start_sender("3", *statsd)
        sent = send_udp(pipe.gw, pipe.link.b4, 7400,
                        payload_file(tmp_path / "p", [b"s" * 64] * PACKETS), pace=RATE_PACE)
        assert sent == PACKETS
        # well inside the resolver's 30 s: the daemons' lookups are still hanging
        wait_until(lambda: whole_records(reader) >= sent, timeout=RESOLVER_HANG * 2 / 3,
                   what=f"{sent} records in the FIFO while the resolver hangs")
        s_totals = sender.stop(timeout=RESOLVER_HANG / 3)
        r_totals = pipe.receiver.stop(timeout=RESOLVER_HANG / 3)
        got = whole_records(reader)
        reader.close()
    finally:
        for d in etcs:
            shutil.rmtree(d, ignore_errors=True)
    sc, rc = s_totals["counters"], r_totals["counters"]
    assert got == sent == PACKETS
    assert sc["packets_in"] == sc["packets_out"] == PACKETS
    assert rc["packets_out"] == PACKETS
    assert not any(v for k, v in {**sc, **rc}.items() if k.startswith("dropped.")), (sc, rc)
    assert sc["statsd.send_errors"] == 0   # nothing sent: there was no address


def slow_filter(i: int) -> str:
    """About a second of libpcap's optimiser on this machine, 2 KiB long."""
    f = " or ".join(f"portrange {j}-{j + 3}" for j in range(1 + i, 4000, 5))
    return f[:bpf.MAX_EXPRESSION].rsplit(" or ", 1)[0]


def test_query_filters_cost_the_live_path_nothing(pipe, tmp_path):
    """While 10 kpps flow, clients send filters that name hosts (a silent resolver
    would hold a lookup 30 s) and ten 2 KiB filters that take libpcap about a second
    each to compile. Names are refused at once, compilation happens off the loop and
    is bounded: not one packet is lost."""
    etc = silent_resolver(pipe, pipe.ids)
    try:
        pipe.nflog_rule(4, 7500)
        pipe.start_receiver("--buffer-window", "16", "--buffer-interface", QUERY)
        reader = pipe.reader()
        sender = pipe.start_sender("4")
        payloads = payload_file(tmp_path / "p", [b"q" * 200] * PACKETS)
        sent = []
        traffic = threading.Thread(target=lambda: sent.append(
            send_udp(pipe.gw, pipe.link.b4, 7500, payloads, pace=RATE_PACE)))
        traffic.start()
        filters = ["src a.example", "udp and dst gw1.example"] + [slow_filter(i) for i in range(10)]
        clients = [subprocess.Popen(
            pipe.ids.prefix() + [tool("nflog-pcap-query"), QUERY, "--filter", f,
                                 "-o", str(tmp_path / f"q{i}.pcap"), "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i, f in enumerate(filters)]
        results = [(c.wait(60), c.stderr.read().decode()) for c in clients]
        traffic.join(120)
        assert sent == [PACKETS]
        wait_until(lambda: whole_records(reader) >= PACKETS, timeout=60,
                   what=f"{PACKETS} records in the FIFO")
        s_totals = sender.stop()
        r_totals = pipe.receiver.stop()
        got = whole_records(reader)
        reader.close()
    finally:
        shutil.rmtree(etc, ignore_errors=True)
    for rc, err in results[:2]:
        assert rc != 0 and "names are never resolved" in err, err[-1000:]
    outcomes = {"served": 0, "busy": 0, "slow": 0}
    for rc, err in results[2:]:
        if rc == 0:
            outcomes["served"] += 1
        elif "busy" in err:
            outcomes["busy"] += 1
        else:
            assert "takes longer than" in err, err[-1000:]
            outcomes["slow"] += 1
    sc, rc_ = s_totals["counters"], r_totals["counters"]
    assert got == PACKETS and rc_["packets_out"] == PACKETS and sc["packets_out"] == PACKETS
    assert not any(v for k, v in {**sc, **rc_}.items() if k.startswith("dropped.")
                   and k not in ("dropped.evicted", "bytes_dropped.evicted")), (sc, rc_, outcomes)
    assert rc_["query.requests"] == len(filters)


IDLE_CLIENTS = """
import sys, time, zmq
ctx = zmq.Context()
socks = []
for i in range(int(sys.argv[2])):
    s = ctx.socket(zmq.DEALER)
    s.rcvhwm = 1
    s.linger = 0
    s.connect(sys.argv[1])
    socks.append(s)
print("connected", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:   # ask again and again, never read
    for s in socks:
        s.send_multipart([b"query", b'{"credit": 64}'], zmq.NOBLOCK)
    time.sleep(0.3)
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_idle_query_clients_stay_within_the_memory_bound(pipe, tmp_path):
    """A full window (8 MiB; NZP_TEST_WINDOW=64 for the issue's figure), then 40 clients
    that ask for all of it again and again and never read (receive HWM 1, credit 64)
    while 70 MB flow at 10 kpps, evicting every chunk their answers refer to: the
    receiver's memory stays within the documented bound (docs/query-protocol.md:
    2 windows + the 64 MiB in-flight budget + 128 MiB) and no packet is lost."""
    window = int(os.environ.get("NZP_TEST_WINDOW", "8"))
    pipe.nflog_rule(5, 7600)
    pipe.start_receiver("--buffer-window", str(window), "--buffer-interface", QUERY,
                        "--buffer-timeout", "1")
    reader = pipe.reader()
    sender = pipe.start_sender("5")
    # a full window (1.3 windows of records)
    fill = payload_file(tmp_path / "fill", [b"f" * 1372] * (window * 1000))
    filled = send_udp(pipe.gw, pipe.link.b4, 7600, fill, pace=20)
    wait_until(lambda: whole_records(reader) >= filled, timeout=120, what="the window filled")
    clients = pipe.lab.popen(pipe.ids.prefix() + [sys.executable, "-c", IDLE_CLIENTS, QUERY,
                                                  "40", "30"], stdout=subprocess.PIPE)
    assert clients.stdout.readline().strip() == b"connected"
    # more than a window of new traffic: every chunk a client's answer refers to is
    # evicted from the ring while the client sits on it
    payloads = payload_file(tmp_path / "p", [b"l" * 1372] * BIG)
    sent = []
    traffic = threading.Thread(target=lambda: sent.append(
        send_udp(pipe.gw, pipe.link.b4, 7600, payloads, pace=RATE_PACE)))
    traffic.start()
    peak = 0.0
    pid = pipe.receiver.pid
    while traffic.is_alive():
        peak = max(peak, rss_mib(pid))
        traffic.join(0.05)
    for _ in range(40):   # and a while after: the idle clients are still connected
        peak = max(peak, rss_mib(pid))
        time.sleep(0.05)
    wait_until(lambda: whole_records(reader) >= filled + BIG, timeout=60,
               what="every packet in the FIFO")
    clients.kill()
    s_totals = sender.stop()
    r_totals = pipe.receiver.stop()
    reader.close()
    bound = 2 * window + query.INFLIGHT + 128
    print(f"receiver peak RSS with 40 idle query clients: {peak:.0f} MiB (bound {bound})")
    assert peak <= bound, f"receiver RSS {peak:.0f} MiB over the bound {bound} MiB"
    sc, rc = s_totals["counters"], r_totals["counters"]
    assert sent == [BIG] and rc["packets_out"] == filled + BIG == sc["packets_out"]
    assert not any(v for k, v in {**sc, **rc}.items() if k.startswith("dropped.")
                   and k not in ("dropped.evicted", "bytes_dropped.evicted")), (sc, rc)
    assert rc["query.requests"] >= 40


FLOOD = """
import socket, sys, time
# the ZMTP 3.0 greeting of a CURVE client, then nothing: a half-open handshake
greeting = (b"\\xff" + bytes(8) + b"\\x7f" + bytes([3, 0]) + b"CURVE".ljust(20, b"\\x00")
            + b"\\x00" + bytes(31))
socks = []
for i in range(int(sys.argv[3])):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.sendall(greeting)
    socks.append(s)
print("flooding", len(socks), flush=True)
time.sleep(float(sys.argv[4]))
"""


def curve_options(tmp: Path) -> tuple[list[str], list[str]]:
    """Keys for a receiver that allows one sender "gw": (receiver, sender) options."""
    d, allow = tmp / "keys", tmp / "allow"
    allow.mkdir()
    for n in ("receiver", "gw"):
        security.write_keypair(str(d), n)
    (allow / "gw.key").write_bytes((d / "gw.key").read_bytes())
    return (["--curve-secret-key", str(d / "receiver.key_secret"), "--curve-allow", str(allow)],
            ["--curve-secret-key", str(d / "gw.key_secret"), "--curve-server-key",
             str(d / "receiver.key")])


def test_a_handshake_flood_does_not_starve_the_receiver(pipe, tmp_path):
    """1 100 TCP connections send a CURVE greeting and go silent, against a receiver
    started with the usual soft limit of 1 024 open files. The receiver raises its
    limit to the hard one, drops each silent peer after the handshake interval, and
    counts them; a legitimate sender started during the flood delivers every packet.
    (Before: descriptors ran out, libzmq spun on accept() for 20 s and more, and the
    legitimate sender could not connect meanwhile.)"""
    recv_keys, send_keys = curve_options(tmp_path)
    pipe.nflog_rule(6, 7700)
    ids_prefix = pipe.ids.prefix
    pipe.ids.prefix = lambda: ids_prefix() + ["prlimit", "--nofile=1024:4096", "--"]
    try:
        pipe.start_receiver(*recv_keys, "--stats-interval", "1")
    finally:
        pipe.ids.prefix = ids_prefix
    assert pipe.receiver.wait_log("start")["nofile"] == 4096
    reader = pipe.reader()
    flood = pipe.lab.popen(pipe.gw.prefix() + [sys.executable, "-c", FLOOD, pipe.link.b4, "5555",
                                               "1100", "30"], stdout=subprocess.PIPE)
    assert flood.stdout.readline().split() == [b"flooding", b"1100"]
    t0 = time.monotonic()
    sender = pipe.start_sender("6", *send_keys)
    payloads = payload_file(tmp_path / "p", [b"h" * 100] * PACKETS)
    sent = []
    traffic = threading.Thread(target=lambda: sent.append(
        send_udp(pipe.gw, pipe.link.b4, 7700, payloads, pace=RATE_PACE)))
    traffic.start()
    wait_until(lambda: whole_records(reader) > 0, timeout=30, what="the first packet")
    first = time.monotonic() - t0
    traffic.join(120)
    wait_until(lambda: whole_records(reader) >= PACKETS, timeout=60, what="every packet")
    # the silent peers were dropped after the handshake interval, and counted
    wait_until(lambda: any(r.get("event") == "stats"
                           and r["counters"].get("handshakes.failed", 0) >= 1100
                           for r in pipe.receiver.records()),
               timeout=30, what="1100 failed handshakes counted")
    flood.kill()
    s_totals = sender.stop()
    r_totals = pipe.receiver.stop()
    reader.close()
    print(f"first packet of the legitimate sender {first:.2f} s after its start, "
          "during a flood of 1100 silent greetings")
    assert first < 10, f"the legitimate sender waited {first:.1f} s"
    sc, rc = s_totals["counters"], r_totals["counters"]
    assert sent == [PACKETS] and rc["packets_out"] == PACKETS == sc["packets_out"]
    assert not any(v for k, v in {**sc, **rc}.items() if k.startswith("dropped.")), (sc, rc)
    assert rc["connections.accepted"] >= 1101 and rc["handshakes.succeeded"] >= 1


FORGED_IDS = """
import sys, zmq
from nflog_pipe import frame, pcap
rec = pcap.record(1_700_000_000, 0, bytes([0x45]) + bytes(27))   # one 28-byte IPv4 packet
ctx = zmq.Context()
s = ctx.socket(zmq.PUSH)
s.sndhwm = 0
s.connect(sys.argv[1])
for i in range(int(sys.argv[2])):
    s.send(frame.encode(b"forged-%d" % i, i, 0, 0, 1, rec))
s.close(linger=60000)
ctx.term()   # waits until every queued frame went out (at most the linger)
print("sent", flush=True)
"""


def test_forged_sender_ids_cost_the_receiver_bounded_state(pipe, tmp_path):
    """200 000 frames, each from a new forged sender id, while 10 kpps of real traffic
    flow: the receiver tracks at most 4 096 streams (forgetting in O(1)), its memory
    stays flat, no real packet is lost and none is counted lost (a real stream that
    was forgotten and comes back starts again, without a false transit loss)."""
    pipe.nflog_rule(7, 7800)
    pipe.start_receiver()
    reader = pipe.reader()
    sender = pipe.start_sender("7")
    before = rss_mib(pipe.receiver.pid)
    forger = pipe.lab.popen(pipe.gw.prefix() + [sys.executable, "-c", FORGED_IDS,
                                                f"tcp://{pipe.link.b4}:5555", "200000"],
                            stdout=subprocess.PIPE)
    payloads = payload_file(tmp_path / "p", [b"r" * 100] * PACKETS)
    sent = send_udp(pipe.gw, pipe.link.b4, 7800, payloads, pace=RATE_PACE)
    assert forger.stdout.readline().strip() == b"sent"
    forger.wait(60)
    expect = 24 + PACKETS * (16 + 128) + 200_000 * (16 + 28)   # bytes: cheap to watch
    wait_until(lambda: len(reader.data) >= expect, timeout=120,
               what="the real and the forged records")
    after = rss_mib(pipe.receiver.pid)
    s_totals = sender.stop()
    r_totals = pipe.receiver.stop()
    assert whole_records(reader) == PACKETS + 200_000
    reader.close()
    rc = r_totals["counters"]
    assert sent == PACKETS and s_totals["counters"]["packets_out"] == PACKETS
    assert rc["packets_out"] == PACKETS + 200_000
    assert rc["streams_forgotten"] >= 200_000 + 1 - 4096
    assert not any(v for k, v in rc.items() if k.startswith("dropped.")), rc
    assert len(r_totals["senders"]) <= 4096   # the streams still tracked at the end
    print(f"receiver RSS {before:.0f} MiB before, {after:.0f} MiB after 200 000 forged ids")
    assert after - before < 32, f"receiver grew by {after - before:.0f} MiB"
