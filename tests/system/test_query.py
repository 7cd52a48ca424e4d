"""The traffic buffer, nflog-pcap-query and the live tap with the real
pipe: iptables NFLOG in a gateway namespace, nflog-zmq-send there,
nflog-pcap-recv in an ids namespace, a real FIFO reader; queries and tap
clients run inside the ids namespace (the buffer and the tap listen on its
loopback) and their results are read by tshark and tcpdump."""

import os
import pty
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import make_payloads, payload_file
from lab import ROOT, free_port, newest_fitting, run, send_udp, tool, wait_until
from nflogref import udp_payload

from nflog_pipe import pcap

QPORT, TPORT = 5600, 5601
ENDPOINT = f"tcp://127.0.0.1:{QPORT}"
UDP_A, UDP_MDNS = 7101, 5353
TOOLS = ROOT / "tests" / "tools"


# -- helpers ------------------------------------------------------------------------

def query(pipe, *args, out: Path | None = None, timeout: float = 120):
    argv = pipe.ids.prefix() + [tool("nflog-pcap-query"), ENDPOINT, *args, "--log-format",
                                "json"]
    if out is not None:
        argv += ["-o", str(out)]
    return subprocess.run(argv, capture_output=True, timeout=timeout)


def query_file(pipe, tmp_path: Path, name: str, *args) -> Path:
    out = tmp_path / name
    r = query(pipe, *args, out=out)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return out


def raw(r: pcap.Record) -> bytes:
    return pcap.record(r.ts_sec, r.ts_usec, r.data, r.origlen)


def fifo_records(reader) -> list[pcap.Record]:
    try:
        return pcap.parse(bytes(reader.data))[1]
    except ValueError:  # a record still on its way
        return []


def tshark_udp(path: Path) -> list[tuple[int, bytes]]:
    """(destination port, payload) of each packet, as tshark reads the file."""
    r = run("tshark", "-r", str(path), "-T", "fields", "-e", "udp.dstport", "-e", "udp.payload")
    out = []
    for line in r.stdout.splitlines():
        port, _, hexdata = line.partition("\t")
        out.append((int(port), bytes.fromhex(hexdata)))
    return out


def tcpdump_count(path: Path, *expr: str) -> int:
    r = run("tcpdump", "-nn", "-r", str(path), *expr)
    return len(r.stdout.splitlines())


def counter(pipe, name):
    recs = [r for r in pipe.receiver.records() if r.get("event") in ("stats", "totals")]
    return recs[-1]["counters"].get(name, 0) if recs else 0


def buffered_receiver(pipe, *extra):
    return pipe.start_receiver("--buffer-interface", str(QPORT), "--stats-interval", "0.2",
                               *extra)


def send_and_wait(pipe, reader, tmp_path, name, port, payloads, pace=50, v6=False):
    before = len(fifo_records(reader))
    dst = pipe.link.b6 if v6 else pipe.link.b4
    assert send_udp(pipe.gw, dst, port, payload_file(tmp_path / name, payloads),
                    pace) == len(payloads)
    try:
        wait_until(lambda: len(fifo_records(reader)) >= before + len(payloads), timeout=60,
                   what=f"{len(payloads)} records of {name}")
    except AssertionError as e:  # say where they went
        stats = [r for s in pipe.senders for r in s.records() if r.get("event") == "stats"]
        raise AssertionError(f"{e}; FIFO has {len(fifo_records(reader)) - before}; sender: "
                             f"{stats[-1]['counters'] if stats else '?'}") from None


def start_sender(pipe, group: str):
    """A sender with a deep queue: these tests are about the receiver, and on a
    busy machine the default 50 frames overflow (counted as queue_full)."""
    return pipe.start_sender(group, "--stats-interval", "0.5", "--zmq-buffer-frames", "5000")


# -- the buffer ---------------------------------------------------------------------------

