"""The receiver's side of the query protocol: ``QueryServer``, the thin ZeroMQ
ROUTER layer the receiver's poll loop drives (``docs/query-protocol.md``).  The
decisions about one response live in ``protocol.Transfer``."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import zmq

from nflog_pipe.bpf import COMPILE_TIMEOUT, Filter, FilterError, check_expression, compile_bounded
from nflog_pipe.counters import init as init_counters
from nflog_pipe.logs import RateLimited
from nflog_pipe.metrics import Counters
from nflog_pipe.ring import Ring, Selection

from .protocol import (
    CMD_CANCEL,
    CMD_MORE,
    CMD_QUERY,
    INFLIGHT,
    MAX_CREDIT,
    MAX_PARTS,
    MAX_REQUEST,
    MSG_DATA,
    MSG_ERROR,
    PIECE,
    Request,
    RequestError,
    Transfer,
    parse_request,
)

log = logging.getLogger("nflog_pipe.query")


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
        init_counters(self.c, "query.requests", "query.served", "query.refused", "query.refused_memory",
                  "query.timeouts", "query.aborted", "query.records_out", "query.bytes_out")

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
        if self._refused_for_memory(ident, peer):
            return
        if req.filter:  # compiled off the loop, in a process killed if it takes too long
            self.pending[ident] = (req, peer, self._compiler.submit(
                compile_bounded, req.filter, self.compile_timeout))
            return
        self._start(ident, req, peer, None)

    def _refused_for_memory(self, ident: bytes, peer: str) -> bool:
        """Refuse (busy) when a new snapshot would break the memory bound."""
        if not self._holds_evicted():
            return False
        self.c["query.refused_memory"] += 1
        self._refuse(ident, peer, RequestError(
            "busy: a query in progress still holds traffic that has left the window "
            "(the memory bound); try again when it is done", "busy"))
        return True

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
            if self._refused_for_memory(ident, peer):
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
