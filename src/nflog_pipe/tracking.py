"""Sequence tracking of the streams coming into a stage (receiver, relays).

A stream is one ``(sender_id, instance)``: a sender process, or a relay's
output for one sender id.  ``pkt_seq`` of consecutive frames must follow on;
a gap is a loss on the link into this stage (``dropped.transit``, exact in
packets, and also counted in ``packets_in`` so that the totals add up).

Without CURVE anyone who reaches the socket can send frames with any stream's
id and instance (they travel in plaintext), so a header is never believed
further than a real stream could go (``docs/frame-format.md``):

- a jump of ``pkt_seq`` (forwards or backwards) larger than the stream could
  have sent since its previous frame (``PLAUSIBLE_BURST`` plus
  ``PLAUSIBLE_RATE`` per second) is a stream reset (``streams_reset``), not a
  loss: tracking starts again at the new position;
- a stream never counts the same sequence numbers twice: after a rewound
  (replayed) frame, ``frames_rewound``, only packets beyond the highest
  sequence number already seen can be counted as lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq

from .counters import init as init_counters
from .frame import HEADER_SIZE, Frame, FrameError, decode, read_header
from .logs import RateLimited
from .metrics import Counters
from .pcap import RECORD_HEADER_SIZE

#: streams tracked at once; beyond it the least recently seen is forgotten
MAX_STREAMS = 4096
#: a pkt_seq jump is believed up to this many packets, plus PLAUSIBLE_RATE
#: per second since the stream's previous frame (one sender reads at most
#: about 350 000 packets/s on the reference machine: ENVIRONMENT.md)
PLAUSIBLE_BURST = 1 << 16
PLAUSIBLE_RATE = 4_000_000


def peer_address(msg: zmq.Frame) -> str:
    """The sending peer's address, as ZeroMQ knows it ("" if it does not)."""
    try:
        return msg.get("Peer-Address") or ""
    except zmq.ZMQError:
        return ""


def drain(sock: zmq.Socket, handle: Callable[[memoryview, str], object], limit: int) -> bool:
    """Hand at most ``limit`` frames ZeroMQ has already received on ``sock``
    to ``handle(data, peer)``, without waiting.  True when the limit was
    reached: more may be waiting (the stage is saturated)."""
    for _ in range(limit):
        try:
            msg = sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        handle(msg.buffer, peer_address(msg))
    return True


class SenderTrack:
    """Sequence tracking of one stream: gaps are transit losses."""

    __slots__ = ("next_pkt", "next_seq", "high", "when", "packets", "lost")

    def __init__(self, f: Frame, now: float):
        self.next_pkt = f.pkt_seq
        self.next_seq = f.seq
        #: every pkt_seq below this was delivered or counted lost already
        self.high = f.pkt_seq
        self.when = now
        self.packets = 0
        self.lost = 0


