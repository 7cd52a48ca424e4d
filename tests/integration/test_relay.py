"""The relays over real ZeroMQ sockets on loopback: as threads (the Relay
class, like zmq.devices) and as the two commands."""

import subprocess
import time

import pytest
import zmq
from lab import PKT, Daemon, free_port, tool, wait_until

from nflog_pipe import codec, frame, pcap, ratecontrol
from nflog_pipe.ratecontrol import MiB, RateController
from nflog_pipe.relay import COMPRESS, DECOMPRESS, Relay


def ep() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def area(n: int, tag: bytes = b"") -> bytes:
    return b"".join(pcap.record(i, 0, PKT + tag + i.to_bytes(4, "big")) for i in range(n))


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    socks = []

    def sock(kind, endpoint, bind=False):
        s = ctx.socket(kind)
        s.linger = 0
        s.rcvtimeo = 10000
        (s.bind if bind else s.connect)(endpoint)
        socks.append(s)
        return s
    yield sock
    for s in socks:
        s.close()
    ctx.term()


@pytest.fixture
def relays():
    started = []

    def make(mode, src, dst, rc=None, **kw):
        r = Relay(mode, rc, **kw)
        r.bind_in(src)
        r.connect_out(dst)
        r.start()
        started.append(r)
        return r
    yield make
    for r in started:
        r.stop()
        r.join()


def recv_frames(pull, n_packets, timeout=10.0):
    got, total = [], 0
    deadline = time.monotonic() + timeout
    while total < n_packets and time.monotonic() < deadline:
        f = frame.decode(pull.recv())
        got.append(f)
        total += f.count
    return got


def test_compress_then_decompress_is_byte_identical_and_renumbered(zctx, relays):
    a, b, c = ep(), ep(), ep()
    out = zctx(zmq.PULL, c, bind=True)
    rc = RateController(0.0001 * MiB, 0, MiB, codec.Compressor(codec.ZSTD, 5), delay=0.05)
    comp = relays(COMPRESS, a, b, rc)
    dec = relays(DECOMPRESS, b, c)
    push = zctx(zmq.PUSH, a)
    areas = {"gw-a": [], "gw-b": []}
    seq = {"gw-a": 0, "gw-b": 0}
    for i in range(60):
        sid = "gw-a" if i % 3 else "gw-b"
        rec = area(1 + i % 7, sid.encode())
        areas[sid].append(rec)
        n = 1 + i % 7
        push.send(frame.encode(sid, 42, i, seq[sid], n, rec))
        seq[sid] += n
    frames = recv_frames(out, sum(seq.values()))
    by_sid = {sid: b"".join(bytes(f.records) for f in frames if f.sender_id == sid)
              for sid in areas}
    assert by_sid == {sid: b"".join(r) for sid, r in areas.items()}
    assert {f.flags for f in frames} == {0}
    # renumbered by the decompress relay: one instance, seq and pkt_seq from 0 per sender
    assert len({f.instance for f in frames}) == 1 and frames[0].instance != 42
    for sid in areas:
        fs = [f for f in frames if f.sender_id == sid]
        assert [f.seq for f in fs] == list(range(len(fs)))
        assert [f.pkt_seq for f in fs] == [sum(g.count for g in fs[:i]) for i in range(len(fs))]
    # the compress relay squashed: fewer frames than came in, compressed with zstd
    # (all but the very first, whose rate was still below the tiny --lwm)
    assert comp.c["compressed_frames"] < 10
    assert comp.c["compressed_packets"] >= sum(seq.values()) - 1
    assert comp.c["dropped.transit"] == 0 and dec.c["dropped.transit"] == 0
    # (counters are updated right after the send: the relay thread may still be there)
    wait_until(lambda: dec.c["packets_out"] == sum(seq.values()), what="decompress counters")


def test_compress_relay_output_is_marked_compressed(zctx, relays):
    a, b = ep(), ep()
    out = zctx(zmq.PULL, b, bind=True)
    rc = RateController(0.0001 * MiB, 0, MiB, codec.Compressor(codec.ZLIB, 9), delay=0.05)
    relays(COMPRESS, a, b, rc)
    push = zctx(zmq.PUSH, a)
    push.send(frame.encode("gw", 1, 0, 0, 50, area(50)))
    raw = out.recv()
    assert raw[5] == frame.FLAG_COMPRESSED and raw[6] == frame.CODEC_ZLIB
    f = frame.decode(raw)
    assert bytes(f.records) == area(50) and len(raw) < len(area(50))


def test_relay_counts_transit_gaps_and_rejects_bad_frames(zctx, relays):
    a, b = ep(), ep()
    out = zctx(zmq.PULL, b, bind=True)
    r = relays(DECOMPRESS, a, b)
    push = zctx(zmq.PUSH, a)
    push.send(frame.encode("gw", 7, 0, 0, 2, area(2)))
    push.send(frame.encode("gw", 7, 2, 10, 3, area(3)))       # 8 packets lost before the relay
    bad = bytearray(frame.encode("gw", 7, 3, 13, 2, area(2), codec=codec.ZLIB))
    bad[-6] ^= 0xFF                                            # corrupt compressed payload
    push.send(bytes(bad))
    push.send(b"junk")
    push.send(frame.encode("gw", 7, 4, 15, 1, area(1)))
    frames = recv_frames(out, 6)
    assert [f.count for f in frames] == [2, 3, 1]
    # the link out of the relay is whole: its own numbering has no gap
    assert [f.pkt_seq for f in frames] == [0, 2, 5]
    wait_until(lambda: r.c["frames_dropped.malformed"] == 2, what="2 rejected frames")
    # the rejected frame's packets count once, as malformed, not again as a gap
    assert r.c["dropped.transit"] == 8 and r.c["dropped.malformed"] == 2
    wait_until(lambda: r.c["packets_out"] == 6, what="6 packets out")
    assert r.c["packets_in"] == 6 + 8 + 2


