"""Per-sender state of the relays is bounded: forged sender ids cost nothing beyond
MAX_STREAMS entries, and forgetting one is O(1)."""

from __future__ import annotations

from nflog_pipe import frame
from nflog_pipe.metrics import Counters
from nflog_pipe.ratecontrol import Output
from nflog_pipe.relay import OutStreams
from nflog_pipe.tracking import MAX_STREAMS


def out(key: bytes, count: int = 1) -> Output:
    return Output(key, count, 16 * count, bytes(16 * count), frame.CODEC_NONE)


def test_forged_ids_are_bounded():
    c = Counters()
    s = OutStreams(c, instance=7)
    for i in range(200_000):
        s.sent(out(b"forged-%d" % i))
    assert len(s._next) == MAX_STREAMS
    assert c["out_streams_forgotten"] == 200_000 - MAX_STREAMS


def test_the_least_recently_used_is_forgotten_and_numbering_goes_on_for_the_others():
    c = Counters()
    s = OutStreams(c, instance=7, max_streams=3)
    for key in (b"a", b"b", b"c"):
        s.sent(out(key, 5))
    s.sent(out(b"a", 2))          # a is now the most recent
    s.sent(out(b"d"))             # forgets b, the least recently used
    assert list(s._next) == [b"c", b"a", b"d"]
    assert s._next[b"a"] == [2, 7] and c["out_streams_forgotten"] == 1
    # a forgotten id starts again at 0 (the next stage sees a rewound stream)
    s.sent(out(b"b"))
    assert s._next[b"b"] == [1, 1]
    hdr = frame.decode(s.frame(out(b"b", 1)))
    assert (hdr.seq, hdr.pkt_seq) == (1, 1)


def test_the_tracker_forgets_the_stream_seen_least_recently():
    """Receiver and relays: 200 000 forged ids keep MAX_STREAMS entries; a stream that
    keeps sending stays tracked however many others come and go."""
    import logging

    from nflog_pipe import tracking
    c = Counters({"packets_in": 0, "bytes_in": 0, "frames_in": 0})
    t = tracking.StreamTracker(c, logging.getLogger("t"))
    live = frame.Frame("gw1", 1, 0, 0, 1, 0, 0, memoryview(b""))
    for i in range(200_000):
        if i % 1000 == 0:
            t.track(live)
            live = frame.Frame("gw1", 1, live.seq + 1, live.pkt_seq + 1, 1, 0, 0, memoryview(b""))
        t.track(frame.Frame(f"forged{i}", i, 0, 0, 0, 0, 0, memoryview(b"")))
    assert len(t.streams) == MAX_STREAMS
    assert c["streams_forgotten"] == 200_000 + 1 - MAX_STREAMS
    assert ("gw1", 1) in t.streams and c["dropped.transit"] == 0