def test_query_returns_exactly_the_newest_packets_that_fit(pipe, tmp_path):
    pipe.nflog_rule(30, UDP_A)
    buffered_receiver(pipe, "--buffer-window", "0.5")
    reader = pipe.reader()
    start_sender(pipe, "30")
    payloads = make_payloads(3000, 1400, b"W")
    send_and_wait(pipe, reader, tmp_path, "w", UDP_A, payloads)
    live = [raw(r) for r in fifo_records(reader)]
    assert len(live) == 3000
    expect = newest_fitting(live, 512 * 1024)
    assert 300 < len(expect) < 3000

    out = query_file(pipe, tmp_path, "all.pcap")
    assert out.read_bytes() == pcap.GLOBAL_HEADER_BYTES + b"".join(expect)
    assert tshark_udp(out) == [(UDP_A, p) for p in payloads[-len(expect):]]
    assert tcpdump_count(out) == len(expect)
    # the same on stdout
    r = query(pipe)
    assert r.returncode == 0 and r.stdout == out.read_bytes()
    # the receiver counted what it evicted; eviction is not a live loss
    wait_until(lambda: counter(pipe, "dropped.evicted") == 3000 - len(expect),
               what="dropped.evicted in the stats")
    totals = pipe.receiver.stop()["counters"]
    assert totals["packets_out"] == 3000 and totals["dropped.output"] == 0
    assert totals["query.served"] == 2 and totals["query.refused"] == 0


def test_last_since_and_until(pipe, tmp_path):
    """Three bursts 6 s apart: time windows between them select exactly one."""
    pipe.nflog_rule(31, UDP_A)
    buffered_receiver(pipe, "--buffer-window", "16")
    reader = pipe.reader()
    start_sender(pipe, "31")
    bursts = {t: make_payloads(400, 1000, t) for t in (b"A", b"B", b"C")}
    for i, (tag, payloads) in enumerate(bursts.items()):
        if i:
            time.sleep(6)
        send_and_wait(pipe, reader, tmp_path, tag.decode(), UDP_A, payloads)
    recs = fifo_records(reader)
    by_tag = {t: [r for r in recs if udp_payload(r.data)[:1] == t] for t in bursts}
    assert all(len(v) == 400 for v in by_tag.values())
    a_end, b_start = by_tag[b"A"][-1].ts, by_tag[b"B"][0].ts
    b_end, c_start = by_tag[b"B"][-1].ts, by_tag[b"C"][0].ts
    assert b_start - a_end > 3 and c_start - b_end > 3

    # --last counts back from the receiver's clock when the request arrives:
    # 1 s of slack for starting the client, up to 4 s of delay tolerated
    last = time.time() + 1.0 - (b_end + c_start) / 2
    out = query_file(pipe, tmp_path, "last.pcap", "--last", f"{last:.3f}s")
    assert tshark_udp(out) == [(UDP_A, p) for p in bursts[b"C"]]
    assert out.read_bytes()[24:] == b"".join(raw(r) for r in by_tag[b"C"])

    since, until = (a_end + b_start) / 2, (b_end + c_start) / 2
    out = query_file(pipe, tmp_path, "unix.pcap", "--since", f"{since:.6f}",
                     "--until", f"{until:.6f}")
    assert tshark_udp(out) == [(UDP_A, p) for p in bursts[b"B"]]
    iso = [datetime.fromtimestamp(t, UTC).isoformat() for t in (since, until)]
    out = query_file(pipe, tmp_path, "iso.pcap", "--since", iso[0], "--until", iso[1])
    assert out.read_bytes()[24:] == b"".join(raw(r) for r in by_tag[b"B"])
    out = query_file(pipe, tmp_path, "since.pcap", "--since", f"{since:.6f}")
    assert tcpdump_count(out) == 800
    out = query_file(pipe, tmp_path, "until.pcap", "--until", f"{since:.6f}")
    assert [p for _, p in tshark_udp(out)] == bursts[b"A"]

    # bad times: the client says why before asking; the receiver says why too
    r = query(pipe, "--since", "yesterday")
    assert r.returncode == 2 and b"is not a time" in r.stderr
    r = query(pipe, "--since", f"{until}", "--until", f"{since}")
    assert r.returncode == 1 and b"is not before until" in r.stderr
    r = query(pipe, "--last", "5s", "--since", "1")
    assert r.returncode == 2 and b"cannot be combined" in r.stderr


