"""nflog-pcap-query: fetch a receiver's buffered traffic as a pcap file.

Writes the traffic kept by ``nflog-pcap-recv --buffer-window`` to stdout or
to ``-o FILE``.  By default the whole buffer; ``--last``, ``--since`` /
``--until``, ``--max-bytes`` and ``--filter`` (tcpdump's BPF syntax) narrow
it down.  The filter is checked and compiled by the receiver: this command
needs neither libpcap nor the native modules.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
import time
from datetime import datetime

import zmq

from nflog_pipe import config, pcap, runtime, security
from nflog_pipe.config import Option
from nflog_pipe.errors import PipeError

from .protocol import (
    CMD_CANCEL,
    CMD_MORE,
    CMD_QUERY,
    MAX_DURATION,
    MAX_EXPRESSION,
    MAX_TIME,
    MSG_DATA,
    MSG_END,
    MSG_ERROR,
    MSG_HEADER,
    PIECE,
    Request,
    buffer_endpoint,
)

log = logging.getLogger("nflog_pipe.query")
SERVICE = "query"


_DURATION = re.compile(r"^\s*([0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNIT = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*([0-9]{1,16})\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
#: largest --max-bytes (1 TiB): far above any --buffer-window
MAX_SIZE = 1 << 40


def duration(text: str) -> float:
    """``30s``, ``5m``, ``2h``, ``1d``, ``250ms`` or plain seconds."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 5m, 2h, 1.5)")
    v = float(m.group(1)) * _DURATION_UNIT[m.group(2)]
    if not 0 < v <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration above 0 and up to 10 years")
    return v


def timestamp(text: str) -> float:
    """Unix seconds (``1714557600.5``) or ISO 8601 (``2024-05-01T12:00:00``,
    ``2024-05-01 12:00:00.250+02:00``, ``...Z``); without a zone: local time."""
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        try:
            d = datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a time (Unix seconds or ISO 8601, e.g. "
                "2024-05-01T12:00:00 or 2024-05-01T12:00:00+02:00)") from None
        v = d.timestamp()  # naive: local time
    if not math.isfinite(v) or not 0 <= v < MAX_TIME:
        raise argparse.ArgumentTypeError(f"{text!r} is outside the pcap time range (1970-2106)")
    return v


