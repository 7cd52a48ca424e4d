"""What happens to a frame on its way out: the one rule of every sending stage.

The sender (each of its destinations) and the relays hand frames to a ZeroMQ
PUSH socket without ever waiting.  ZeroMQ queues at most ``ZMQ_SNDHWM``
frames (``--zmq-buffer-frames``, ``--zmq-buffer``); what then happens to a
frame is decided here, and only here:

========================  ============================  =================================
the socket                the frame can still grow      the frame cannot grow
========================  ============================  =================================
takes the frame           SENT: numbered, counted out   SENT: numbered, counted out
queue full (EAGAIN)       HELD: kept, more records      DROPPED: its packets counted in
                          join it, retried when the     ``dropped.queue_full``, the frame
                          socket can take one           in ``frames_dropped.queue_full``
========================  ============================  =================================

A frame "can grow" while it is the sender's own record area with room for
another kernel batch and the sender is not exiting.  A full area, a frame the
rate controller composed (compressed, squashed or cut at ``--hwm``) and every
frame of a relay cannot grow.  So a short stall coalesces small frames
instead of dropping them, and a long one drops whole frames, never blocks.

A refused frame does not take a sequence number: the next stage sees no gap
for a frame it was never sent; what was dropped is counted here instead.

``Stream`` is sans-IO (numbering and counting, tested by table in
tests/unit/test_outgoing.py); ``try_send`` is the one socket call.
"""

from __future__ import annotations

import collections
import random

import zmq

from . import frame, pcap

SENT, HELD, DROPPED = "sent", "held", "dropped"

#: frames from this size on are handed to ZeroMQ without a copy (``BufferPool``);
#: below it the copy is cheaper than the tracking (bench/RESULTS.md: zero-copy
#: made 64 B frames of ~110 KiB cost 20 % more, 1400 B frames of ~400 KiB 9 % less)
ZERO_COPY_MIN = 192 * 1024


def account(c, accepted: bool, count: int, raw_len: int, can_grow: bool) -> str:
    """Count one attempt to send a frame of ``count`` records (``raw_len``
    bytes of records) into the counters ``c``; the outcome (module doc)."""
    if accepted:
        c["packets_out"] += count
        c["bytes_out"] += raw_len - count * pcap.RECORD_HEADER_SIZE
        c["frames_out"] += 1
        return SENT
    if can_grow:
        return HELD
    c["dropped.queue_full"] += count
    c["frames_dropped.queue_full"] += 1
    return DROPPED


class Stream:
    """One outgoing stream of frames (one destination of the sender): its
    identity (``instance``, random per start) and numbering (``seq`` per
    frame, ``pkt_seq`` per packet), which the next stage checks for loss."""

    __slots__ = ("instance", "seq", "pkt_seq", "c")

    def __init__(self, counters, instance: int | None = None):
        self.instance = random.getrandbits(32) if instance is None else instance
        self.seq = 0
        self.pkt_seq = 0
        self.c = counters
        for k in ("packets_out", "bytes_out", "frames_out", "dropped.queue_full",
                  "frames_dropped.queue_full"):
            counters.setdefault(k, 0)

    def pack_header(self, buf, sid: bytes, count: int, raw_len: int,
                    payload_len: int | None = None, flags: int = 0,
                    codec: int = frame.CODEC_NONE) -> None:
        """Write the frame header at the start of ``buf`` (the sender id
        follows it; the records follow that)."""
        frame.HEADER.pack_into(buf, 0, frame.MAGIC, frame.VERSION, flags, codec, len(sid),
                               self.instance, count, self.seq, self.pkt_seq, raw_len,
                               raw_len if payload_len is None else payload_len)

    def result(self, accepted: bool, count: int, raw_len: int, can_grow: bool) -> str:
        """After an attempt to send the frame whose header was just packed."""
        outcome = account(self.c, accepted, count, raw_len, can_grow)
        if outcome is SENT:
            self.seq += 1
            self.pkt_seq += count
        return outcome


def try_send(sock: zmq.Socket, data, own_buffer: bool = False):
    """Hand ``data`` to ZeroMQ without waiting.  Returns ``(accepted,
    tracker)``; ``tracker`` is set when the buffer went without a copy (only
    an ``own_buffer`` of at least ``ZERO_COPY_MIN`` bytes): it is ZeroMQ's
    until ``tracker.done``."""
    zero_copy = own_buffer and len(data) >= ZERO_COPY_MIN
    try:
        tracker = sock.send(data, zmq.NOBLOCK, copy=not zero_copy, track=zero_copy)
    except zmq.Again:
        return False, None
    return True, tracker if zero_copy else None


class BufferPool:
    """Frame buffers handed to ZeroMQ without a copy (``send(copy=False)``).

    pyzmq's default copies every frame into a ZeroMQ message; a frame is tens
    to hundreds of KiB here, where that copy is a visible part of the cost
    per packet.  Without the copy, libzmq reads the buffer itself, later, from
    its I/O thread: the buffer must not be written again until libzmq has
    released it (``MessageTracker.done``).  So after such a frame the reader
    goes on in another buffer, and sent buffers come back here once released
    (in order: one socket sends its frames in order).  At most
    ``--zmq-buffer-frames`` + a few buffers exist."""

    def __init__(self, new_buffer):
        self.new_buffer = new_buffer
        self.free: list = []
        self.inflight: collections.deque = collections.deque()

    def take(self):
        inflight = self.inflight
        while inflight and inflight[0][0].done:
            self.free.append(inflight.popleft()[1])
        if self.free:
            return self.free.pop()
        return self.new_buffer()

    def sent(self, tracker, buf) -> None:
        self.inflight.append((tracker, buf))
