"""Counters kept in memory, sent to statsd from a thread of their own.

Names follow one scheme for every daemon (``docs/metrics.md``):
``<prefix><service>.packets_in`` ... ``<prefix><service>.dropped.<reason>``.

The daemon's loop never waits for statsd: ``StatsdReporter.flush`` only hands the
latest snapshot of the counters to the reporter's thread, which resolves the server's
name (at start, then again with backoff after a failure and every few minutes),
sends, and counts what went wrong. A server that is down, unreachable, unresolvable
or answered by a silent resolver costs the data path nothing. Counters are totals, so
a snapshot that could not be sent is not lost: the next send carries its delta.
"""

from __future__ import annotations

# getaddrinfo() encodes host names with the idna codec, imported on first
# use: the statsd client is made after nflog-zmq-send --user dropped its
# privileges, when the interpreter's library may no longer be readable
import encodings.idna  # noqa: F401
import logging
import socket
import threading
import time
from collections.abc import Callable

import statsd

from .logs import RateLimited

log = logging.getLogger(__name__)

#: seconds between two resolutions of the server's name while it works (DNS changes)
RERESOLVE = 300.0
#: backoff after a failed resolution: first, cap
BACKOFF = (1.0, 60.0)


class Counters(dict):
    """Monotonic counters by name (``packets_in``, ``dropped.queue_full``...)."""

    def add(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


class _Client(statsd.StatsClient):
    """statsd's client, except that a failed send raises instead of passing silently,
    so that it is counted (``statsd.send_errors``)."""

    def _send(self, data: str) -> None:
        self._sock.sendto(data.encode("ascii"), self._addr)


class StatsdReporter:
    """Sends the daemon's counters to statsd from its own thread.

    ``flush`` (the loop, at every --statsd-interval) stores a snapshot and returns.
    The thread sends counters as increments (the delta since the last snapshot that
    was really sent) or as gauges (running totals, ``--statsd-type gauge``), always
    at rate 1: aggregation happens here, so there is nothing to sample and nothing
    a statsd server could scale wrongly. ``send_errors`` and ``resolve_errors`` are
    read by the loop into its counters (``statsd.send_errors``, ``statsd.resolve_errors``).
    """

    def __init__(self, address: tuple[str, int], prefix: str, service: str,
                 kind: str = "counter", resolve: Callable = socket.getaddrinfo):
        host = socket.gethostname().split(".")[0]
        self.prefix = prefix.replace("{host}", host.replace(".", "_")) + service
        self.address = address
        self.kind = kind
        self._resolve = resolve
        self.client: _Client | None = None
        self.sent: dict[str, int] = {}
        self.send_errors = 0
        self.resolve_errors = 0
        self.sends = 0
        self._pending: tuple[dict[str, int], dict[str, float]] | None = None
        self._wake = threading.Event()
        self._closing = False
        self._next_resolve = 0.0
        self._backoff = BACKOFF[0]
        self._warn = RateLimited(log, 60.0)
        self._thread = threading.Thread(target=self._run, name="statsd", daemon=True)
        self._thread.start()

    # -- the loop's side: never blocks ---------------------------------------------------
    def flush(self, counters: dict[str, int], gauges: dict[str, float] | None = None) -> None:
        self._pending = (dict(counters), dict(gauges or {}))
        self._wake.set()

    def close(self, timeout: float = 1.0) -> None:
        """Send the last snapshot if the server can take it within ``timeout`` seconds,
        then stop; a thread stuck in a resolver is left behind (daemon thread)."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def errors(self) -> dict[str, int]:
        return {"statsd.send_errors": self.send_errors, "statsd.resolve_errors": self.resolve_errors}

    # -- the reporter's thread -------------------------------------------------------------
    def _run(self) -> None:
        self._client()  # resolve at start, before the first snapshot is due
        unsent = None
        while True:
            # a snapshot held back by a failed resolution is retried when the backoff ends
            wait = None if unsent is None else max(0.0, self._next_resolve - time.monotonic())
            self._wake.wait(wait)
            self._wake.clear()
            if self._pending is not None:
                unsent, self._pending = self._pending, None
            if unsent is not None and self._send(*unsent):
                unsent = None
            if self._closing:
                return

    def _client(self) -> _Client | None:
        now = time.monotonic()
        if self.client is not None and now < self._next_resolve:
            return self.client
        if self.client is None and now < self._next_resolve:
            return None  # backing off after a failure
        host, port = self.address
        try:
            family, _, _, _, addr = self._resolve(host, port, 0, socket.SOCK_DGRAM)[0]
            # a numeric address: statsd's own getaddrinfo returns at once
            client = _Client(addr[0], addr[1], prefix=self.prefix,
                             ipv6=family == socket.AF_INET6)
        except (OSError, IndexError, UnicodeError) as e:
            self.resolve_errors += 1
            self._next_resolve = now + self._backoff
            self._warn.warning("statsd-resolve", "statsd server %s:%d cannot be resolved (%s); "
                               "trying again in %.0f s", host, port, e, self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF[1])
            return self.client  # keep using the last address that worked, if any
        if self.client is not None:
            self.client.close()
        self.client = client
        self._backoff = BACKOFF[0]
        self._next_resolve = now + RERESOLVE
        return client

    def _send(self, counters: dict[str, int], gauges: dict[str, float]) -> bool:
        """Send one snapshot; False when there is no server address yet."""
        client = self._client()
        if client is None:
            return False
        # one datagram per metric (a dozen a second, from this thread): a datagram that
        # fails loses nothing, its delta stays due and goes with the next snapshot
        failed: OSError | None = None
        for name, value in counters.items():
            try:
                if self.kind == "gauge":
                    client.gauge(name, value)
                else:
                    delta = value - self.sent.get(name, 0)
                    if not delta:
                        continue
                    if self.kind == "counter":
                        client.incr(name, delta)
                    elif self.kind == "g":  # the original's -t g: increments, typed as gauges
                        client.gauge(name, delta)
                    else:  # "ms", the original's -t ms: increments, typed as timers
                        client.timing(name, delta)
                self.sent[name] = value
            except OSError as e:
                self.send_errors += 1
                failed = e
        for name, value in gauges.items():
            try:
                client.gauge(name, value)
            except OSError as e:
                self.send_errors += 1
                failed = e
        if failed is not None:
            self._warn.warning("statsd-send", "statsd send to %s:%d failed: %s",
                               *self.address, failed)
        else:
            self.sends += 1
        return True


def make_reporter(args, service: str) -> StatsdReporter | None:
    if not args.statsd:
        return None
    return StatsdReporter(args.statsd, args.statsd_metrics_prefix, service, args.statsd_type)


GaugeSource = Callable[[], dict[str, float]]
