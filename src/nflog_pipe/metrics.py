"""Counters kept in memory, flushed to statsd on an interval, never per packet.

Names follow one scheme for every daemon (``docs/metrics.md``):
``<prefix><service>.packets_in`` ... ``<prefix><service>.dropped.<reason>``.
A statsd server that is down, unreachable or unresolvable never disturbs the
data path: errors are counted and logged (rate-limited), nothing is raised.
"""

from __future__ import annotations

# getaddrinfo() encodes host names with the idna codec, imported on first
# use: the statsd client is made after nflog-zmq-send --user dropped its
# privileges, when the interpreter's library may no longer be readable
import encodings.idna  # noqa: F401
import logging
import socket
from collections.abc import Callable

import statsd

from .logs import RateLimited

log = logging.getLogger(__name__)


class Counters(dict):
    """Monotonic counters by name (``packets_in``, ``dropped.queue_full``...)."""

    def add(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


class StatsdReporter:
    def __init__(self, address: tuple[str, int], prefix: str, service: str,
                 sampling: float = 1.0, kind: str = "counter"):
        host = socket.gethostname().split(".")[0]
        self.prefix = prefix.replace("{host}", host.replace(".", "_")) + service
        self.address = address
        self.sampling = sampling
        self.kind = kind
        self.client: statsd.StatsClient | None = None
        self.sent: dict[str, int] = {}
        self.errors = 0
        self._warn = RateLimited(log, 60.0)

    def _client(self) -> statsd.StatsClient | None:
        if self.client is None:
            host, port = self.address
            try:
                try:  # an IPv6 literal, or a name with only IPv6 addresses
                    self.client = statsd.StatsClient(host, port, prefix=self.prefix,
                                                     ipv6=":" in host)
                except socket.gaierror:
                    if ":" in host:
                        raise
                    self.client = statsd.StatsClient(host, port, prefix=self.prefix, ipv6=True)
            except (OSError, UnicodeError, LookupError) as e:  # name resolution, no route...
                self.errors += 1
                self._warn.warning("statsd", "statsd server %s:%d unusable: %s", *self.address, e)
        return self.client

    def flush(self, counters: dict[str, int], gauges: dict[str, float] | None = None) -> None:
        client = self._client()
        if client is None:
            return
        try:
            pipe = client.pipeline()
            for name, value in counters.items():
                if self.kind == "gauge":
                    pipe.gauge(name, value)
                    continue
                delta = value - self.sent.get(name, 0)
                if not delta:
                    continue
                if self.kind == "counter":
                    pipe.incr(name, delta, rate=self.sampling)
                elif self.kind == "g":  # the original's -t g: increments, typed as gauges
                    pipe.gauge(name, delta)
                else:  # "ms", the original's -t ms: increments, typed as timers
                    pipe.timing(name, delta)
            for name, value in (gauges or {}).items():
                pipe.gauge(name, value)
            pipe.send()
            self.sent = dict(counters)
        except OSError as e:
            self.errors += 1
            self._warn.warning("statsd", "statsd send to %s:%d failed: %s", *self.address, e)


def make_reporter(args, service: str) -> StatsdReporter | None:
    if not args.statsd:
        return None
    return StatsdReporter(args.statsd, args.statsd_metrics_prefix, service,
                          args.statsd_sampling, args.statsd_type)


GaugeSource = Callable[[], dict[str, float]]
