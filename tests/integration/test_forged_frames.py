"""Frames forged by someone who reaches the socket without CURVE, sent over
real ZeroMQ to nflog-pcap-recv and nflog-zmq-decompress processes: what a
header claims never counts beyond what its bytes could hold or the stream
could have sent (docs/frame-format.md, "What a stranger can forge")."""

from __future__ import annotations

import struct
import zlib

import pytest
import zmq
from lab import (
    Daemon,
    free_port,
    record_area,
    tool,
    wait_until,
)

from nflog_pipe import frame

area = record_area


def counters(d: Daemon) -> dict:
    recs = [r for r in d.records() if r.get("event") in ("stats", "totals")]
    return recs[-1]["counters"] if recs else {}


@pytest.fixture(params=["nflog-pcap-recv", "nflog-zmq-decompress"])
def stage(request, tmp_path):
    """A stage as a process, a PUSH socket into it, and (relay) what it passes on."""
    ctx = zmq.Context()
    src = f"tcp://127.0.0.1:{free_port()}"
    pull = None
    if request.param == "nflog-pcap-recv":
        dst = str(tmp_path / "out.pcap")
    else:
        dst = f"tcp://127.0.0.1:{free_port()}"
        pull = ctx.socket(zmq.PULL)
        pull.bind(dst)
    d = Daemon([tool(request.param), src, dst, "--log-format", "json", "--stats-interval", "0.2"],
               tmp_path / "stage.log")
    d.wait_log("start")
    push = ctx.socket(zmq.PUSH)
    push.linger = 2000
    push.connect(src)
    yield d, push
    d.kill()
    push.close(linger=0)
    if pull is not None:
        pull.close(linger=0)
    ctx.term()


def settle(d: Daemon, frames: int) -> dict:
    wait_until(lambda: counters(d).get("frames_in") == frames, what=f"{frames} frames")
    return d.stop()["counters"]


def test_implausible_jump_is_a_stream_reset_not_loss(stage):
    d, push = stage
    push.send(frame.encode("x", 7, 0, 0, 1, area(1)))
    push.send(frame.encode("x", 7, 1, 2**63, 1, area(1)))     # the 9.2e18
    push.send(frame.encode("x", 7, 2, 2**63 + 1, 1, area(1)))
    push.send(frame.encode("x", 7, 3, 2**63 + 6, 1, area(1)))  # a real gap: 4 packets
    c = settle(d, 4)
    assert c["dropped.transit"] == 4 and c["streams_reset"] == 1
    assert c["packets_in"] == 8


def test_rewound_stream_does_not_count_again(stage):
    d, push = stage
    for i in range(10):  # the real stream: 10 frames of 5 packets
        push.send(frame.encode("gw", 3, i, 5 * i, 5, area(5)))
    push.send(frame.encode("gw", 3, 0, 0, 1, area(1)))        # replayed: pkt_seq rewound
    push.send(frame.encode("gw", 3, 1, 1, 1, area(1)))
    push.send(frame.encode("gw", 3, 10, 50, 5, area(5)))     # the real stream goes on
    c = settle(d, 13)
    assert c["dropped.transit"] == 0 and c["frames_rewound"] == 1
    assert c["packets_in"] == 57  # the forged records did enter, and are counted once


def forged_header(version=1, flags=0, codec=0, count=4_194_304, raw_len=64 << 20,
                  payload=b"") -> bytes:
    return struct.pack("<4sBBBBIIQQII", frame.MAGIC, version, flags, codec, 0, 1, count, 0, 0,
                       raw_len, len(payload)) + payload


def test_rejected_frames_count_at_most_what_their_bytes_hold(stage):
    d, push = stage
    push.send(forged_header(version=2))                   # 40 bytes claiming 4 194 304 records
    push.send(forged_header(flags=0x80))                  # unknown flag
    push.send(forged_header(flags=frame.FLAG_COMPRESSED, codec=1, payload=b"\x78\x9c" + b"\0" * 30))
    push.send(forged_header(codec=5, count=10, raw_len=10 * 16 + 100, payload=b"\0" * 260))
    # a real compressed frame of another version: counted in full (its bytes can hold it)
    records = area(100)
    real = bytearray(frame.encode("gw", 9, 0, 0, 100, records, codec=frame.CODEC_ZLIB))
    real[4] = 2
    push.send(bytes(real))
    c = settle(d, 5)
    assert c["frames_dropped.malformed"] == 5
    # 0 + 0 + (32 * 1032 // 16 = 2064, the most 32 compressed bytes can expand to)
    # + 260 // 16 + 100
    assert c["dropped.malformed"] == 0 + 0 + 2064 + 10 + 100
    assert len(zlib.compress(records)) * frame.MAX_EXPANSION // 16 >= 100
