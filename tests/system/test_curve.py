"""CURVE on every network socket, checked on the wire and at the doors."""

import subprocess
import time

import pytest
from conftest import payload_file
from lab import FifoReader, send_udp, tool, wait_until
from nflogref import udp_payload

from nflog_pipe import pcap, security

MARKER = b"PLAINTEXT-MARKER-7f3a"


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    for n in ("receiver", "gw", "stranger", "analyst"):
        security.write_keypair(str(d), n)
    allow = tmp_path / "allow"
    allow.mkdir()
    for n in ("gw", "analyst"):
        (allow / f"{n}.key").write_bytes((d / f"{n}.key").read_bytes())
    return d, allow


def _sniffer(pipe, tmp_path):
    """tcpdump on the ids end of the veth, writing the ZeroMQ TCP stream."""
    sniff = tmp_path / "wire.pcap"
    tcpd = pipe.lab.popen(pipe.ids.prefix() + ["tcpdump", "-i", pipe.link.dev_b, "--immediate-mode",
                                              "-U", "-w", str(sniff), "tcp", "port", "5555"],
                          stderr=open(tmp_path / "tcpdump.err", "w"))
    wait_until(lambda: b"listening" in (tmp_path / "tcpdump.err").read_bytes(), what="tcpdump")
    return tcpd, sniff


def _count(reader):
    try:
        return len(pcap.parse(bytes(reader.data))[1])
    except ValueError:
        return 0


def test_curve_pipe_is_encrypted_and_authenticated(pipe, keys, tmp_path):
    d, allow = keys
    pipe.nflog_rule(21, 7500)
    tcpd, sniff = _sniffer(pipe, tmp_path)
    reader = FifoReader(pipe.fifo)
    pipe.start_receiver("--curve-secret-key", str(d / "receiver.key_secret"),
                        "--curve-allow", str(allow), "--stats-interval", "0.2",
                        "--buffer-interface", "tcp://0.0.0.0:5556")
    reader.opened.wait(10)
    good = pipe.start_sender("21", "--curve-secret-key", str(d / "gw.key_secret"),
                             "--curve-server-key", str(d / "receiver.key"))
    assert good.wait_log("start")["curve"] is True
    payloads = [MARKER + bytes([i]) * i for i in range(200)]
    send_udp(pipe.gw, pipe.link.b4, 7500, payload_file(tmp_path / "p", payloads))
    wait_until(lambda: _count(reader) == 200, what="200 records over CURVE")

    # a sender whose key is not allowed: nothing gets through, refusal counted
    good.stop()
    bad = pipe.start_sender("21", "--curve-secret-key", str(d / "stranger.key_secret"),
                            "--curve-server-key", str(d / "receiver.key"))
    send_udp(pipe.gw, pipe.link.b4, 7500, payload_file(tmp_path / "q", [MARKER + b"bad"] * 20))
    wait_until(lambda: _stat(pipe, "auth_refused") >= 1, what="refusal counted")
    time.sleep(0.5)
    assert _count(reader) == 200
    bad.stop()

    # a query client: with an allowed key it gets the buffer, without it nothing
    out = tmp_path / "q.pcap"
    ok = subprocess.run(pipe.ids.prefix() + [tool("nflog-pcap-query"), "tcp://127.0.0.1:5556",
                                             "-o", str(out), "--curve-secret-key",
                                             str(d / "analyst.key_secret"), "--curve-server-key",
                                             str(d / "receiver.key")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert len(pcap.parse(out.read_bytes())[1]) == 200
    refused = subprocess.run(pipe.ids.prefix() + [tool("nflog-pcap-query"), "tcp://127.0.0.1:5556",
                                                  "-o", str(tmp_path / "no.pcap"), "--timeout", "3",
                                                  "--curve-secret-key",
                                                  str(d / "stranger.key_secret"),
                                                  "--curve-server-key", str(d / "receiver.key")],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "no answer" in refused.stderr
    assert not (tmp_path / "no.pcap").exists() or (tmp_path / "no.pcap").stat().st_size == 0

    totals = pipe.receiver.stop()
    tcpd.terminate()
    tcpd.wait(10)
    recs = pcap.parse(reader.close())[1]
    assert [udp_payload(r.data) for r in recs] == payloads
    assert totals["counters"]["auth_refused"] >= 2
    wire = sniff.read_bytes()
    assert len(wire) > 200 * 100  # the traffic was captured...
    assert MARKER not in wire      # ...and none of it in plaintext


def _stat(pipe, name):
    recs = [r for r in pipe.receiver.records() if r.get("event") in ("stats", "totals")]
    return recs[-1]["counters"].get(name, 0) if recs else 0


def test_plaintext_is_visible_without_keys(pipe, tmp_path):
    """The same sniffer sees the marker when CURVE is off: the check above
    can fail."""
    pipe.nflog_rule(22, 7501)
    tcpd, sniff = _sniffer(pipe, tmp_path)
    pipe.start_receiver()
    reader = pipe.reader()
    s = pipe.start_sender("22")
    assert any(r.get("event") == "plaintext" for r in s.records())
    send_udp(pipe.gw, pipe.link.b4, 7501, payload_file(tmp_path / "p", [MARKER] * 5))
    wait_until(lambda: _count(reader) == 5, what="5 records")
    s.stop()
    pipe.receiver.stop()
    tcpd.terminate()
    tcpd.wait(10)
    assert MARKER in sniff.read_bytes()


def test_unauthenticated_buffer_interface_on_the_network_is_refused(lab, tmp_path):
    ids = lab.netns("ids")
    r = subprocess.run(ids.prefix() + [tool("nflog-pcap-recv"), "tcp://127.0.0.1:5555",
                                       str(tmp_path / "o.pcap"), "--buffer-interface",
                                       "tcp://0.0.0.0:5556", "--log-format", "text"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "is not loopback and has no CURVE keys" in r.stderr
    r = subprocess.run(ids.prefix() + [tool("nflog-pcap-recv"), "tcp://127.0.0.1:5555",
                                       str(tmp_path / "o.pcap"), "--tap", "0.0.0.0:5557",
                                       "--log-format", "text"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "PCAP-over-IP clients cannot authenticate" in r.stderr
    forced = lab.daemon(ids, "nflog-pcap-recv", "tcp://127.0.0.1:5555", str(tmp_path / "o2.pcap"),
                        "--buffer-interface", "tcp://0.0.0.0:5556", "--insecure-bind")
    forced.wait_log("start")
    forced.stop()


def test_half_configured_keys_are_a_start_up_error(lab, keys, tmp_path):
    d, allow = keys
    ids = lab.netns("ids")
    r = subprocess.run(ids.prefix() + [tool("nflog-pcap-recv"), "tcp://127.0.0.1:5555",
                                       str(tmp_path / "o.pcap"), "--curve-secret-key",
                                       str(d / "receiver.key_secret"), "--log-format", "text"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "without --curve-allow" in r.stderr
    r = subprocess.run(ids.prefix() + [tool("nflog-zmq-compress"), "tcp://127.0.0.1:5600",
                                       "tcp://127.0.0.1:5555", "--curve-allow", str(allow),
                                       "--log-format", "text"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "need --curve-secret-key" in r.stderr
