"""Logging set-up (one place) and rate-limited warnings.

Records are JSON (python-json-logger) or text; every record carries the
service name, structured fields go in ``extra=``.
"""

from __future__ import annotations

import logging
import sys
import time

try:  # python-json-logger >= 3.1
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # older releases (Debian bookworm ships 2.0)
    from pythonjsonlogger.jsonlogger import JsonFormatter

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(service)s: %(message)s"
_JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(service)s %(message)s"
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True


class _TextFormatter(logging.Formatter):
    """Text records with the structured fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in record.__dict__.items()
                  if k not in _RESERVED and k != "service" and not k.startswith("_")}
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


def setup(service: str, log_format: str = "auto", debug: bool = False, stream=None) -> None:
    stream = stream or sys.stderr
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ServiceFilter(service))
    if log_format == "json":
        handler.setFormatter(JsonFormatter(_JSON_FORMAT, rename_fields={"levelname": "level",
                                                                        "asctime": "time"}))
    else:
        handler.setFormatter(_TextFormatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


class RateLimited:
    """Log a kind of event at most once per ``interval`` seconds.

    The first event of a kind is logged at once; later ones within the
    interval are counted and the count is reported with the next record.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, clock=time.monotonic):
        self.log = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args, **extra) -> bool:
        return self._log(logging.WARNING, kind, msg, *args, **extra)

    def info(self, kind: str, msg: str, *args, **extra) -> bool:
        return self._log(logging.INFO, kind, msg, *args, **extra)

    def _log(self, level: int, kind: str, msg: str, *args, **extra) -> bool:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        self.log.log(level, msg, *args, extra={"kind": kind, "suppressed": suppressed, **extra})
        return True
