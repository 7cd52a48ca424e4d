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

import random

import zmq

from . import frame, pcap

SENT, HELD, DROPPED = "sent", "held", "dropped"

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


def try_send(sock: zmq.Socket, data) -> bool:
    """Hand ``data`` to ZeroMQ (copied into a message) without waiting; whether
    it was taken.  (Handing the buffer over without a copy, ``copy=False``,
    was measured and dropped: pyzmq then wakes a thread of its own for every
    frame libzmq releases, and the sender cost as much or more per packet,
    bench/RESULTS.md.)"""
    try:
        sock.send(data, zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True