def test_relay_with_nothing_downstream_counts_queue_full(zctx, relays):
    a = ep()
    r = relays(DECOMPRESS, a, ep(), zmq_buffer=2)
    push = zctx(zmq.PUSH, a)
    for i in range(20):
        push.send(frame.encode("gw", 1, i, i, 1, area(1)))
    wait_until(lambda: r.c["packets_out"] + r.c["dropped.queue_full"] == 20,
               what="20 packets sent or dropped")
    assert r.c["dropped.queue_full"] > 0 and r.c["packets_in"] == 20


def test_compress_relay_drops_only_the_excess_and_counts_it(zctx, relays):
    a, b = ep(), ep()
    out = zctx(zmq.PULL, b, bind=True)
    out.rcvhwm = 0
    rc = RateController(0, 1 * MiB, 0.25 * MiB, delay=0.05)
    r = relays(COMPRESS, a, b, rc, zmq_buffer=1000)
    push = zctx(zmq.PUSH, a)
    push.sndhwm = 0
    rec = area(400)  # ~18 KiB per frame
    n = 600  # ~10 MiB, as fast as possible: well above 1 MiB/s
    for i in range(n):
        push.send(frame.encode("gw", 1, i, i * 400, 400, rec))
    wait_until(lambda: r.c["packets_out"] + r.c["dropped.hwm"] == n * 400, timeout=30,
               what="all packets sent or dropped")
    got = 0
    deadline = time.monotonic() + 10
    while got < r.c["packets_out"] and time.monotonic() < deadline:
        got += frame.decode(out.recv()).count
    assert r.c["dropped.hwm"] > 0 and got > 0
    assert got + r.c["dropped.hwm"] == n * 400


@pytest.mark.parametrize("cmd", ["nflog-zmq-compress", "nflog-zmq-decompress"])
def test_commands_help_and_bad_options(cmd):
    h = subprocess.run([tool(cmd), "--help"], capture_output=True, text=True, timeout=30)
    assert h.returncode == 0 and "NFLOG_PIPE_ZMQ_BUFFER" in h.stdout and "default: 50" in h.stdout
    b = subprocess.run([tool(cmd), "--no-such-option"], capture_output=True, text=True, timeout=30)
    assert b.returncode == 2 and "unrecognized arguments: --no-such-option" in b.stderr
    m = subprocess.run([tool(cmd), "--log-format", "text"], capture_output=True, text=True,
                       timeout=30)
    assert m.returncode == 2 and "SRC is required" in m.stderr
    bad = subprocess.run([tool(cmd), "tcp://256.1.1.1:1", "tcp://127.0.0.1:9", "--log-format",
                          "text"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "cannot bind tcp://256.1.1.1:1" in bad.stderr


@pytest.mark.parametrize("args,message", [
    (["--lwm", "5", "--hwm", "1"], "--hwm 1 is below --lwm 5"),
    (["--codec", "lz4"], "unknown codec 'lz4'"),
    (["--codec", "zstd", "--compress-level", "22"], "zstd level 22 is out of range"),
    (["--lwm", "-1"], "out of range"),
])
def test_compress_refuses_bad_settings(args, message):
    r = subprocess.run([tool("nflog-zmq-compress"), ep(), ep(), "--log-format", "text", *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_compress_settings_from_the_environment(tmp_path):
    import os
    d = Daemon([tool("nflog-zmq-compress"), ep(), ep(), "--log-format", "json"],
               tmp_path / "c.log", env={**os.environ, "NFLOG_PIPE_LWM": "0.5",
                                        "NFLOG_PIPE_CODEC": "zstd", "NFLOG_PIPE_HWM": "0"})
    start = d.wait_log("start")
    assert (start["lwm_mib_s"], start["hwm_mib_s"], start["codec"]) == (0.5, 0.0, "zstd")
    assert start["compress_level"] == 3
    totals = d.stop()
    assert totals["service"] == "compress" and totals["counters"]["dropped.hwm"] == 0


def test_commands_relay_end_to_end(tmp_path, zctx):
    a, b, c = ep(), ep(), ep()
    out = zctx(zmq.PULL, c, bind=True)
    comp = Daemon([tool("nflog-zmq-compress"), a, b, "--lwm", "0.0001", "--hwm", "0",
                   "--log-format", "json"], tmp_path / "comp.log")
    dec = Daemon([tool("nflog-zmq-decompress"), b, c, "--log-format", "json"],
                 tmp_path / "dec.log")
    comp.wait_log("start")
    dec.wait_log("start")
    push = zctx(zmq.PUSH, a)
    push.linger = 2000
    for i in range(10):
        push.send(frame.encode("gw", 3, i, i * 5, 5, area(5)))
    frames = recv_frames(out, 50)
    assert b"".join(bytes(f.records) for f in frames) == area(5) * 10
    ct, dt = comp.stop()["counters"], dec.stop()["counters"]
    assert ct["compressed_packets"] == 50 and ct["packets_out"] == 50
    assert dt["packets_in"] == 50 and dt["packets_out"] == 50


def test_from_options_defaults():
    args = ratecontrol_args()
    rc = ratecontrol.from_options(args)
    assert (rc.lwm, rc.hwm, rc.meter.window) == (MiB, 5 * MiB, MiB)
    assert rc.compressor.codec == codec.ZLIB and rc.compressor.level == 6


def ratecontrol_args(**kw):
    from nflog_pipe import config
    return config.parse_args("x", "", ratecontrol.WATERMARK_OPTIONS + ratecontrol.COMPRESS_OPTIONS,
                             [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()], {})
