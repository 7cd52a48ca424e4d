"""outgoing: the one rule for a frame on its way out (sent, held or dropped), by table,
and try_send against real ZeroMQ sockets."""

from __future__ import annotations

import pytest
import zmq

from nflog_pipe import frame, outgoing
from nflog_pipe.metrics import Counters
from nflog_pipe.outgoing import DROPPED, HELD, SENT

REC = 16  # record header bytes, counted in raw_len but not in bytes_out

# accepted, can_grow -> outcome, (seq, pkt_seq) after, counters changed
TABLE = [
    (True, True, SENT, (1, 3), {"frames_out": 1, "packets_out": 3, "bytes_out": 300}),
    (True, False, SENT, (1, 3), {"frames_out": 1, "packets_out": 3, "bytes_out": 300}),
    (False, True, HELD, (0, 0), {}),
    (False, False, DROPPED, (0, 0), {"dropped.queue_full": 3, "frames_dropped.queue_full": 1}),
]


@pytest.mark.parametrize(("accepted", "can_grow", "outcome", "numbers", "changed"), TABLE)
def test_one_attempt(accepted, can_grow, outcome, numbers, changed):
    c = Counters()
    st = outgoing.Stream(c, instance=5)
    before = dict(c)
    assert st.result(accepted, 3, 300 + 3 * REC, can_grow) is outcome
    assert (st.seq, st.pkt_seq) == numbers
    assert {k: v - before.get(k, 0) for k, v in c.items() if v != before.get(k, 0)} == changed


def test_a_refused_frame_takes_no_number_and_the_next_header_shows_no_gap():
    c = Counters()
    st = outgoing.Stream(c, instance=9)
    sid = b"gw"
    events = [(True, 2), (False, 4), (False, 4), (True, 6), (True, 1)]  # (accepted, count)
    headers = []
    for accepted, count in events:
        buf = bytearray(frame.HEADER_SIZE + len(sid) + count * REC)
        buf[frame.HEADER_SIZE : frame.HEADER_SIZE + len(sid)] = sid
        st.pack_header(buf, sid, count, count * REC)
        if accepted:
            headers.append(frame.decode(bytes(buf)))
        st.result(accepted, count, count * REC, can_grow=False)
    assert [(h.seq, h.pkt_seq, h.count, h.instance) for h in headers] == [
        (0, 0, 2, 9), (1, 2, 6, 9), (2, 8, 1, 9)]
    assert c["dropped.queue_full"] == 8 and c["frames_dropped.queue_full"] == 2
    assert c["packets_out"] == 9


@pytest.fixture
def pair():
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = 1
    pull.bind("inproc://outgoing-test")
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 1
    push.linger = 0
    push.connect("inproc://outgoing-test")
    yield push, pull
    push.close()
    pull.close()
    ctx.term()


def test_try_send_never_waits_and_reports_a_full_queue(pair):
    push, pull = pair
    results = [outgoing.try_send(push, b"x" * 100) for _ in range(10)]
    assert results[0] is True and results[-1] is False  # the peer never reads: the queue fills
    got = 0
    while pull.poll(0):
        pull.recv()
        got += 1
    assert got == results.count(True)


def test_a_sent_buffer_can_be_written_again_at_once(pair):
    """The frame is copied into ZeroMQ's message: the sender refills its area
    right after try_send, and what leaves is what was there at the call."""
    push, pull = pair
    buf = bytearray(b"a" * 300_000)
    assert outgoing.try_send(push, memoryview(buf))
    buf[:] = b"b" * 300_000
    assert pull.recv() == b"a" * 300_000
