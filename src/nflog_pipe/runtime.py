"""What every daemon's main loop shares: signals, timers, health file,
periodic summaries, statsd flushing and the final totals record.

A daemon owns a ``Runtime`` and calls ``tick()`` from its poll loop; the
runtime never touches sockets of the data path.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from . import logs, metrics

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, service: str, args, counters: metrics.Counters | None = None,
                 gauges: metrics.GaugeSource | None = None):
        self.service = service
        self.args = args
        self.counters = counters if counters is not None else metrics.Counters()
        self.gauges = gauges or (lambda: {})
        self.stopping = False
        self.stop_reason = ""
        self.reporter = metrics.make_reporter(args, service)
        self.health = Path(args.health_file) if getattr(args, "health_file", None) else None
        now = time.monotonic()
        self.started = now
        self._next_health = now
        self._next_statsd = now + getattr(args, "statsd_interval", 1.0)
        self._stats_interval = getattr(args, "stats_interval", 0.0)
        self._next_stats = now + self._stats_interval if self._stats_interval else float("inf")
        self._last_stats = (now, dict(self.counters))
        self._reloaders: list[tuple[str, Callable[[], object]]] = []
        self._hup = False

    # -- signals --------------------------------------------------------------
    def install_signals(self) -> None:
        """SIGTERM and SIGINT stop the loop (the totals record follows);
        SIGHUP never stops it: it reloads what ``on_reload`` registered
        (the CURVE allow-list), at the loop's next ``tick``."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)

    def on_reload(self, what: str, fn: Callable[[], object]) -> None:
        self._reloaders.append((what, fn))

    def _on_signal(self, signum, frame) -> None:
        self.stop(signal.Signals(signum).name)

    def _on_hangup(self, signum, frame) -> None:
        self._hup = True  # handled in tick(): nothing heavy in a signal handler

    def reload(self) -> None:
        self._hup = False
        if not self._reloaders:
            log.info("SIGHUP: nothing to reload, ignored", extra={"event": "sighup",
                                                                  "reloaded": []})
            return
        done = []
        for what, fn in self._reloaders:
            try:
                fn()
            except Exception as e:  # a bad file must not stop the daemon
                log.error("SIGHUP: cannot reload %s, keeping the previous one: %s", what, e,
                          extra={"event": "reload_failed", "what": what})
            else:
                done.append(what)
        log.info("SIGHUP: reloaded %s", ", ".join(done) or "nothing",
                 extra={"event": "sighup", "reloaded": done})

    def stop(self, reason: str) -> None:
        self.stopping = True
        self.stop_reason = reason

    # -- timers ---------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._hup:
            self.reload()
        if self.health and now >= self._next_health:
            self._touch_health()
            self._next_health = now + 1.0
        if self.reporter and now >= self._next_statsd:
            self.counters.update(self.reporter.errors())
            self.reporter.flush(self.counters, self.gauges())
            self._next_statsd = now + self.args.statsd_interval
        if now >= self._next_stats:
            self._summary(now)
            self._next_stats = now + self._stats_interval

    def timeout(self, default: float = 1.0) -> float:
        """Seconds until the next timer is due (for poll)."""
        now = time.monotonic()
        due = min(self._next_stats, self._next_statsd if self.reporter else float("inf"),
                  self._next_health + (0 if self.health else float("inf")))
        return max(0.0, min(default, due - now))

    def _touch_health(self) -> None:
        try:
            self.health.touch()
        except OSError as e:
            log.warning("cannot touch health file %s: %s", self.health, e)

    def _summary(self, now: float) -> None:
        then, before = self._last_stats
        span = max(now - then, 1e-9)
        rates = {f"{k}_per_s": round((v - before.get(k, 0)) / span, 1)
                 for k, v in self.counters.items() if k in ("packets_in", "packets_out",
                                                            "bytes_in", "bytes_out")}
        log.info("stats", extra={"event": "stats", "counters": dict(self.counters),
                                 "gauges": self.gauges(), **rates})
        self._last_stats = (now, dict(self.counters))

    # -- exit -----------------------------------------------------------------
    def finish(self, **fields) -> None:
        if self.reporter:
            self.counters.update(self.reporter.errors())
            self.reporter.flush(self.counters, self.gauges())
            self.reporter.close(timeout=1.0)  # a dead statsd never delays the exit
        log.info("totals", extra={"event": "totals", "reason": self.stop_reason or "exit",
                                  "uptime_s": round(time.monotonic() - self.started, 3),
                                  "counters": dict(self.counters), **fields})
        if self.health:
            try:
                self.health.unlink()
            except OSError:
                pass


def setup_logging(service: str, args) -> None:
    logs.setup(service, args.log_format, args.debug)


def ignore_hangup() -> None:
    """A daemon is never stopped by SIGHUP, not even while it starts
    (``Runtime.install_signals`` then makes it a reload request)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def fatal(message: str, *args, code: int = 2) -> int:
    """A start-up error: one clear record, a non-zero exit status."""
    log.error(message, *args, extra={"event": "fatal"})
    return code

