"""nflog-pcap-recv as a process, fed over real ZeroMQ sockets on loopback."""

import subprocess

import pytest
import zmq
from lab import (
    PKT,  # noqa: E402  (the sample packet: tools/lib/testkit.py)
    Daemon,
    free_port,
    record_area,
    tool,
    wait_until,
)

from nflog_pipe import frame, pcap


@pytest.fixture
def push():
    ctx = zmq.Context()
    socks = []

    def make(endpoint):
        s = ctx.socket(zmq.PUSH)
        s.linger = 2000
        s.connect(endpoint)
        socks.append(s)
        return s
    yield make
    for s in socks:
        s.close(linger=0)
    ctx.term()


def start(tmp_path, *extra):
    port = free_port()
    out = tmp_path / "out.pcap"
    d = Daemon([tool("nflog-pcap-recv"), f"tcp://127.0.0.1:{port}", str(out), "--log-format",
                "json", "--stats-interval", "0.2", *extra], tmp_path / "recv.log")
    d.wait_log("start")
    return d, f"tcp://127.0.0.1:{port}", out


area = record_area


def last_counters(d):
    recs = [r for r in d.records() if r.get("event") in ("stats", "totals")]
    return recs[-1]["counters"] if recs else {}


def test_transit_gap_counted_per_sender(tmp_path, push):
    d, ep, out = start(tmp_path)
    s = push(ep)
    s.send(frame.encode("a", 1, 0, 0, 2, area(2)))
    s.send(frame.encode("a", 1, 1, 2, 2, area(2)))
    s.send(frame.encode("a", 1, 3, 9, 1, area(1)))     # packets 4..8 lost on the way
    s.send(frame.encode("b", 5, 0, 0, 1, area(1)))     # another sender
    wait_until(lambda: last_counters(d).get("packets_out") == 6, what="6 records")
    totals = d.stop()
    c = totals["counters"]
    assert c["dropped.transit"] == 5 and c["packets_in"] == 11 and c["packets_out"] == 6
    assert totals["senders"]["a/00000001"] == {"packets": 5, "transit_lost": 5}
    assert len(pcap.parse(out.read_bytes())[1]) == 6


def test_oversized_message_never_allocated(tmp_path, push):
    """ZMQ_MAXMSGSIZE: a peer sending more than the frame limit is cut off by
    ZeroMQ before the receiver allocates it; the receiver keeps serving."""
    d, ep, out = start(tmp_path)
    s = push(ep)
    s.send(b"\0" * (frame.MAX_FRAME + 1))
    s2 = push(ep)
    s2.send(frame.encode("ok", 1, 0, 0, 1, area(1)))
    wait_until(lambda: last_counters(d).get("packets_out") == 1, what="good frame")
    assert d.stop()["counters"]["frames_dropped.malformed"] == 0


def test_stdout_output(tmp_path, push):
    port = free_port()
    p = subprocess.Popen([tool("nflog-pcap-recv"), f"tcp://127.0.0.1:{port}", "-",
                          "--log-format", "json"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        s = push(f"tcp://127.0.0.1:{port}")
        s.send(frame.encode("a", 1, 0, 0, 3, area(3)))
        head = p.stdout.read(24 + 3 * (16 + len(PKT)))
    finally:
        p.terminate()
        p.wait(10)
    assert len(pcap.parse(head)[1]) == 3 and p.returncode == 0


@pytest.mark.parametrize("cmd", ["nflog-pcap-recv", "nflog-zmq-send"])
def test_help_and_bad_option(cmd):
    h = subprocess.run([tool(cmd), "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "NFLOG_PIPE_" in h.stdout and "default" in h.stdout
    b = subprocess.run([tool(cmd), "--no-such-option"], capture_output=True, text=True)
    assert b.returncode == 2 and "unrecognized arguments: --no-such-option" in b.stderr


def test_receiver_bad_endpoint_and_bad_output(tmp_path):
    r = subprocess.run([tool("nflog-pcap-recv"), "tcp://256.0.0.1:1", str(tmp_path / "x"),
                        "--log-format", "text"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "cannot bind tcp://256.0.0.1:1" in r.stderr
    r = subprocess.run([tool("nflog-pcap-recv"), "tcp://127.0.0.1:9", "/nonexistent/dir/x",
                        "--log-format", "text"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "cannot use output /nonexistent/dir/x" in r.stderr


def test_json_logs_carry_service_and_totals_on_sigterm(tmp_path):
    d, ep, out = start(tmp_path)
    totals = d.stop()
    assert totals["service"] == "recv" and totals["level"] == "INFO"
    assert totals["reason"] == "SIGTERM" and "packets_in" in totals["counters"]
    assert all(not r.get("unparsed") for r in d.records())


def test_rejected_frame_counted_once_not_again_as_transit(tmp_path, push):
    """A frame whose header is intact but whose records are bad: its packets
    count as malformed, and the next frame of that sender is no transit gap."""
    d, ep, out = start(tmp_path)
    s = push(ep)
    s.send(frame.encode("a", 1, 0, 0, 2, area(2)))
    bad = bytearray(frame.encode("a", 1, 1, 2, 3, area(3)))
    bad[frame.HEADER_SIZE + 1 + 8] = 0xFF  # first record's caplen beyond the area
    s.send(bytes(bad))
    s.send(frame.encode("a", 1, 2, 5, 1, area(1)))
    wait_until(lambda: last_counters(d).get("packets_out") == 3, what="3 records")
    c = d.stop()["counters"]
    assert c["dropped.malformed"] == 3 and c["frames_dropped.malformed"] == 1
    assert c["dropped.transit"] == 0
    assert c["packets_in"] == 6 == c["packets_out"] + c["dropped.malformed"]


def test_health_file_touched_while_alive_and_removed_at_exit(tmp_path):
    health = tmp_path / "alive"
    d, ep, out = start(tmp_path, "--health-file", str(health))
    wait_until(health.exists, what="health file")
    first = health.stat().st_mtime
    wait_until(lambda: health.stat().st_mtime > first, timeout=5, what="health file touched again")
    d.stop()
    assert not health.exists()


def test_a_flood_of_bad_frames_does_not_flood_the_log(tmp_path, push):
    d, ep, out = start(tmp_path)
    s = push(ep)
    for i in range(2000):
        s.send(b"garbage %d" % i)
    s.send(frame.encode("ok", 1, 0, 0, 1, area(1)))
    wait_until(lambda: last_counters(d).get("packets_out") == 1, what="the good frame")
    c = d.stop()["counters"]
    assert c["frames_dropped.malformed"] == 2000
    warnings = [r for r in d.records() if r.get("event") == "malformed_frame"]
    assert 1 <= len(warnings) <= 3  # once per kind per 10 s, with a count of the rest
