"""The sender's decisions, without sockets or kernel: batching.SenderCore by table, then
the thin loop (sender.Sender) driven by a scripted reader over real ZeroMQ sockets, to
show that both send paths (plain and --rate-control) follow outgoing's one rule."""

from __future__ import annotations

import struct
import types

import pytest
import zmq

from nflog_pipe import batching, frame, outgoing, pcap, ratecontrol
from nflog_pipe.metrics import Counters
from nflog_pipe.outgoing import DROPPED, HELD, SENT
from nflog_pipe.sender import Sender


def core(n: int) -> batching.SenderCore:
    return batching.SenderCore([outgoing.Stream(Counters()) for _ in range(n)])


# Each scenario: areas, then steps (method, arguments, expected answer).  "outcome" steps
# return whether the area is now empty; the others the areas to send, as (area, can_grow).
SCENARIOS = {
    "one destination: each drain makes a frame": (1, [
        ("filled", (0.0, [5]), None),
        ("due", (0.0, [5]), [(0, True)]),
        ("outcome", (0, SENT), True),
        ("due", (0.1, [0]), []),
        ("next_due", (), None),
    ]),
    "one destination: a full queue holds a frame that can grow, then POLLOUT retries it": (1, [
        ("filled", (0.0, [5]), None),
        ("due", (0.0, [5]), [(0, True)]),
        ("outcome", (0, HELD), False),
        ("due", (0.5, [9]), []),          # held: not offered again at each drain
        ("next_due", (), None),
        ("writable", (0,), [(0, True)]),
        ("outcome", (0, SENT), True),
        ("writable", (0,), []),
    ]),
    "one destination: a held area that fills up goes out and cannot grow": (1, [
        ("filled", (0.0, [5]), None),
        ("due", (0.0, [5]), [(0, True)]),
        ("outcome", (0, HELD), False),
        ("full", ([False],), [(0, False)]),
        ("outcome", (0, DROPPED), True),
        ("due", (1.0, [0]), []),
    ]),
    "two destinations: an area waits HOLD for more records": (2, [
        ("filled", (0.000, [3, 0]), None),
        ("due", (0.005, [3, 0]), []),
        ("next_due", (), 0.01),
        ("filled", (0.006, [4, 2]), None),   # area 0 keeps its first time
        ("due", (0.010, [4, 2]), [(0, True)]),
        ("outcome", (0, SENT), True),
        ("next_due", (), pytest.approx(0.016)),
        ("due", (0.016, [0, 2]), [(1, True)]),
    ]),
    "two destinations: a full area goes out at once, the other one waits": (2, [
        ("filled", (0.0, [30, 1]), None),
        ("full", ([False, True],), [(0, False)]),
        ("outcome", (0, SENT), True),
        ("due", (0.001, [0, 1]), []),
    ]),
    "two destinations: a held area does not hold up the other": (2, [
        ("filled", (0.0, [3, 3]), None),
        ("due", (0.02, [3, 3]), [(0, True), (1, True)]),
        ("outcome", (0, HELD), False),
        ("outcome", (1, SENT), True),
        ("filled", (0.03, [5, 2]), None),
        ("next_due", (), pytest.approx(0.04)),
        ("due", (0.04, [5, 2]), [(1, True)]),
    ]),
    "exit: every non-empty area, none can grow": (3, [
        ("filled", (0.0, [1, 0, 2]), None),
        ("final", ([1, 0, 2],), [(0, False), (2, False)]),
    ]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name):
    n, steps = SCENARIOS[name]
    c = core(n)
    for method, args, expected in steps:
        got = getattr(c, method)(*args)
        assert got == expected, f"{name}: {method}{args}"


def test_hold_is_zero_for_one_destination_and_10ms_for_several():
    assert core(1).hold == 0.0 and core(2).hold == batching.SenderCore.HOLD == 0.01


# -- the loop around the core, with a scripted reader --------------------------------
SID = b"gw"
ROOM = frame.HEADER_SIZE + len(SID)


def record(n: int) -> bytes:
    data = b"p%03d" % n
    return struct.pack("<IIII", 1, n, len(data), len(data)) + data


class ScriptedReader:
    """The reader's interface (nflog.NflogReader) over a script of reads: each read
    appends records to area 0 and returns a status (0 drained, 1 an area is full)."""

    def __init__(self, script):
        self.script = list(script)
        self.header_room = ROOM
        self.fd = -1
        self.buf = bytearray(ROOM + 4096)
        self.len = self.count = 0
        self.room = True
        self.batch = types.SimpleNamespace(cap=4096, packets=0, bytes=0, recvs=0, seq_lost=0,
                                           enobufs=0, malformed=0, nl_errors=0, count=0)

    def read(self):
        records, status = self.script.pop(0)
        for n in records:
            r = record(n)
            self.buf[ROOM + self.len : ROOM + self.len + len(r)] = r
            self.len += len(r)
            self.count += 1
            self.batch.count = self.count
            self.batch.packets += 1
        self.room = status != 1
        return status

    def area_count(self, i):
        return self.count

    def area_len(self, i):
        return self.len

    def area_frame(self, i):
        return memoryview(self.buf)[: ROOM + self.len]

    def area_room(self, i):
        return self.room

    def reset_area(self, i):
        self.len = self.count = self.batch.count = 0


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def make_sender(ctx, script, rc=None):
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    push.sndhwm = 1
    rt = types.SimpleNamespace(counters=Counters())
    return Sender(ScriptedReader(script), [push], SID, rt, None, rc), push


def received(pull) -> list[tuple[int, int, list[int]]]:
    out = []
    while pull.poll(200):
        f = frame.decode(pull.recv())
        out.append((f.seq, f.pkt_seq, [int(r.data[1:]) for r in pcap.iter_records(f.records)]))
    return out


@pytest.mark.parametrize("controlled", [False, True], ids=["plain", "rate-control"])
def test_a_full_queue_holds_the_growing_area_then_drops_it_full_and_counts(zctx, controlled):
    rc = ratecontrol.RateController(0, 0, 1 << 20) if controlled else None
    s, push = make_sender(zctx, [([1, 2], 0), ([3], 0), ([4], 1), ([], 0), ([5], 0)], rc)
    c = s.c
    # no peer yet: ZeroMQ takes nothing.  Records 1, 2 (drained): held; 3 joins them
    s.pump()
    s.pump()
    assert s.core.waiting == [True] and c["dropped.queue_full"] == 0
    s.pump()  # 4 fills the area: the held area cannot grow any more -> dropped, counted
    assert c["dropped.queue_full"] == 4 and c["frames_dropped.queue_full"] == 1
    assert c["packets_out"] == 0
    pull = zctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    assert push.poll(2000, zmq.POLLOUT)
    s.pump()  # record 5: sent, numbered as the first frame (the dropped one took no number)
    assert received(pull) == [(0, 0, [5])]
    assert (c["packets_out"], c["frames_out"]) == (1, 1)
    pull.close()


@pytest.mark.parametrize("controlled", [False, True], ids=["plain", "rate-control"])
def test_a_held_area_goes_out_whole_when_the_socket_can_take_it(zctx, controlled):
    rc = ratecontrol.RateController(0, 0, 1 << 20) if controlled else None
    s, push = make_sender(zctx, [([1], 0), ([2, 3], 0)], rc)
    s.pump()
    s.pump()
    assert s.core.waiting == [True] and s.c["dropped.queue_full"] == 0
    pull = zctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    assert push.poll(2000, zmq.POLLOUT)
    s._out(s.core.writable(0))
    assert received(pull) == [(0, 0, [1, 2, 3])]
    assert s.core.waiting == [False] and s.c["packets_out"] == 3
    pull.close()
