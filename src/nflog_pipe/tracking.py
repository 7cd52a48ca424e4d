"""Sequence tracking of the streams coming into a stage (receiver, relays).

A stream is one ``(sender_id, instance)``: a sender process, or a relay's
output for one sender id.  ``pkt_seq`` of consecutive frames must follow on;
a gap is a loss on the link into this stage (``dropped.transit``, exact in
packets, and also counted in ``packets_in`` so that the totals add up).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from .frame import HEADER, HEADER_SIZE, Frame, FrameError, decode
from .logs import RateLimited
from .metrics import Counters

#: streams tracked at once; beyond it the least recently seen is forgotten
MAX_STREAMS = 4096


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

    __slots__ = ("next_pkt", "next_seq", "packets", "lost", "last")

    def __init__(self, f: Frame):
        self.last = 0
        self.next_pkt = f.pkt_seq
        self.next_seq = f.seq
        self.packets = 0
        self.lost = 0


class StreamTracker:
    """Checks each accepted frame against the stream it belongs to."""

    def __init__(self, counters: Counters, log: logging.Logger, warn: RateLimited | None = None):
        self.c = counters
        self.log = log
        self._warn = warn or RateLimited(log, 10.0)
        self.streams: dict[tuple[str, int], SenderTrack] = {}
        self._tick = 0
        self.c.setdefault("dropped.transit", 0)

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
        self._advance(f, delivered=True)
        c["packets_in"] += f.count
        c["bytes_in"] += f.size - 16 * f.count
        return f

    def track(self, f: Frame) -> None:
        self._advance(f, delivered=True)

    def skip(self, f: Frame) -> None:
        """A frame whose header is intact but which was rejected (and counted)
        whole: move the stream past it, so it is not counted again as a gap."""
        self._advance(f, delivered=False)

    def _advance(self, f: Frame, delivered: bool) -> None:
        key = (f.sender_id, f.instance)
        t = self.streams.get(key)
        if t is None:
            if len(self.streams) >= MAX_STREAMS:
                # a peer inventing sender ids cannot grow this without bound:
                # forget the stream seen least recently (its totals stay counted)
                old = min(self.streams, key=lambda k: self.streams[k].last)
                del self.streams[old]
                self.c["streams_forgotten"] = self.c.get("streams_forgotten", 0) + 1
            t = self.streams[key] = SenderTrack(f)
            self._warn.info("sender_new", "new sender %s (instance %08x)", f.sender_id, f.instance,
                            event="sender_new", sender_id=f.sender_id, instance=f.instance,
                            seq=f.seq)
        elif f.pkt_seq != t.next_pkt:
            if f.pkt_seq > t.next_pkt:
                gap = f.pkt_seq - t.next_pkt
                t.lost += gap
                self.c["packets_in"] += gap
                self.c["dropped.transit"] += gap
                self._warn.warning("transit", "%d packets from %s lost in transit",
                                   gap, f.sender_id, event="transit_loss",
                                   sender_id=f.sender_id, frames=f.seq - t.next_seq)
            else:
                self._warn.warning("reorder", "frame from %s out of order",
                                   f.sender_id, event="reorder", sender_id=f.sender_id)
        t.next_pkt = f.pkt_seq + f.count
        t.next_seq = f.seq + 1
        t.last = self._tick = self._tick + 1
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
    counters["dropped.malformed_frames"] += 1
    if e.count and e.kind not in UNTRUSTED_COUNT:
        counters["packets_in"] += e.count
        counters["dropped.malformed"] += e.count
        if tracker is not None and data is not None and e.kind in WHOLE_HEADER:
            tracker.skip(_header_only(data))


def _header_only(data) -> Frame:
    (_m, _v, flags, cdc, id_len, instance, count, seq, pkt_seq, _raw,
     _pl) = HEADER.unpack_from(data)
    sid = bytes(memoryview(data)[HEADER_SIZE : HEADER_SIZE + id_len]).decode()
    return Frame(sid, instance, seq, pkt_seq, count, flags, cdc, memoryview(b""))