def size(text: str) -> int:
    """Bytes, or with a binary suffix: ``64K``, ``10M``, ``1G`` (KiB, MiB...)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1000000, 64K, 10M)")
    unit = (m.group(2) or "b")[0].lower()
    v = int(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]
    if v < len(pcap.GLOBAL_HEADER_BYTES):
        raise argparse.ArgumentTypeError(f"{text!r}: a pcap file needs at least 24 bytes")
    if v > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r}: at most 1T")
    return v


OPTIONS = [
    Option("endpoint", type=buffer_endpoint, metavar="ENDPOINT", required=True,
           help="the receiver's --buffer-interface (ZeroMQ endpoint, or a port on 127.0.0.1)"),
    Option("output", ("-o", "--output"), type=config.path, default="-", metavar="FILE",
           help="write the pcap to FILE (written whole, then renamed into place); - for stdout"),
    Option("last", ("--last",), type=duration, metavar="DURATION",
           help="only packets of the last DURATION (30s, 5m, 2h...) by the receiver's clock"),
    Option("since", ("--since",), type=timestamp, metavar="TIME",
           help="only packets at or after TIME (Unix seconds or ISO 8601; local time without "
           "a zone)"),
    Option("until", ("--until",), type=timestamp, metavar="TIME",
           help="only packets before TIME"),
    Option("max_bytes", ("--max-bytes",), type=size, metavar="SIZE",
           help="at most SIZE bytes of pcap (64K, 10M...): the newest packets that fit"),
    Option("filter", ("-f", "--filter"), type=config.text(MAX_EXPRESSION, "filter"),
           metavar="EXPRESSION",
           help="only packets matching this BPF filter (tcpdump syntax, e.g. 'udp and port "
           "5353'), compiled by libpcap on the receiver"),
    Option("timeout", ("--timeout",), type=config.seconds(86400.0), default=10.0, metavar="S",
           help="give up when the receiver does not answer for S seconds"),
    Option("wait", ("--wait",), type=config.seconds(86400.0, zero=True), default=0.0,
           metavar="S",
           help="when the receiver answers busy (too many queries, or a running query "
           "still holds traffic evicted from the window), ask again every second for up "
           "to S seconds (0: fail at once)"),
    Option("quiet", ("-q", "--quiet"), flag=True, default=False,
           help="no progress line on the terminal (with -o FILE, stderr a terminal)"),
] + security.CLIENT_OPTIONS + [o for o in config.LOG_OPTIONS if o.name in ("debug", "log_format")]


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


class Progress:
    """The progress line of ``-o FILE`` on a terminal: bytes received of
    the total the response header announced, the rate, the time left.  No
    I/O here: ``update`` returns the line to show (at most every
    ``interval`` seconds), or None."""

    def __init__(self, clock=time.monotonic, interval: float = 0.25):
        self.clock = clock
        self.interval = interval
        self.total = 0
        self.got = 0
        self.started = 0.0
        self._shown = float("-inf")

    def start(self, total: int) -> None:
        self.total, self.got, self.started = total, 0, self.clock()

    def line(self, now: float) -> str:
        span = now - self.started
        rate = self.got / span if span > 0 else 0.0
        pct = 100 * self.got // self.total if self.total else 100
        left = f"{(self.total - self.got) / rate:.0f} s left" if rate > 0 else "-- s left"
        if self.got >= self.total:
            left = f"done in {span:.1f} s"
        return f"{_mib(self.got)} of {_mib(self.total)} ({pct}%)  {_mib(rate)}/s  {left}"

    def update(self, n: int) -> str | None:
        self.got += n
        now = self.clock()
        if now - self._shown < self.interval and self.got < self.total:
            return None
        self._shown = now
        return self.line(now)


class _TerminalProgress:
    """Shows ``Progress`` lines on stderr, rewriting one line."""

    def __init__(self, stream):
        self.p = Progress()
        self.stream = stream
        self.width = 0

    def start(self, total: int) -> None:
        self.p.start(total)
        self._show(self.p.line(self.p.clock()))

    def update(self, n: int) -> None:
        text = self.p.update(n)
        if text is not None:
            self._show(text)

    def _show(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def end(self) -> None:
        if self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


class QueryFailed(PipeError):
    """A query that did not complete; ``kind``: the receiver's refusal kind
    (docs/query-protocol.md), if any."""


class _Sink:
    """stdout, or FILE written as FILE.part and renamed when complete."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = None
        if path == "-":
            if sys.stdout.isatty():
                raise QueryFailed("refusing to write a pcap to a terminal: use -o FILE or a pipe")
            self.f = sys.stdout.buffer
        elif os.path.exists(path) and not os.path.isfile(path):
            self.f = open(path, "wb")  # a device or a FIFO: as it is
        else:
            self.tmp = f"{path}.part"
            self.f = open(self.tmp, "wb")

    def write(self, data) -> None:
        self.f.write(data)

    def commit(self) -> None:
        self.f.flush()
        if self.f is not sys.stdout.buffer:
            self.f.close()
        if self.tmp:
            os.replace(self.tmp, self.path)
            self.tmp = None

    def abort(self) -> None:
        if self.f is not sys.stdout.buffer:
            self.f.close()
        if self.tmp:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


