"""nflog-pcap-query: fetch a receiver's buffered traffic as a pcap file.

Writes the traffic kept by ``nflog-pcap-recv --buffer-window`` to stdout or
to ``-o FILE``.  By default the whole buffer; ``--last``, ``--since`` /
``--until``, ``--max-bytes`` and ``--filter`` (tcpdump's BPF syntax) narrow
it down.

This module also holds the receiver's side of the protocol
(``docs/query-protocol.md``): ``parse_request`` (strict, requests come from
the network), ``Transfer`` (one response, no I/O) and ``QueryServer`` (the
thin ZeroMQ ROUTER layer the receiver's loop drives).
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import zmq

from . import config, pcap, runtime, security
from .bpf import COMPILE_TIMEOUT, MAX_EXPRESSION, Filter, FilterError, check_expression, compile_bounded
from .config import Option
from .logs import RateLimited
from .metrics import Counters
from .ring import PIECE, Ring, Selection

log = logging.getLogger("nflog_pipe.query")
SERVICE = "query"

PROTOCOL_VERSION = 1
#: largest request body (JSON) the receiver reads
MAX_REQUEST = 4096
#: frames of one incoming message the receiver looks at (the rest is discarded)
MAX_PARTS = 4
#: data messages a client may have outstanding (its credit)
DEFAULT_CREDIT = 8
MAX_CREDIT = 64
#: data pieces (at most 1 MiB each) sent to all clients together and not yet taken by
#: them (acknowledged with ``more``): what ZeroMQ may hold for queries, the third part
#: of the query memory bound (docs/query-protocol.md)
INFLIGHT = 64
#: latest time a request may name (pcap timestamps are 32-bit seconds)
MAX_TIME = 2**32
MAX_DURATION = 10 * 365 * 86400.0
DEFAULT_PORT_HOST = "127.0.0.1"

CMD_QUERY, CMD_MORE, CMD_CANCEL = b"query", b"more", b"cancel"
MSG_ERROR, MSG_HEADER, MSG_DATA, MSG_END = b"error", b"header", b"data", b"end"


def buffer_endpoint(text: str) -> str:
    """A ZeroMQ endpoint, or a bare port meaning tcp://127.0.0.1:PORT."""
    if text.isdigit() and 0 < int(text) < 65536:
        return f"tcp://{DEFAULT_PORT_HOST}:{text}"
    return config.endpoint(text)


# --- requests ------------------------------------------------------------------------