class StreamTracker:
    """Checks each accepted frame against the stream it belongs to."""

    def __init__(self, counters: Counters, log: logging.Logger, warn: RateLimited | None = None):
        self.c = counters
        self.log = log
        self._warn = warn or RateLimited(log, 10.0)
        self.streams: dict[tuple[str, int], SenderTrack] = {}
        init_counters(self.c, "dropped.transit", "streams_reset", "frames_rewound")

    def accept(self, data, peer: str = "") -> Frame | None:
        """A message from the network: the frame, validated, counted
        (``frames_in``, ``packets_in``, ``bytes_in``) and tracked; or None
        when it was rejected, counted once and logged (rate-limited)."""
        c = self.c
        c["frames_in"] += 1
        try:
            f = decode(data)
        except FrameError as e:
            account_rejected(c, e, data, self)
            self._warn.warning(f"malformed.{e.kind}", "rejected frame (%s): %s", e.kind, e,
                               event="malformed_frame", peer=peer, size=len(data))
            return None
        self.track(f)
        c["packets_in"] += f.count
        c["bytes_in"] += f.size - RECORD_HEADER_SIZE * f.count
        return f

    def track(self, f: Frame) -> None:
        """A frame accepted and delivered: its stream advances (gaps counted)."""
        self._advance(f, delivered=True)

    def skip(self, f: Frame) -> None:
        """A frame whose header is intact but which was rejected (and counted)
        whole: move the stream past it, so it is not counted again as a gap."""
        self._advance(f, delivered=False)

    def _advance(self, f: Frame, delivered: bool) -> None:
        key = (f.sender_id, f.instance)
        now = time.monotonic()
        # the dict is kept in order of use (a stream seen is re-inserted last), so the
        # stream seen least recently is the first one: forgetting it is O(1)
        t = self.streams.pop(key, None)
        if t is not None:
            self.streams[key] = t
        if t is None:
            if len(self.streams) >= MAX_STREAMS:
                # a peer inventing sender ids cannot grow this without bound:
                # forget the stream seen least recently (its totals stay counted)
                del self.streams[next(iter(self.streams))]
                self.c["streams_forgotten"] = self.c.get("streams_forgotten", 0) + 1
            t = self.streams[key] = SenderTrack(f, now)
            self._warn.info("sender_new", "new sender %s (instance %08x)", f.sender_id, f.instance,
                            event="sender_new", sender_id=f.sender_id, instance=f.instance,
                            seq=f.seq)
        elif f.pkt_seq != t.next_pkt:
            jump = f.pkt_seq - t.next_pkt
            if abs(jump) > PLAUSIBLE_BURST + PLAUSIBLE_RATE * (now - t.when):
                # further than the stream could have gone: a reset (or a lie), not a loss
                self.c["streams_reset"] += 1
                t.high = f.pkt_seq
                self._warn.warning("reset", "stream %s/%08x jumped by %d packets: counted as a "
                                   "stream reset, not as loss", f.sender_id, f.instance, jump,
                                   event="stream_reset", sender_id=f.sender_id, jump=jump)
            elif jump > 0:
                gap = f.pkt_seq - max(t.next_pkt, t.high)
                if gap > 0:
                    t.lost += gap
                    self.c["packets_in"] += gap
                    self.c["dropped.transit"] += gap
                    self._warn.warning("transit", "%d packets from %s lost in transit",
                                       gap, f.sender_id, event="transit_loss",
                                       sender_id=f.sender_id, frames=f.seq - t.next_seq)
            else:
                self.c["frames_rewound"] += 1
                self._warn.warning("reorder", "frame from %s out of order (rewound by %d "
                                   "packets)", f.sender_id, -jump, event="reorder",
                                   sender_id=f.sender_id)
        t.next_pkt = f.pkt_seq + f.count
        if t.next_pkt > t.high:
            t.high = t.next_pkt
        t.when = now
        t.next_seq = f.seq + 1
        if delivered:
            t.packets += f.count

    def per_sender(self) -> dict:
        return {f"{sid}/{inst:08x}": {"packets": t.packets, "transit_lost": t.lost}
                for (sid, inst), t in self.streams.items()}


#: rejection kinds after which the header's record count cannot be trusted
UNTRUSTED_COUNT = frozenset({"magic", "short", "oversize", "count", "length"})
#: rejection kinds found after the whole header and the sender id were checked
WHOLE_HEADER = frozenset({"decompress", "codec", "records"})


def account_rejected(counters: Counters, e, data=None,
                     tracker: StreamTracker | None = None) -> None:
    """Count a frame rejected by ``frame.decode`` (a ``FrameError``): the
    frame always, its packets when the header that announced them was intact.
    With ``data`` and ``tracker``, the stream moves past the rejected frame so
    that its packets are not counted a second time as a transit gap."""
    counters["frames_dropped.malformed"] += 1
    if e.count and e.kind not in UNTRUSTED_COUNT:
        counters["packets_in"] += e.count
        counters["dropped.malformed"] += e.count
        if tracker is not None and data is not None and e.kind in WHOLE_HEADER:
            tracker.skip(_header_only(data))


def _header_only(data) -> Frame:
    h = read_header(data)
    sid = bytes(memoryview(data)[HEADER_SIZE : HEADER_SIZE + h.id_len]).decode()
    return Frame(sid, h.instance, h.seq, h.pkt_seq, h.count, h.flags, h.codec, memoryview(b""))
