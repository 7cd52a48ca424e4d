"""The live tap on real loopback TCP sockets, driven like the receiver's loop."""

import argparse
import select
import socket
import time

import pytest

from nflog_pipe import pcap, tap
from nflog_pipe.metrics import Counters

AREA = b"".join(pcap.record(1, i, b"\x45" + bytes(99)) for i in range(10))


def pump(t: tap.Tap, seconds: float = 0.2) -> None:
    """What the receiver's loop does for the tap, for a while."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fds = [t.fd] + [fd for fd, _ in t.poll_items()]
        writers = [fd for fd, w in t.poll_items() if w]
        r, w, _ = select.select(fds, writers, [], 0.02)
        for fd in r:
            if fd == t.fd:
                t.accept()
            else:
                t.readable(fd)
        for fd in w:
            t.writable(fd)


def read_all(s: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.fixture
def server():
    t = tap.Tap(("127.0.0.1", 0), Counters(), max_pending=64 << 10, max_clients=3)
    yield t
    t.close()


def connect(t: tap.Tap, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(t.address)
    pump(t, 0.1)
    return s


def test_header_then_whole_frames(server):
    a, b = connect(server), connect(server)
    server.write(memoryview(AREA), 10)
    server.write(memoryview(AREA), 10)
    pump(server)
    for s in (a, b):
        data = read_all(s, 24 + 2 * len(AREA))
        info, recs = pcap.parse(data)
        assert info["linktype"] == 101 and len(recs) == 20
        s.close()
    assert server.c["tap.clients"] == 2
    assert server.c["tap.bytes_out"] == 2 * (24 + 2 * len(AREA))


def test_late_client_starts_at_a_frame_boundary(server):
    a = connect(server)
    server.write(memoryview(AREA), 10)
    b = connect(server)
    server.write(memoryview(AREA[:116]), 1)
    pump(server)
    assert len(pcap.parse(read_all(a, 24 + len(AREA) + 116))[1]) == 11
    assert pcap.parse(read_all(b, 24 + 116))[1][0].data == b"\x45" + bytes(99)
    a.close(), b.close()


def test_slow_client_is_dropped_others_go_on(server):
    slow = connect(server, rcvbuf=4096)
    fast = connect(server)
    got = bytearray()
    fast.setblocking(False)
    for _ in range(3000):  # ~3 MiB, far more than the slow client's buffers
        server.write(memoryview(AREA), 10)
        pump(server, 0)
        try:
            while chunk := fast.recv(1 << 20):
                got += chunk
        except BlockingIOError:
            pass
    pump(server)
    fast.setblocking(True)
    got += read_all(fast, 24 + 3000 * len(AREA) - len(got))
    assert len(pcap.parse(bytes(got))[1]) == 30000
    assert server.c["dropped.tap_slow"] == 1 and len(server.clients) == 1
    slow.close(), fast.close()


def test_client_that_leaves_is_forgotten(server):
    a = connect(server)
    a.close()
    pump(server)
    assert not server.clients and server.c["dropped.tap_slow"] == 0
    server.write(memoryview(AREA), 10)  # nobody to send to


def test_too_many_clients_are_refused(server):
    socks = [connect(server) for _ in range(4)]
    assert len(server.clients) == 3 and server.c["tap.refused"] == 1
    assert socks[3].recv(10) == b""  # closed at once
    for s in socks:
        s.close()


@pytest.mark.parametrize("text,addr", [("5601", ("127.0.0.1", 5601)),
                                       ("tcp://0.0.0.0:5601", ("0.0.0.0", 5601)),
                                       ("tcp://*:5601", ("0.0.0.0", 5601)),
                                       ("[::1]:5601", ("::1", 5601)),
                                       ("ids.example:80", ("ids.example", 80))])
def test_endpoint(text, addr):
    assert tap.tap_endpoint(text) == addr


@pytest.mark.parametrize("text", ["", "tcp://host", "ipc:///x", "host:0", "host:http", "70000"])
def test_bad_endpoint(text):
    with pytest.raises(argparse.ArgumentTypeError):
        tap.tap_endpoint(text)
