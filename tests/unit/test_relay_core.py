"""relay.RelayCore, the relay without sockets: frames in -> frames out, and what a full
queue does to them (outgoing's rule: a relay's frames cannot grow, so they are dropped
and counted), by table."""

from __future__ import annotations

import struct

import pytest

from nflog_pipe import codec, frame, pcap, ratecontrol
from nflog_pipe.metrics import Counters
from nflog_pipe.outgoing import DROPPED, SENT
from nflog_pipe.relay import COMPRESS, DECOMPRESS, RelayCore

RECS = b"".join(pcap.record(1, i, b"\x45" + bytes(27)) for i in range(3))


def plain(seq=0, sid=b"gw", count=3, records=RECS):
    return frame.encode(sid, 11, seq, seq * count, count, records)


def zlib_frame(seq=0):
    return frame.encode(b"gw", 11, seq, seq * 3, 3, RECS, codec.ZLIB)


# mode, frame in -> frames out (count, codec), counters changed
TABLE = [
    ("decompress: a plain frame passes as it is", DECOMPRESS, plain(), [(3, codec.NONE)],
     {"frames_in": 1, "packets_in": 3}),
    ("decompress: a compressed frame is expanded", DECOMPRESS, zlib_frame(), [(3, codec.NONE)],
     {"frames_in": 1, "packets_in": 3}),
    ("a frame cut short: counted, the count its header announces is not trusted", DECOMPRESS,
     plain()[:-5], [], {"frames_dropped.malformed": 1}),
    ("a bad record in a whole frame: the frame and its packets counted", DECOMPRESS,
     plain(records=RECS[:-44] + struct.pack("<IIII", 1, 2, 28, 1) + bytes(28)), [],
     {"frames_dropped.malformed": 1, "dropped.malformed": 3, "packets_in": 3}),
    ("a frame that is not one at all", COMPRESS, b"GET / HTTP/1.0\r\n\r\n", [],
     {"frames_dropped.malformed": 1}),
    ("compress below --lwm: passed on", COMPRESS, plain(), [(3, codec.NONE)],
     {"frames_in": 1, "packets_in": 3}),
]


@pytest.mark.parametrize(("name", "mode", "data", "outs", "changed"), TABLE,
                         ids=[t[0] for t in TABLE])
def test_frame_in(name, mode, data, outs, changed):
    rc = ratecontrol.RateController(0, 0, 1 << 20) if mode == COMPRESS else None
    core = RelayCore(mode, rc)
    before = dict(core.c)
    got = core.handle(data, "peer")
    assert [(o.count, o.codec) for o in got] == outs
    diff = {k: v - before.get(k, 0) for k, v in core.c.items() if v != before.get(k, 0)}
    assert {k: v for k, v in diff.items()
            if k in changed or k.startswith(("dropped.", "frames_dropped."))} == changed
    for out in got:  # what goes out is a whole, valid frame of the same records
        f = frame.decode(core.frame_of(out))
        assert bytes(f.records) == RECS and f.sender_id == "gw"


def test_compress_above_lwm_squashes_and_compresses():
    clock = [0.0]
    rc = ratecontrol.RateController(1, 0, 1 << 20, delay=0.05, clock=lambda: clock[0])
    core = RelayCore(COMPRESS, rc)
    outs = []
    for seq in range(4):
        clock[0] += 0.001
        outs += core.handle(plain(seq), "peer")
    assert outs == [] and core.timeout() is not None  # held for squashing
    clock[0] += 0.1
    outs = core.tick()
    assert [(o.count, o.codec != codec.NONE) for o in outs] == [(12, True)]
    f = frame.decode(core.frame_of(outs[0]))
    assert f.count == 12 and bytes(f.records) == RECS * 4


# what ZeroMQ did with each frame out -> outcome, (seq, pkt_seq) of the next frame out
SENDS = [
    ([True], [SENT], (1, 3)),
    ([False], [DROPPED], (0, 0)),
    ([True, False, True], [SENT, DROPPED, SENT], (2, 6)),
]


@pytest.mark.parametrize(("accepted", "outcomes", "next_numbers"), SENDS)
def test_a_full_queue_drops_and_counts_and_the_numbering_shows_no_gap(accepted, outcomes,
                                                                        next_numbers):
    core = RelayCore(DECOMPRESS, None, Counters())
    got = []
    for i, ok in enumerate(accepted):
        (out,) = core.handle(plain(i), "peer")
        core.frame_of(out)
        got.append(core.result(out, ok))
    assert got == outcomes
    dropped = accepted.count(False)
    assert core.c["dropped.queue_full"] == 3 * dropped
    assert core.c["frames_dropped.queue_full"] == dropped
    assert core.c["packets_out"] == 3 * accepted.count(True)
    (out,) = core.handle(plain(len(accepted)), "peer")
    f = frame.decode(core.frame_of(out))
    assert (f.seq, f.pkt_seq) == next_numbers and f.instance == core.out.instance


def test_modes_are_checked():
    with pytest.raises(ValueError):
        RelayCore("sideways")
    with pytest.raises(ValueError):
        RelayCore(DECOMPRESS, ratecontrol.RateController(0, 0, 1 << 20))