class RequestError(ValueError):
    """A request the receiver refuses; ``kind`` goes back to the client."""

    def __init__(self, message: str, kind: str = "request"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Request:
    last: float | None = None
    since: float | None = None
    until: float | None = None
    max_bytes: int | None = None
    filter: str | None = None
    credit: int = DEFAULT_CREDIT

    def encode(self) -> bytes:
        body = {"version": PROTOCOL_VERSION}
        for k in ("last", "since", "until", "max_bytes", "filter"):
            v = getattr(self, k)
            if v is not None:
                body[k] = v
        if self.credit != DEFAULT_CREDIT:
            body["credit"] = self.credit
        return json.dumps(body).encode()

    def window_us(self, now: float) -> tuple[int | None, int | None]:
        """``[since, until)`` in microseconds; ``last`` counts back from now
        (the receiver's clock)."""
        if self.last is not None:
            return round((now - self.last) * 1e6), None
        return (None if self.since is None else round(self.since * 1e6),
                None if self.until is None else round(self.until * 1e6))


_FIELDS = ("version", "last", "since", "until", "max_bytes", "filter", "credit")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _number(obj: dict, key: str, lo: float, hi: float, strict_lo: bool = False) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    # an int is finite (math.isfinite would raise OverflowError on a huge one;
    # found by tests/fuzz)
    if isinstance(v, bool) or not isinstance(v, int | float) or \
            not (isinstance(v, int) or math.isfinite(v)):
        raise RequestError(f"{key} must be a number")
    if v < lo or (strict_lo and v == lo) or v > hi:
        raise RequestError(f"{key} {v} is out of range ({'above' if strict_lo else 'from'} "
                           f"{lo} to {hi})")
    return float(v)


def _integer(obj: dict, key: str, lo: int, hi: int, default: int | None = None) -> int | None:
    v = obj.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(f"{key} must be a whole number")
    if not lo <= v <= hi:
        raise RequestError(f"{key} {v} is out of range ({lo} to {hi})")
    return v


def parse_request(body: bytes) -> Request:
    """Validate a request body (JSON object, ``docs/query-protocol.md``).
    An empty body asks for the whole buffer."""
    if len(body) > MAX_REQUEST:
        raise RequestError(f"request of {len(body)} bytes, the limit is {MAX_REQUEST}")
    if not body.strip():
        obj: object = {}
    else:
        try:
            obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise RequestError(f"request is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RequestError("request must be a JSON object")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise RequestError(f"unknown request field(s): {', '.join(map(repr, unknown))[:200]}")
    version = obj.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise RequestError(f"query protocol version {version!r}, this receiver speaks version "
                           f"{PROTOCOL_VERSION}", kind="version")
    last = _number(obj, "last", 0.0, MAX_DURATION, strict_lo=True)
    since = _number(obj, "since", 0.0, MAX_TIME)
    until = _number(obj, "until", 0.0, MAX_TIME)
    if last is not None and (since is not None or until is not None):
        raise RequestError("last cannot be combined with since or until")
    if since is not None and until is not None and since >= until:
        raise RequestError(f"since ({_fmt_time(since)}) is not before until ({_fmt_time(until)})")
    max_bytes = _integer(obj, "max_bytes", len(pcap.GLOBAL_HEADER_BYTES), 2**62)
    flt = obj.get("filter")
    if flt is not None:
        if not isinstance(flt, str):
            raise RequestError("filter must be a string")
        if len(flt) > MAX_EXPRESSION:
            raise RequestError(f"filter longer than {MAX_EXPRESSION} characters")
        if not flt.strip():
            flt = None
    credit = _integer(obj, "credit", 1, MAX_CREDIT, DEFAULT_CREDIT)
    return Request(last, since, until, max_bytes, flt, credit)


def _fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="microseconds")


# --- one response (no I/O) ---------------------------------------------------------------

class Transfer:
    """The messages answering one query: header, data pieces (at most
    ``credit`` ahead of the client), end.  ``peek()`` gives the next message
    that may go out now, ``sent()`` consumes it."""

    def __init__(self, ident: bytes, sel: Selection, credit: int, peer: str = ""):
        self.ident = ident
        self.sel = sel
        self.credit = credit
        self.peer = peer
        self.state = "plan"  # plan, header, pcap_header, data, end, done
        self.records = 0
        self.bytes = 0
        #: since when this transfer waits for the client (credit or a full queue)
        self.waiting_since: float | None = None
        self._next: tuple[bytes, bytes | memoryview] | None = None

    @property
    def done(self) -> bool:
        return self.state == "done"

    def plan(self) -> None:
        if self.state == "plan" and self.sel.plan():
            self.state = "header"

    def header(self) -> dict:
        s = self.sel.snap
        return {"version": PROTOCOL_VERSION, "records": self.sel.records,
                "bytes": len(pcap.GLOBAL_HEADER_BYTES) + self.sel.bytes,
                "buffer": {"records": s.records, "bytes": s.bytes, "window": s.window,
                           "evicted": s.evicted}}

    def peek(self) -> tuple[bytes, bytes | memoryview] | None:
        if self._next is None:
            if self.state == "plan":
                return None
            if self.state == "header":
                self._next = (MSG_HEADER, json.dumps(self.header()).encode())
            elif self.state == "pcap_header":
                self._next = (MSG_DATA, pcap.GLOBAL_HEADER_BYTES)
            elif self.state == "data":
                piece = self.sel.next_piece()
                if piece is None:
                    self.state = "end"
                else:
                    self._next = (MSG_DATA, piece)
            if self.state == "end" and self._next is None:
                self._next = (MSG_END, json.dumps({"records": self.sel.records,
                                                   "bytes": self.bytes}).encode())
            if self._next is None:
                return None
        if self._next[0] == MSG_DATA and self.credit <= 0:
            return None
        return self._next

    def sent(self) -> None:
        kind, payload = self._next
        self._next = None
        if kind == MSG_DATA:
            self.credit -= 1
            self.bytes += len(payload)
            if self.state == "pcap_header":
                self.state = "data"
        elif kind == MSG_HEADER:
            self.state = "pcap_header"
        elif kind == MSG_END:
            self.state = "done"

    def grant(self, n: int) -> None:
        self.credit = min(self.credit + n, MAX_CREDIT)


# --- the receiver's side -----------------------------------------------------------------

class _Gone(Exception):
    """The client is no longer connected."""


class QueryServer:
    """Serves queries on a ROUTER socket from the receiver's poll loop.

    ``readable()`` takes requests and credit, ``work()`` advances every
    transfer by a bounded amount (planning a few MiB, a few pieces), so the
    loop keeps draining ZeroMQ and writing the FIFO in between.  A transfer
    that waits for its client longer than ``timeout`` is forgotten.  With
    ``rate`` (bytes/s, 0: no limit) all transfers together send at most that
    much (a token bucket), which bounds the CPU and memory bandwidth queries
    take from the live path on a busy host."""

    #: messages sent per transfer per work() call; while the live path has a
    #: backlog (``work(busy_live=True)``), one: live traffic comes first
    BURST = 4
    #: messages read per readable() call
    READ_BATCH = 64

    #: bytes the token bucket may hold (a burst)
    RATE_BURST = 4 * PIECE

    def __init__(self, sock: zmq.Socket, ring: Ring, counters: Counters, timeout: float,
                 max_queries: int = 4, rate: float = 0.0, clock=time.monotonic,
                 wallclock=time.time, compile_timeout: float = COMPILE_TIMEOUT,
                 inflight: int = INFLIGHT):
        self.sock = sock
        #: the shared credit budget: data messages sent and not yet acknowledged, per
        #: client (kept after its query ends or is dropped, until it takes them or is gone)
        self.inflight = inflight
        self.owed: dict[bytes, int] = {}
        self.owed_total = 0
        #: per client that owes: when it last took something (or first owed)
        self._acked_at: dict[bytes, float] = {}
        #: clients that owe with no query running: when to ask again whether they are there
        self._probe_at: dict[bytes, float] = {}
        #: filters being compiled, off the loop (a process per filter, killed after
        #: compile_timeout): ident -> (request, peer, future of the Filter)
        self.pending: dict[bytes, tuple[Request, str, Future]] = {}
        self.compile_timeout = compile_timeout
        self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpf-compile")
        self.rate = rate
        self._tokens = float(self.RATE_BURST)
        self._refilled = clock()
        self.ring = ring
        self.c = counters
        self.timeout = timeout
        self.max_queries = max_queries
        self.clock = clock
        self.wallclock = wallclock
        self.transfers: dict[bytes, Transfer] = {}
        self._warn = RateLimited(log, 10.0)
        for k in ("query.requests", "query.served", "query.refused", "query.refused_memory",
                  "query.timeouts", "query.aborted", "query.records_out", "query.bytes_out"):
            self.c.setdefault(k, 0)

    @staticmethod
    def configure(sock: zmq.Socket) -> None:
        sock.router_mandatory = 1  # an unknown peer is an error, not a silent drop
        sock.maxmsgsize = MAX_REQUEST + 1024
        sock.sndhwm = 4 * MAX_CREDIT
        sock.rcvhwm = 16  # requests are small and read 64 at a time: little to queue
        sock.linger = 0

    # -- incoming ------------------------------------------------------------------
    def _recv(self) -> tuple[bytes, list[bytes], str] | None:
        try:
            first = self.sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        try:
            peer = first.get("Peer-Address") or ""
        except zmq.ZMQError:
            peer = ""
        parts = []
        while self.sock.rcvmore:
            part = self.sock.recv()
            if len(parts) < MAX_PARTS:
                parts.append(part)
        return first.bytes, parts, peer

    def readable(self) -> None:
        now = self.clock()
        for _ in range(self.READ_BATCH):
            msg = self._recv()
            if msg is None:
                return
            ident, parts, peer = msg
            cmd = parts[0] if parts else b""
            if cmd == CMD_QUERY and len(parts) <= 2:
                self._query(ident, parts[1] if len(parts) > 1 else b"", peer, now)
            elif cmd == CMD_MORE and len(parts) == 2:
                n = int(parts[1]) if parts[1].isdigit() and len(parts[1]) < 4 else 0
                if n > 0:
                    self._ack(ident, n, now)
                t = self.transfers.get(ident)
                if t is not None:
                    if n <= 0:
                        self._refuse(ident, peer, RequestError("more needs a count from 1 to "
                                                               f"{MAX_CREDIT}", "protocol"))
                        self._forget(t, "aborted", "bad credit")
                        continue
                    t.grant(n)
                    t.waiting_since = None
            elif cmd == CMD_CANCEL:
                t = self.transfers.get(ident)
                if t is not None:
                    self._forget(t, "aborted", "cancelled by the client")
            else:
                shown = cmd[:32].decode("ascii", "replace")
                self._refuse(ident, peer, RequestError(
                    f"not a query protocol message (command {shown!r}, {len(parts)} parts); "
                    "see docs/query-protocol.md", "protocol"))

    def _query(self, ident: bytes, body: bytes, peer: str, now: float) -> None:
        self.c["query.requests"] += 1
        if self.owed.get(ident):  # first take what was sent (the shared budget)
            self._refuse(ident, peer, RequestError(
                f"busy: {self.owed[ident]} pieces of an earlier answer not taken yet", "busy"))
            return
        old = self.transfers.get(ident)
        if old is not None:
            self._forget(old, "aborted", "replaced by a new query")
        if self.pending.pop(ident, None) is not None:
            self.c["query.aborted"] += 1
        try:
            req = parse_request(body)
            if req.filter:
                check_expression(req.filter)  # size, characters, no name: at once
        except FilterError as e:
            self._refuse(ident, peer, RequestError(str(e), "filter"))
            return
        except RequestError as e:
            self._refuse(ident, peer, e)
            return
        # admission before any work: the busy and memory bounds
        if len(self.transfers) + len(self.pending) >= self.max_queries:
            self._refuse(ident, peer, RequestError(
                f"busy: {len(self.transfers) + len(self.pending)} queries in progress, try again",
                "busy"))
            return
        if self._holds_evicted():
            self.c["query.refused_memory"] += 1
            self._refuse(ident, peer, RequestError(
                "busy: a query in progress still holds traffic that has left the window "
                "(the memory bound); try again when it is done", "busy"))
            return
        if req.filter:  # compiled off the loop, in a process killed if it takes too long
            self.pending[ident] = (req, peer, self._compiler.submit(
                compile_bounded, req.filter, self.compile_timeout))
            return
        self._start(ident, req, peer, None)

    def _holds_evicted(self) -> bool:
        # a new snapshot would keep a second window alive beside the one the running
        # queries still hold (memory: at most twice the window)
        return any(self.ring.outside(t.sel.oldest_view()) for t in self.transfers.values())

    def _compiled(self) -> None:
        """Start the queries whose filter is ready (or refuse them)."""
        for ident, (req, peer, fut) in list(self.pending.items()):
            if not fut.done():
                continue
            del self.pending[ident]
            try:
                flt = fut.result()
            except FilterError as e:
                self._refuse(ident, peer, RequestError(str(e), "filter"))
                continue
            if self._holds_evicted():
                self.c["query.refused_memory"] += 1
                self._refuse(ident, peer, RequestError(
                    "busy: a query in progress still holds traffic that has left the window "
                    "(the memory bound); try again when it is done", "busy"))
                continue
            self._start(ident, req, peer, flt)

    def _start(self, ident: bytes, req: Request, peer: str, flt: Filter | None) -> None:
        since, until = req.window_us(self.wallclock())
        sel = Selection(self.ring.snapshot(), since, until, req.max_bytes, flt)
        t = self.transfers[ident] = Transfer(ident, sel, req.credit, peer)
        log.info("query from %s", peer or "?", extra={
            "event": "query", "peer": peer, "last": req.last, "since": req.since,
            "until": req.until, "max_bytes": req.max_bytes, "filter": req.filter,
            "buffer_packets": sel.snap.records, "buffer_bytes": sel.snap.bytes})
        t.plan()

    # -- the shared credit budget --------------------------------------------------------
    def _owe(self, ident: bytes, now: float) -> None:
        if ident not in self.owed:
            self.owed[ident] = 0
            self._acked_at[ident] = now
        self.owed[ident] += 1
        self.owed_total += 1

    def _ack(self, ident: bytes, n: int, now: float) -> None:
        owed = self.owed.get(ident)
        if not owed:
            return
        k = min(n, owed)
        self.owed_total -= k
        if owed == k:
            self._clear(ident)
        else:
            self.owed[ident] = owed - k
            self._acked_at[ident] = now

    def _clear(self, ident: bytes) -> None:
        self.owed_total -= self.owed.pop(ident, 0)
        self._acked_at.pop(ident, None)
        self._probe_at.pop(ident, None)

    def _probe_debtors(self, now: float) -> None:
        """A client that owes with no query running is asked, once per --buffer-timeout,
        whether it is still there: gone, its share of the budget is free again."""
        for ident, due in list(self._probe_at.items()):
            if due > now:
                continue
            body = json.dumps({"error": f"query dropped: nothing taken for {self.timeout:g} s",
                               "kind": "timeout"}).encode()
            try:
                self._send(ident, MSG_ERROR, body)
            except _Gone:
                self._clear(ident)
                continue
            self._probe_at[ident] = now + self.timeout

    def _refuse(self, ident: bytes, peer: str, e: RequestError) -> None:
        self.c["query.refused"] += 1
        self._warn.warning(f"refused.{e.kind}", "query from %s refused (%s): %s", peer or "?",
                           e.kind, e, event="query_refused", peer=peer, reason=e.kind)
        body = json.dumps({"error": str(e), "kind": e.kind}).encode()
        try:
            self._send(ident, MSG_ERROR, body)
        except _Gone:
            pass

    # -- outgoing --------------------------------------------------------------------
    def _send(self, ident: bytes, kind: bytes, payload) -> bool:
        """False when the client's queue is full (try again later)."""
        try:
            self.sock.send(ident, zmq.SNDMORE | zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                raise _Gone from None
            raise
        self.sock.send(kind, zmq.SNDMORE | zmq.NOBLOCK)
        self.sock.send(payload, zmq.NOBLOCK, copy=len(payload) < 65536)
        return True

    def _refill(self, now: float) -> None:
        if self.rate:
            self._tokens = min(self.RATE_BURST,
                               self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now

    @property
    def throttled(self) -> bool:
        return bool(self.rate) and self._tokens <= 0

    def work(self, busy_live: bool = False) -> None:
        if self.pending:
            self._compiled()
        now = self.clock()
        if self._probe_at:
            self._probe_debtors(now)
        self._refill(now)
        burst = 1 if busy_live else self.BURST
        for t in list(self.transfers.values()):
            t.plan()
            blocked = False
            for _ in range(burst):
                msg = t.peek()
                if msg is None:
                    blocked = t.state != "plan"  # no credit left
                    break
                if msg[0] == MSG_DATA and (self.throttled or self.owed_total >= self.inflight):
                    break  # the rate limit or the shared budget, not the client: no timeout
                try:
                    ok = self._send(t.ident, *msg)
                except _Gone:
                    self._clear(t.ident)
                    self._forget(t, "aborted", "client went away")
                    break
                if not ok:  # the client's queue is full
                    blocked = True
                    break
                if msg[0] == MSG_DATA:
                    self._tokens -= len(msg[1])
                    self._owe(t.ident, now)
                t.sent()
                if t.done:
                    self._finish(t)
                    break
            if t.ident not in self.transfers:
                continue
            if not blocked:
                t.waiting_since = None
            elif t.waiting_since is None:
                t.waiting_since = now
            elif now - t.waiting_since > self.timeout:
                self._forget(t, "timeouts", f"the client took nothing for {self.timeout:g} s")
                continue
            acked = self._acked_at.get(t.ident)
            if acked is not None and now - acked > self.timeout:
                # credit left, but what was sent sits in ZeroMQ's queue: not taken
                self._forget(t, "timeouts", f"the client took nothing for {self.timeout:g} s")

    def _finish(self, t: Transfer) -> None:
        del self.transfers[t.ident]
        if self.owed.get(t.ident):
            self._probe_at[t.ident] = self.clock() + self.timeout
        self.c["query.served"] += 1
        self.c["query.records_out"] += t.sel.records
        self.c["query.bytes_out"] += t.bytes
        log.info("query from %s served", t.peer or "?", extra={
            "event": "query_served", "peer": t.peer, "records": t.sel.records, "bytes": t.bytes})

    def _forget(self, t: Transfer, counter: str, why: str) -> None:
        self.transfers.pop(t.ident, None)
        if self.owed.get(t.ident):
            self._probe_at[t.ident] = self.clock()  # ask at once: gone, or told why
        self.c[f"query.{counter}"] += 1
        self._warn.warning(f"query.{counter}", "query from %s dropped: %s", t.peer or "?", why,
                           event="query_dropped", peer=t.peer, reason=counter,
                           sent_bytes=t.bytes)

    # -- for the poll loop --------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Work that can be done now (the loop should not sleep)."""
        if self.throttled and all(t.state != "plan" for t in self.transfers.values()):
            return False
        return any(t.waiting_since is None for t in self.transfers.values())

    def next_deadline(self) -> float | None:
        """When work() is due next without any event: a client's timeout, or
        the rate limit letting data go again."""
        due = [t.waiting_since + self.timeout for t in self.transfers.values()
               if t.waiting_since is not None]
        if self.pending:  # a filter being compiled: look again soon
            due.append(self.clock() + 0.01)
        due += [self._acked_at[i] + self.timeout for i in self.transfers if i in self._acked_at]
        if self._probe_at:
            due.append(min(self._probe_at.values()))
        if self.throttled and self.transfers:
            due.append(self._refilled + (-self._tokens + 1) / self.rate)
        return min(due) if due else None

    def close(self) -> None:
        self.transfers.clear()
        self.pending.clear()
        self.owed.clear()
        self.owed_total = 0
        self._compiler.shutdown(wait=False, cancel_futures=True)


# --- the client -----------------------------------------------------------------------------

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


class QueryFailed(Exception):
    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind  # the receiver's refusal kind (docs/query-protocol.md), if any


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


def fetch(endpoint: str, req: Request, out, timeout: float, ctx: zmq.Context | None = None,
          curve: security.Curve | None = None, progress=None) -> dict:
    """Run one query; write the pcap bytes to ``out.write``.  Returns the
    response header; raises QueryFailed with the receiver's message.
    ``progress`` (optional) is told the announced total (``start``) and
    each piece received (``update``)."""
    own = ctx is None
    ctx = ctx or zmq.Context(1)
    sock = ctx.socket(zmq.DEALER)
    sock.ipv6 = True  # IPv6 addresses and names too (IPv4 still works)
    if curve is not None:
        curve.client(sock)
    sock.linger = 0
    sock.maxmsgsize = 2 * PIECE
    sock.rcvhwm = 0
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
                try:
                    body = json.loads(parts[1].bytes)
                    err, why = str(body["error"]), body.get("kind")
                except (IndexError, ValueError, KeyError, TypeError, AttributeError):
                    err, why = "unreadable error message", None
                raise QueryFailed(f"the receiver refused the query: {err}",
                                  why if isinstance(why, str) else None)
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
    started = asked = time.monotonic()
    try:
        while True:
            try:
                header = fetch(args.endpoint, req, sink, args.timeout, curve=curve,
                               progress=progress)
                break
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
