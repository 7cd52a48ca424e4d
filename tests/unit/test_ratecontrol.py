"""The rate controller driven by a fake clock: which frames pass unchanged,
which are squashed and compressed, which are dropped, and how fast what goes
on goes on."""

import argparse
import itertools

import pytest

from nflog_pipe import codec, pcap, ratecontrol
from nflog_pipe.ratecontrol import MiB, RateController, RateMeter, TokenBucket, record_prefix


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


_serial = itertools.count()


def area(size: int, count: int = 1) -> bytes:
    """A distinct, well-formed record area of ``count`` records, ``size`` bytes."""
    tag = next(_serial).to_bytes(8, "little")
    data = size - 16 * count
    lens = [data // count] * count
    lens[-1] += data - sum(lens)
    return b"".join(pcap.record(i, 0, (tag * (n // 8 + 1))[:n], n) for i, n in enumerate(lens))


class Feed:
    """Offers frames at a steady rate and runs the controller's timer the way
    a daemon's poll loop does; keeps what came out with its send time."""

    def __init__(self, rc: RateController, clock: Clock):
        self.rc, self.clock = rc, clock
        self.offered: list[tuple[bytes, bytes, int, float]] = []  # key, records, count, t
        self.out: list[tuple[ratecontrol.Output, float]] = []

    def run(self, rate: float, seconds: float, frame: int = 16384, key: bytes = b"gw",
            per_packet: int = 512):
        step = frame / rate
        end = self.clock.t + seconds
        nxt = self.clock.t
        while nxt < end:
            t = self.rc.timeout(self.clock.t)
            if t is not None and self.clock.t + t < nxt:
                self.clock.t += t
                self._took(self.rc.poll())
                continue
            self.clock.t = nxt
            count = max(1, frame // per_packet)
            rec = area(frame, count)
            self.offered.append((key, rec, count, self.clock.t))
            self._took(self.rc.offer(key, rec, count))
            nxt += step

    def idle(self, seconds: float):
        end = self.clock.t + seconds
        while (t := self.rc.timeout(self.clock.t)) is not None and self.clock.t + t <= end:
            self.clock.t += t
            self._took(self.rc.poll())
        self.clock.t = end

    def _took(self, outs):
        self.out += [(o, self.clock.t) for o in outs]

    def passed(self, since: float = 0.0):
        return [o for o, t in self.out if t >= since and o.codec == codec.NONE]

    def compressed(self, since: float = 0.0):
        return [o for o, t in self.out if t >= since and o.codec != codec.NONE]

    def records_out(self, key: bytes = b"gw") -> bytes:
        return b"".join(bytes(o.payload) if o.codec == codec.NONE
                        else codec.decompress(o.codec, o.payload, o.raw_len)
                        for o, _ in self.out if o.key == key)


def make(lwm=1.0, hwm=5.0, wm=1.0, **kw):
    clock = Clock()
    rc = RateController(lwm * MiB, hwm * MiB, wm * MiB, clock=clock, **kw)
    return rc, Feed(rc, clock), clock


# -- the three regimes -----------------------------------------------------------

def test_below_lwm_every_frame_passes_unchanged_and_at_once():
    rc, feed, clock = make()
    feed.run(0.5 * MiB, 5.0)
    assert len(feed.out) == len(feed.offered) > 100
    for (o, t), (_key, rec, count, t_in) in zip(feed.out, feed.offered, strict=True):
        assert o.codec == codec.NONE and o.payload is rec and o.count == count
        assert t == t_in  # no delay at all
    assert rc.c["compressed_frames"] == 0 and rc.c["dropped.hwm"] == 0
    assert rc.timeout() is None


def test_between_watermarks_frames_are_squashed_compressed_and_bounded_in_delay():
    rc, feed, clock = make(delay=0.1, batch_bytes=256 * 1024)
    feed.run(0.5 * MiB, 2.0)
    t0 = clock.t
    feed.run(3 * MiB, 5.0)
    # after the meter has seen the new rate (well under a second), everything
    # is compressed; nothing is dropped
    later = t0 + 0.5
    assert feed.passed(later) == []
    comp = feed.compressed(later)
    assert len(comp) > 20
    assert all(o.codec == codec.ZLIB and o.raw_len <= 256 * 1024 for o in comp)
    assert rc.c["dropped.hwm"] == 0
    feed.idle(1.0)
    assert rc.timeout() is None and rc.pending_bytes == 0
    # nothing lost, nothing reordered, byte for byte
    assert feed.records_out() == b"".join(r for _, r, _, _ in feed.offered)
    assert sum(o.count for o, _ in feed.out) == sum(c for _, _, c, _ in feed.offered)


def test_squashed_data_leaves_within_the_delay_at_light_traffic():
    # a tiny low watermark: compress everything, however light
    rc, feed, clock = make(lwm=0.001, delay=0.2)
    t_in = clock.t
    assert rc.offer(b"gw", area(3000, 3), 3) == []
    assert rc.timeout() == pytest.approx(0.2)
    clock.t += 0.1
    assert rc.offer(b"gw", area(3000, 3), 3) == [] and rc.poll() == []
    clock.t = t_in + 0.2
    (o,) = rc.poll()
    assert o.codec == codec.ZLIB and o.count == 6 and o.raw_len == 6000
    assert rc.timeout() is None
    # steady light traffic: every packet leaves at most `delay` after it came in
    rc, feed, clock = make(lwm=0.001, delay=0.2)
    feed.run(0.01 * MiB, 10.0, frame=1500, per_packet=1500)
    feed.idle(1.0)
    assert {o.codec for o, _ in feed.out} == {codec.ZLIB}
    starts = iter(t for _, _, _, t in feed.offered)
    delays = [t_out - next(starts) for o, t_out in feed.out for _ in range(o.count)]
    assert len(delays) == len(feed.offered) > 60
    assert max(delays) <= 0.2 + 1e-9 and min(delays) >= 0


def test_above_hwm_only_the_excess_is_dropped_and_the_output_rate_stays_near_hwm():
    rc, feed, clock = make(lwm=1.0, hwm=5.0, wm=1.0)
    feed.run(20 * MiB, 10.0, frame=65536, per_packet=1024)
    feed.idle(1.0)
    offered = sum(len(r) for _, r, _, _ in feed.offered)
    out_raw = sum(o.raw_len for o, _ in feed.out)
    # about a quarter goes on: 5 MiB/s of 20, plus the 1 MiB burst allowance
    assert out_raw / 10.0 == pytest.approx(5 * MiB, rel=0.05)
    assert 0.2 < out_raw / offered < 0.3
    packets_in = sum(c for _, _, c, _ in feed.offered)
    packets_out = sum(o.count for o, _ in feed.out)
    assert packets_out + rc.c["dropped.hwm"] == packets_in
    assert rc.c["dropped.hwm"] > 0
    # spread over time, not all of one window: every second carries about hwm
    for sec in range(1, 10):
        in_slot = sum(o.raw_len for o, t in feed.out if 1000 + sec <= t < 1001 + sec)
        assert in_slot == pytest.approx(5 * MiB, rel=0.1), sec
    # above lwm too: what goes on is compressed
    assert feed.passed(1000.5) == []


@pytest.mark.parametrize("offered,expect_fraction", [(4.0, 1.0), (7.5, 5 / 7.5), (50.0, 0.1)])
def test_dropping_is_proportionate(offered, expect_fraction):
    rc, feed, clock = make(lwm=0, hwm=5.0, wm=0.5)
    feed.run(offered * MiB, 20.0, frame=32768)
    passed = sum(o.raw_len for o, _ in feed.out)
    total = sum(len(r) for _, r, _, _ in feed.offered)
    assert passed / total == pytest.approx(expect_fraction, rel=0.05)


def test_phases_pass_compress_drop_pass():
    rc, feed, clock = make(lwm=1.0, hwm=4.0, wm=0.25, delay=0.05)
    feed.run(0.3 * MiB, 3.0)
    t1 = clock.t
    feed.run(2.5 * MiB, 3.0)
    t2 = clock.t
    feed.run(12 * MiB, 3.0)
    t3 = clock.t
    feed.run(0.3 * MiB, 4.0)
    feed.idle(1.0)
    modes = []
    for start, end in ((1000.0, t1), (t1 + 0.5, t2), (t2 + 0.5, t3), (t3 + 1.5, clock.t)):
        outs = [o for o, t in feed.out if start <= t < end]
        modes.append({"passed": sum(o.codec == codec.NONE for o in outs),
                      "compressed": sum(o.codec != codec.NONE for o in outs)})
    assert modes[0]["compressed"] == 0 and modes[0]["passed"] > 50
    assert modes[1]["passed"] == 0 and modes[1]["compressed"] > 10
    assert modes[2]["passed"] == 0 and modes[2]["compressed"] > 10
    assert modes[3]["compressed"] == 0 and modes[3]["passed"] > 30
    dropped_in_phase3 = rc.c["dropped.hwm"]
    assert dropped_in_phase3 > 0
    # what was not dropped arrives whole and in order
    packets_in = sum(c for _, _, c, _ in feed.offered)
    assert sum(o.count for o, _ in feed.out) + rc.c["dropped.hwm"] == packets_in


def test_pass_after_compress_sends_the_waiting_squash_first():
    rc, feed, clock = make(lwm=1.0, hwm=0, wm=0.1, delay=0.5)
    feed.run(4 * MiB, 0.5)
    assert rc.pending_bytes > 0
    clock.t += 1.5  # the meter forgets the burst, nothing polled meanwhile
    rec = area(100)
    outs = rc.offer(b"gw", rec, 1)
    assert [o.codec for o in outs][-2:] == [codec.ZLIB, codec.NONE] and outs[-1].payload is rec
    assert feed.records_out() + b"".join(
        bytes(o.payload) if o.codec == codec.NONE else codec.decompress(o.codec, o.payload,
                                                                        o.raw_len)
        for o in outs) == b"".join(r for _, r, _, _ in feed.offered) + rec


def test_squashing_never_mixes_senders():
    rc, feed, clock = make(lwm=0.001, hwm=0, delay=0.1, batch_bytes=20000)
    sent = {b"a": [], b"b": [], b"c": []}
    for i in range(300):
        key = (b"a", b"b", b"c")[i % 3 if i % 7 else 0]
        rec = area(1000 + i)
        sent[key].append(rec)
        clock.t += 0.002
        feed._took(rc.offer(key, rec, 1))
        feed._took(rc.poll())
    feed._took(rc.flush())
    for key, recs in sent.items():
        assert feed.records_out(key) == b"".join(recs)
        assert sum(o.count for o, _ in feed.out if o.key == key) == len(recs)
    assert all(o.raw_len <= 20000 for o, _ in feed.out)


def test_a_frame_bigger_than_the_squash_size_goes_alone():
    rc, feed, clock = make(lwm=0.001, hwm=0, batch_bytes=4096)
    assert rc.offer(b"gw", area(2000), 1) == []  # 2000 B/s: above lwm
    outs = rc.offer(b"gw", area(10000, 2), 2)
    assert [(o.count, o.raw_len) for o in outs] == [(1, 2000), (2, 10000)]
    assert rc.pending_bytes == 0


def test_watermarks_off():
    rc, feed, clock = make(lwm=0, hwm=0)
    feed.run(100 * MiB, 1.0, frame=262144)
    assert len(feed.passed()) == len(feed.offered)
    assert rc.c["dropped.hwm"] == 0 and rc.c["compressed_frames"] == 0


def test_zstd_codec_and_level():
    rc, feed, clock = make(lwm=0.001, hwm=0, compressor=codec.Compressor(codec.ZSTD, 9))
    feed.run(0.5 * MiB, 1.0)
    feed.idle(1.0)
    assert {o.codec for o, _ in feed.out[1:]} == {codec.ZSTD}
    assert feed.records_out() == b"".join(r for _, r, _, _ in feed.offered)


# -- the parts ------------------------------------------------------------------

@pytest.mark.parametrize("rate,frame", [(0.2 * MiB, 1500), (3 * MiB, 65536), (40 * MiB, 262144),
                                        (2 * MiB, 100)])
def test_meter_measures_steady_rates(rate, frame):
    m = RateMeter(MiB)
    t, step = 0.0, frame / rate
    for _ in range(int(3 * rate / frame) + 2):
        m.add(t, frame)
        t += step
    assert m.rate(t - step) == pytest.approx(rate, rel=0.05)


def test_meter_forgets_within_a_second():
    m = RateMeter(MiB)
    for i in range(100):
        m.add(i * 0.001, 65536)  # 6.4 MiB in 0.1 s
    assert m.rate(0.1) > 50 * MiB
    assert m.rate(1.2) == 0


def test_bucket_allows_a_burst_then_the_rate():
    b = TokenBucket(1000.0, 5000.0, 0.0)
    assert b.full and b.budget(0.0) == 5000
    b.spend(4500)
    assert b.budget(0.0) == 500 and not b.full
    assert b.budget(1.0) == 1500
    assert b.budget(100.0) == 5000  # never more than the burst


def test_record_prefix_cuts_at_record_boundaries():
    rec = area(1000, 10)  # ten records of 100 bytes
    assert record_prefix(rec, 10, 0) == (0, 0)
    assert record_prefix(rec, 10, 99) == (0, 0)
    assert record_prefix(rec, 10, 99, at_least_one=True) == (1, 100)
    assert record_prefix(rec, 10, 100) == (1, 100)
    assert record_prefix(rec, 10, 950) == (9, 900)
    assert record_prefix(rec, 10, 1000) == (10, 1000)
    assert record_prefix(rec, 10, 5000) == (10, 1000)


def test_above_hwm_a_frame_keeps_its_leading_records_that_fit():
    rc, feed, clock = make(lwm=0, hwm=1000 / MiB, wm=1000 / MiB)
    first = area(1600, 16)
    (o,) = rc.offer(b"gw", first, 16)  # the bucket holds 1000 bytes: 10 records
    assert (o.count, o.raw_len, bytes(o.payload)) == (10, 1000, first[:1000])
    assert rc.c["dropped.hwm"] == 6 and rc.c["frames_dropped.hwm"] == 0
    assert rc.offer(b"gw", area(1600, 16), 16) == []  # empty bucket: dropped whole
    assert rc.c["dropped.hwm"] == 22 and rc.c["frames_dropped.hwm"] == 1
    clock.t += 0.5  # 500 bytes more
    (o,) = rc.offer(b"gw", area(1600, 16), 16)
    assert o.count == 5
    clock.t += 10  # full again: one record larger than the whole burst still passes
    (o,) = rc.offer(b"gw", area(3000, 1), 1)
    assert o.count == 1 and o.raw_len == 3000


def test_hwm_below_lwm_is_refused():
    with pytest.raises(ValueError, match="below the low watermark"):
        RateController(5 * MiB, 1 * MiB, MiB)
    args = argparse.Namespace(lwm=5.0, hwm=1.0, wm_interval=1.0, codec=codec.ZLIB,
                              compress_level=None, compress_delay=0.1, compress_batch=1024)
    with pytest.raises(ValueError, match="--hwm 1 is below --lwm 5"):
        ratecontrol.from_options(args)
    args.hwm = 0.0  # hwm off: any lwm is fine
    assert ratecontrol.from_options(args).bucket is None


def test_level_out_of_range_is_refused():
    args = argparse.Namespace(lwm=1.0, hwm=5.0, wm_interval=1.0, codec=codec.ZLIB,
                              compress_level=12, compress_delay=0.1, compress_batch=1024)
    with pytest.raises(ValueError, match="zlib level 12 is out of range"):
        ratecontrol.from_options(args)


def test_stream_tracking_is_bounded_against_invented_senders():
    import logging

    from nflog_pipe import frame, tracking
    c = {"packets_in": 0, "bytes_in": 0, "frames_in": 0}
    t = tracking.StreamTracker(c, logging.getLogger("t"))
    for i in range(tracking.MAX_STREAMS + 100):
        t.track(frame.Frame(f"s{i}", i, 0, 0, 0, 0, 0, memoryview(b"")))
    assert len(t.streams) == tracking.MAX_STREAMS
    assert c["streams_forgotten"] == 100
    assert ("s0", 0) not in t.streams
    assert (f"s{tracking.MAX_STREAMS + 99}", tracking.MAX_STREAMS + 99) in t.streams
