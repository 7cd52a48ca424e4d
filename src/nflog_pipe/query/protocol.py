"""The query protocol (``docs/query-protocol.md``), without I/O.

Requests (``Request``, ``parse_request``: strict, requests come from the network),
the message kinds, and ``Transfer``: the messages answering one query, in order,
within the client's credit.  Both sides import this module; nothing here opens a
socket or needs libpcap.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from nflog_pipe import config, pcap
from nflog_pipe.errors import PipeError

if TYPE_CHECKING:
    from nflog_pipe.ring import Selection

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
#: longest filter expression accepted (queries come from the network)
MAX_EXPRESSION = 2048
#: largest data message (the ring cuts its selections into pieces of this size)
PIECE = 1 << 20

CMD_QUERY, CMD_MORE, CMD_CANCEL = b"query", b"more", b"cancel"
MSG_ERROR, MSG_HEADER, MSG_DATA, MSG_END = b"error", b"header", b"data", b"end"


def buffer_endpoint(text: str) -> str:
    """A ZeroMQ endpoint, or a bare port meaning tcp://127.0.0.1:PORT."""
    if text.isdigit() and 0 < int(text) < 65536:
        return f"tcp://{DEFAULT_PORT_HOST}:{text}"
    return config.endpoint(text)


# --- requests ------------------------------------------------------------------------

class RequestError(PipeError, ValueError):
    """A request the receiver refuses; ``kind`` goes back to the client."""

    def __init__(self, message: str, kind: str = "request"):
        super().__init__(message, kind)


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

