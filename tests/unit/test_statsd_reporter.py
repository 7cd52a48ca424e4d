"""The statsd reporter: the loop hands over snapshots and never waits; the reporter's
thread resolves, sends at rate 1, counts failures and loses no count.

Real UDP sockets on loopback (IPv4 and IPv6) receive what it sends; only the resolver
is replaced where the test needs one that never answers or fails."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from nflog_pipe import metrics


class Sink:
    """A UDP statsd stand-in on loopback: sums counter deltas, keeps the last gauges."""

    def __init__(self, family=socket.AF_INET, addr="127.0.0.1"):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((addr, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []

    def take(self, until, timeout=10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.lines += self.sock.recv(65536).decode().splitlines()
            except TimeoutError:
                pass
            v = self.values()
            if until(v):
                return v
        raise AssertionError(f"statsd sink got {self.lines[-20:]}")

    def values(self) -> dict:
        out: dict = {}
        for line in self.lines:
            name, _, rest = line.partition(":")
            value, kind = rest.split("|")[:2]
            assert "@" not in rest, f"a sample rate was announced: {line}"
            if kind == "c":
                out[name] = out.get(name, 0) + int(value)
            else:
                out[name] = float(value)
        return out


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.sock.close()


def reporter(port, host="127.0.0.1", **kw) -> metrics.StatsdReporter:
    return metrics.StatsdReporter((host, port), "t.", "send", **kw)


def test_deltas_add_up_to_the_totals(sink):
    r = reporter(sink.port)
    for total in (5, 5, 12, 40):
        r.flush({"packets_in": total, "dropped.hwm": total // 4}, {"queue": 3.5})
        sink.take(lambda v, t=total: v.get("t.send.packets_in") == t)
    v = sink.take(lambda v: v.get("t.send.dropped.hwm") == 10)
    assert v["t.send.queue"] == 3.5
    r.close()
    assert r.errors() == {"statsd.send_errors": 0, "statsd.resolve_errors": 0}


def test_gauge_type_sends_running_totals(sink):
    r = reporter(sink.port, kind="gauge")
    r.flush({"packets_in": 7})
    r.flush({"packets_in": 9})
    assert sink.take(lambda v: v.get("t.send.packets_in") == 9)
    r.close()


def test_ipv6_server():
    s = Sink(socket.AF_INET6, "::1")
    r = reporter(s.port, host="::1")
    r.flush({"packets_in": 3})
    assert s.take(lambda v: v.get("t.send.packets_in") == 3)
    r.close()


def test_a_silent_resolver_never_holds_the_loop(sink):
    """flush() returns while the resolver hangs; once it answers, the totals arrive whole."""
    release = threading.Event()
    calls = []

    def silent(host, port, *a):
        calls.append(host)
        release.wait(30)
        return socket.getaddrinfo("127.0.0.1", port, *a)

    r = reporter(sink.port, host="statsd.example.invalid", resolve=silent)
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:   # the thread resolves at start
        time.sleep(0.01)
    for i in range(1, 1001):   # a thousand flushes while the resolver is stuck
        r.flush({"packets_in": i})
    assert calls == ["statsd.example.invalid"]   # the thread is in it, the loop is not
    release.set()
    r.flush({"packets_in": 1000})
    assert sink.take(lambda v: v.get("t.send.packets_in") == 1000)["t.send.packets_in"] == 1000
    r.close()


def test_failed_resolution_backs_off_and_loses_nothing(sink, monkeypatch):
    monkeypatch.setattr(metrics, "BACKOFF", (0.05, 0.2))
    answers = [socket.gaierror(-2, "Name or service not known")] * 3

    def flaky(host, port, *a):
        if answers:
            raise answers.pop()
        return socket.getaddrinfo("127.0.0.1", port, *a)

    r = reporter(sink.port, host="statsd.example", resolve=flaky)
    deadline = time.monotonic() + 10
    total = 0
    while answers and time.monotonic() < deadline:
        total += 10
        r.flush({"packets_in": total})
        time.sleep(0.02)
    assert not answers, "the reporter stopped trying to resolve"
    r.flush({"packets_in": total})
    assert sink.take(lambda v: v.get("t.send.packets_in") == total)
    assert r.resolve_errors == 3
    r.close()


def test_send_errors_are_counted_and_the_delta_resent(sink, monkeypatch):
    fail = {"n": 2}
    real = metrics._Client._send

    def flaky(self, data):
        if fail["n"]:
            fail["n"] -= 1
            raise OSError(111, "Connection refused")
        real(self, data)

    monkeypatch.setattr(metrics._Client, "_send", flaky)
    r = reporter(sink.port)
    total = 0
    deadline = time.monotonic() + 10
    while fail["n"] and time.monotonic() < deadline:   # snapshots while sends fail
        total += 5
        r.flush({"packets_in": total})
        time.sleep(0.01)
    total += 1
    r.flush({"packets_in": total})
    assert sink.take(lambda v: v.get("t.send.packets_in") == total)["t.send.packets_in"] == total
    r.close()
    assert r.send_errors == 2


def test_close_is_bounded_with_a_dead_resolver():
    """At exit, a resolver that never answers costs at most close()'s timeout."""
    r = reporter(9, host="statsd.example.invalid",
                 resolve=lambda *a: threading.Event().wait(60) or [])
    r.flush({"packets_in": 1})
    t0 = time.monotonic()
    r.close(timeout=0.2)
    assert time.monotonic() - t0 < 30   # generous: only "not the resolver's 60 s"