def test_max_bytes_and_bpf_filter(pipe, tmp_path):
    pipe.nflog_rule(32, UDP_A)
    pipe.nflog_rule(32, UDP_MDNS)
    pipe.nflog_rule(32, UDP_MDNS, v6=True)
    buffered_receiver(pipe, "--buffer-window", "16")
    reader = pipe.reader()
    start_sender(pipe, "32")
    plain1, mdns4 = make_payloads(700, 1400, b"p"), make_payloads(300, 600, b"m")
    plain2, mdns6 = make_payloads(500, 900, b"q"), make_payloads(200, 300, b"6")
    send_and_wait(pipe, reader, tmp_path, "p1", UDP_A, plain1)
    send_and_wait(pipe, reader, tmp_path, "m4", UDP_MDNS, mdns4)
    send_and_wait(pipe, reader, tmp_path, "p2", UDP_A, plain2)
    send_and_wait(pipe, reader, tmp_path, "m6", UDP_MDNS, mdns6, v6=True)
    live = fifo_records(reader)
    assert len(live) == 1700

    out = query_file(pipe, tmp_path, "mdns.pcap", "--filter", "udp and port 5353")
    assert tshark_udp(out) == [(UDP_MDNS, p) for p in mdns4 + mdns6]
    assert tcpdump_count(out) == tcpdump_count(out, "udp", "and", "port", "5353") == 500
    assert out.read_bytes()[24:] == b"".join(raw(r) for r in live
                                             if udp_payload(r.data)[:1] in (b"m", b"6"))
    out = query_file(pipe, tmp_path, "mdns6.pcap", "-f", "ip6 and udp dst port 5353")
    assert [p for _, p in tshark_udp(out)] == mdns6

    wanted = [raw(r) for r in live[-650:]]
    cap = 24 + sum(map(len, wanted)) + len(raw(live[-651])) - 1
    out = query_file(pipe, tmp_path, "cap.pcap", "--max-bytes", str(cap))
    assert out.read_bytes() == pcap.GLOBAL_HEADER_BYTES + b"".join(wanted)
    assert tcpdump_count(out) == 650
    out = query_file(pipe, tmp_path, "cap_mdns.pcap", "--max-bytes", "64K", "-f", "port 5353")
    got = [p for _, p in tshark_udp(out)]
    assert got == (mdns4 + mdns6)[-len(got):] and 0 < len(got) < 500
    assert out.stat().st_size <= 65536

    r = query(pipe, "--filter", "udp and port")
    assert r.returncode == 1
    assert b"bad filter 'udp and port'" in r.stderr and b"syntax error" in r.stderr
    r = query(pipe, "--filter", "ether host 01:02:03:04:05:06")
    assert r.returncode == 1 and b"ethernet" in r.stderr
    r = query(pipe, "--max-bytes", "10Q")
    assert r.returncode == 2 and b"is not a size" in r.stderr
    totals = pipe.receiver.stop()["counters"]
    assert totals["query.refused"] == 2 and totals["query.served"] == 4