def _dealer(ctx: zmq.Context, curve: security.Curve | None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.ipv6 = True  # IPv6 addresses and names too (IPv4 still works)
    if curve is not None:
        curve.client(sock)
    sock.linger = 0
    sock.maxmsgsize = 2 * PIECE
    sock.rcvhwm = 0
    return sock


def _refusal(parts) -> QueryFailed:
    """The QueryFailed of an ``error`` message."""
    try:
        body = json.loads(parts[1].bytes)
        err, why = str(body["error"]), body.get("kind")
    except (IndexError, ValueError, KeyError, TypeError, AttributeError):
        err, why = "unreadable error message", None
    return QueryFailed(f"the receiver refused the query: {err}", why if isinstance(why, str) else None)


def fetch(endpoint: str, req: Request, out, timeout: float, ctx: zmq.Context | None = None,
          curve: security.Curve | None = None, progress=None) -> dict:
    """Run one query; write the pcap bytes to ``out.write``.  Returns the
    response header; raises QueryFailed with the receiver's message.
    ``progress`` (optional) is told the announced total (``start``) and
    each piece received (``update``)."""
    own = ctx is None
    ctx = ctx or zmq.Context(1)
    sock = _dealer(ctx, curve)
    try:
        sock.connect(endpoint)
        sock.send_multipart([CMD_QUERY, req.encode()])
        header = None
        got = 0
        while True:
            if not sock.poll(timeout * 1000):
                if header is None:
                    raise QueryFailed(f"no answer from {endpoint} within {timeout:g} s (is a "
                                      "receiver serving --buffer-interface there?)")
                raise QueryFailed(f"{endpoint} stopped answering ({got} bytes received)")
            parts = sock.recv_multipart(copy=False)
            kind = parts[0].bytes
            if kind == MSG_ERROR:
                raise _refusal(parts)
            if kind == MSG_HEADER:
                header = json.loads(parts[1].bytes)
                log.debug("response header", extra={"event": "header", **header})
                if progress is not None:
                    progress.start(header["bytes"])
            elif kind == MSG_DATA and header is not None:
                buf = parts[1].buffer
                out.write(buf)
                got += len(buf)
                if progress is not None:
                    progress.update(len(buf))
                sock.send_multipart([CMD_MORE, b"1"])
            elif kind == MSG_END and header is not None:
                if got != header["bytes"]:
                    raise QueryFailed(f"response of {got} bytes, {header['bytes']} announced")
                return header
            else:
                raise QueryFailed(f"unexpected {kind[:16]!r} message from {endpoint}")
    except BaseException:
        try:
            sock.send_multipart([CMD_CANCEL], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        raise
    finally:
        sock.close(linger=100)
        if own:
            ctx.term()


def _fetch_waiting(args, req: Request, sink, curve, progress, started: float) -> tuple[dict, float]:
    """``fetch``, asked again every second while the receiver answers busy, for up to
    --wait seconds.  Returns the header and when the last (served) request went out."""
    asked = started
    while True:
        try:
            return fetch(args.endpoint, req, sink, args.timeout, curve=curve,
                         progress=progress), asked
        except QueryFailed as e:
            left = started + args.wait - time.monotonic()
            if e.kind != "busy" or left <= 0:
                raise
            pause = min(1.0, left)
            again = datetime.now().timestamp() + pause
            log.info("%s: asking again in %.1f s (at %s; --wait gives up in %.0f s)", e,
                     pause, datetime.fromtimestamp(again).strftime("%H:%M:%S.%f")[:-3], left,
                     extra={"event": "query_busy", "retry_in": round(pause, 3),
                            "wait_left": round(left, 3)})
            time.sleep(pause)
            asked = time.monotonic()


class Stopped(BaseException):
    """SIGTERM or SIGHUP: leave like after Ctrl-C, removing FILE.part."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    args = config.parse_args("nflog-pcap-query", __doc__.split("\n\n")[0], OPTIONS, argv)
    if args.last is not None and (args.since is not None or args.until is not None):
        args.parser.error("--last cannot be combined with --since/--until")
    runtime.setup_logging(SERVICE, args)
    try:
        curve = security.Curve.from_args(args, {}, client=True, server=False)
    except security.SecurityError as e:
        return runtime.fatal("%s", e)
    req = Request(args.last, args.since, args.until, args.max_bytes, args.filter)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _stop)
    try:
        sink = _Sink(args.output)
    except (OSError, QueryFailed) as e:
        return runtime.fatal("cannot write %s: %s", args.output, getattr(e, "strerror", None) or e,
                             code=1)
    progress = None
    if args.output != "-" and not args.quiet and sys.stderr is not None and sys.stderr.isatty():
        progress = _TerminalProgress(sys.stderr)
    started = time.monotonic()
    try:
        header, asked = _fetch_waiting(args, req, sink, curve, progress, started)
        if progress is not None:
            progress.end()
        sink.commit()
    except QueryFailed as e:
        sink.abort()
        if progress is not None:
            progress.end()  # the error goes on a line of its own
        log.error("%s", e, extra={"event": "query_failed", "endpoint": args.endpoint})
        return 1
    except BrokenPipeError:
        sink.abort()
        if progress is not None:
            progress.end()  # the error goes on a line of its own
        log.error("output closed before the pcap was complete", extra={"event": "query_failed"})
        return 1
    except (KeyboardInterrupt, Stopped) as e:
        part = sink.tmp
        sink.abort()
        if progress is not None:
            progress.end()  # the error goes on a line of its own
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        log.error("stopped by %s before the pcap was complete%s", signal.Signals(signum).name,
                  f" ({part} removed)" if part else "", extra={"event": "query_stopped"})
        return 128 + signum
    log.info("wrote %d packets (%d bytes) to %s", header["records"], header["bytes"],
             "stdout" if args.output == "-" else args.output,
             extra={"event": "query_done", "records": header["records"],
                    "bytes": header["bytes"], "seconds": round(time.monotonic() - asked, 3),
                    "waited": round(asked - started, 3),
                    "buffer": header["buffer"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