def test_query_during_steady_traffic_keeps_the_fifo_flowing(pipe, tmp_path):
    """A slow client fetches a 27 MiB buffer for several seconds while
    traffic goes on: the FIFO keeps receiving during the transfer, and every
    packet the receiver accepted reaches it."""
    pipe.nflog_rule(33, UDP_A)
    buffered_receiver(pipe, "--buffer-window", "64", "--buffer-timeout", "10")
    reader = pipe.reader()
    sender = start_sender(pipe, "33")
    fill = make_payloads(19000, 1400, b"F")
    fill = [p + bytes(1400 - len(p)) for p in fill]
    send_and_wait(pipe, reader, tmp_path, "fill", UDP_A, fill)

    done = threading.Event()
    steady_file = payload_file(tmp_path / "steady", make_payloads(300, 1000, b"S"))

    def steady():
        for _ in range(60):   # bounded: at most 60 bursts of 300
            send_udp(pipe.gw, pipe.link.b4, UDP_A, steady_file, 30)
            if done.is_set():
                return
            time.sleep(0.1)
    traffic = threading.Thread(target=steady)
    traffic.start()
    try:
        out = tmp_path / "slow.pcap"
        client = pipe.lab.popen(
            pipe.ids.prefix() + [tool("nflog-pcap-query"), ENDPOINT, "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=open(tmp_path / "client.err", "w"))
        slow = pipe.lab.popen([sys.executable, str(TOOLS / "slowpipe.py"), str(out),
                               str(4 << 20)], stdin=client.stdout, stdout=subprocess.PIPE)
        client.stdout.close()
        pipe.receiver.wait_log("query", timeout=30)
        at_start = len(fifo_records(reader))
        # while the query is being served, the FIFO receives 1000 more packets
        wait_until(lambda: len(fifo_records(reader)) >= at_start + 1000, timeout=30,
                   what="live packets in the FIFO during the query")
        assert client.poll() is None, "the query was not in progress any more"
        assert client.wait(120) == 0, (tmp_path / "client.err").read_text()
        slow.wait(60)
    finally:
        done.set()
        traffic.join(120)
    sent = sender.stop()["counters"]["packets_out"]
    wait_until(lambda: len(fifo_records(reader)) >= sent, timeout=30, what="all records")
    got = pcap.parse(out.read_bytes())[1]
    assert len(got) >= len(fill)
    assert [udp_payload(r.data) for r in got[: len(fill)]] == fill
    assert tcpdump_count(out) == len(got)
    totals = pipe.receiver.stop()["counters"]
    assert totals["packets_in"] == totals["packets_out"] == sent == len(fifo_records(reader))
    assert totals["dropped.output"] == 0 and totals["query.served"] == 1


def test_several_clients_a_stalled_one_and_a_vanished_one(pipe, tmp_path):
    pipe.nflog_rule(34, UDP_A)
    buffered_receiver(pipe, "--buffer-window", "32", "--buffer-timeout", "1")
    reader = pipe.reader()
    start_sender(pipe, "34")
    send_and_wait(pipe, reader, tmp_path, "x", UDP_A, make_payloads(12000, 1400, b"X"))
    expect = pcap.GLOBAL_HEADER_BYTES + b"".join(raw(r) for r in fifo_records(reader))

    # a client whose output nobody reads stops taking data: dropped after 1 s
    stalled = pipe.lab.popen(pipe.ids.prefix() + [tool("nflog-pcap-query"), ENDPOINT],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    wait_until(lambda: counter(pipe, "query.timeouts") == 1, timeout=30, what="the timeout")
    assert stalled.poll() is None
    # a client killed in the middle of a transfer
    vanish = pipe.lab.popen(pipe.ids.prefix() + [tool("nflog-pcap-query"), ENDPOINT],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    wait_until(lambda: counter(pipe, "query.requests") == 2, timeout=30, what="the request")
    os.killpg(vanish.pid, signal.SIGKILL)
    wait_until(lambda: counter(pipe, "query.timeouts") + counter(pipe, "query.aborted") == 2,
               timeout=30, what="the vanished client to be forgotten")

    # three at once, all complete and identical
    clients = [pipe.lab.popen(pipe.ids.prefix() + [tool("nflog-pcap-query"), ENDPOINT, "-o",
                                                   str(tmp_path / f"c{i}.pcap")],
                              stderr=subprocess.DEVNULL) for i in range(3)]
    assert [c.wait(120) for c in clients] == [0, 0, 0]
    for i in range(3):
        assert (tmp_path / f"c{i}.pcap").read_bytes() == expect
    # live traffic still flows
    send_and_wait(pipe, reader, tmp_path, "y", UDP_A, make_payloads(100, 500, b"Y"))
    os.killpg(stalled.pid, signal.SIGKILL)
    totals = pipe.receiver.stop()["counters"]
    assert totals["query.served"] == 3 and totals["packets_out"] == 12100
    assert totals["query.timeouts"] + totals["query.aborted"] == 2


# -- the live tap ---------------------------------------------------------------------------

def test_tap_stream_read_by_tshark_and_a_stalled_client_dropped(pipe, tmp_path):
    pipe.nflog_rule(35, UDP_A)
    pipe.start_receiver("--tap", str(TPORT), "--tap-buffer", "0.25", "--stats-interval", "0.2")
    reader = pipe.reader()
    start_sender(pipe, "35")
    cap = tmp_path / "tap.pcap"
    payloads = make_payloads(8000, 1400, b"T")
    # Wireshark's own PCAP-over-IP client (dumpcap's TCP@ interface)
    tshark = pipe.lab.popen(pipe.ids.prefix() + ["tshark", "-i", f"TCP@127.0.0.1:{TPORT}",
                                                 "-c", str(len(payloads)), "-F", "pcap",
                                                 "-w", str(cap)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "tshark.err", "w"))
    stall = pipe.lab.popen(pipe.ids.prefix() + [sys.executable, str(TOOLS / "tapstall.py"),
                                                "127.0.0.1", str(TPORT), "120"],
                           stdout=subprocess.PIPE)
    assert stall.stdout.readline().strip() == b"connected"
    wait_until(lambda: len([r for r in pipe.receiver.records()
                            if r.get("event") == "tap_attached"]) == 2, timeout=30,
               what="two tap clients")
    send_and_wait(pipe, reader, tmp_path, "t", UDP_A, payloads)
    assert tshark.wait(60) == 0, (tmp_path / "tshark.err").read_text()
    assert tshark_udp(cap) == [(UDP_A, p) for p in payloads]
    assert pcap.parse(cap.read_bytes())[0]["linktype"] == 101
    wait_until(lambda: counter(pipe, "dropped.tap_slow") == 1, what="the stalled client dropped")
    stall.kill()
    totals = pipe.receiver.stop()["counters"]
    assert totals["packets_out"] == 8000 and totals["dropped.output"] == 0
    assert totals["tap.clients"] == 2 and totals["dropped.tap_slow"] == 1


# -- command lines ---------------------------------------------------------------------------

def test_query_command_line():
    q = tool("nflog-pcap-query")
    r = run(q, "--help")
    for opt in ("--last", "--since", "--until", "--max-bytes", "--filter", "-o FILE",
                "NFLOG_PIPE_ENDPOINT"):
        assert opt in r.stdout
    for argv, words in [([], "ENDPOINT is required"),
                        (["5600", "--bogus"], "unrecognized arguments"),
                        (["5600", "--last", "3x"], "is not a duration"),
                        (["notanendpoint"], "is not a ZeroMQ endpoint"),
                        (["5600", "--max-bytes", "10"], "at least 24 bytes"),
                        (["5600", "--timeout", "0"], "out of range (0.001 to 86400)")]:
        r = run(q, *argv, check=False)
        assert r.returncode == 2 and words in r.stderr, (argv, r.stderr)
    r = run(q, "tcp://127.0.0.1:1", "--timeout", "0.3", "-o", "/dev/null", "--log-format",
            "text", check=False)
    assert r.returncode == 1 and "no answer from tcp://127.0.0.1:1" in r.stderr
    # a terminal is no place for a pcap
    master, slave = pty.openpty()
    try:
        p = subprocess.run([q, "tcp://127.0.0.1:1", "--log-format", "text"], stdout=slave,
                           stderr=subprocess.PIPE, timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert p.returncode == 1 and b"refusing to write a pcap to a terminal" in p.stderr


def test_receiver_buffer_and_tap_command_line(tmp_path):
    recv = tool("nflog-pcap-recv")
    r = run(recv, "--help")
    for opt in ("--buffer-interface", "--buffer-window", "--buffer-timeout", "--buffer-clients",
                "--buffer-rate",
                "--tap ", "--tap-buffer", "--tap-clients", "no authentication"):
        assert opt in r.stdout
    base = [recv, "tcp://127.0.0.1:1", str(tmp_path / "o.pcap")]
    for argv, words in [(["--buffer-window", "0"], "out of range"),
                        (["--buffer-window", "lots"], "'lots' is not a size in MiB"),
                        (["--buffer-interface", "nowhere"], "is not a ZeroMQ endpoint"),
                        (["--tap", "udp://1.2.3.4:5"], "plain TCP"),
                        (["--tap", "host:99999"], "is not a TCP endpoint"),
                        (["--buffer-timeout", "-1"], "out of range")]:
        r = run(*base, *argv, check=False)
        assert r.returncode == 2 and words in r.stderr, (argv, r.stderr)
    env = {**os.environ, "NFLOG_PIPE_BUFFER_WINDOW": "none"}
    r = subprocess.run([*base, "--buffer-interface", "5600"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "NFLOG_PIPE_BUFFER_WINDOW" in r.stderr


@pytest.mark.parametrize("which", ["buffer", "tap"])
def test_receiver_refuses_a_busy_port(tmp_path, which):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        opt = ["--buffer-interface", str(port)] if which == "buffer" else ["--tap", str(port)]
        r = subprocess.run([tool("nflog-pcap-recv"), f"tcp://127.0.0.1:{free_port()}",
                            str(tmp_path / "o"),
                            *opt, "--log-format", "text"], capture_output=True, text=True,
                           timeout=30)
    finally:
        s.close()
    assert r.returncode == 2 and "cannot" in r.stderr and str(port) in r.stderr
