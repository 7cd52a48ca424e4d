"""The traffic buffer: byte bound, eviction order and counts, snapshots,
time-window, filter and size-cap selection.  Checked against a plain list
model: the ring must keep exactly the newest records that fit."""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lab import newest_fitting

from nflog_pipe import pcap, ring
from nflog_pipe.bpf import Filter
from nflog_pipe.metrics import Counters

HDR = len(pcap.GLOBAL_HEADER_BYTES)


def udp4(sport: int, dport: int, payload: bytes) -> bytes:
    total = 28 + len(payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return ip + struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def rec(i: int, size: int = 40, ts: int | None = None, dport: int = 9) -> bytes:
    """Record number i: its number is in the payload, its time is i ms."""
    t = i * 1000 if ts is None else ts
    return pcap.record(t // 1_000_000, t % 1_000_000,
                       udp4(1000, dport, i.to_bytes(4, "big") + bytes(max(0, size - 4))))


def frames_of(records: list[bytes], sizes: list[int]) -> list[tuple[bytes, int]]:
    """Group records into frames of the given record counts (cycled)."""
    out, i, k = [], 0, 0
    while i < len(records):
        n = sizes[k % len(sizes)]
        out.append((b"".join(records[i : i + n]), len(records[i : i + n])))
        i += n
        k += 1
    return out


def fetch(snap, **kw) -> tuple[bytes, ring.Selection]:
    sel = ring.Selection(snap, **kw)
    steps = 0
    while not sel.plan(budget=kw.pop("budget", 64 << 10)):
        steps += 1
        assert steps < 100000
    out = bytearray()
    while (piece := sel.next_piece()) is not None:
        assert 0 < len(piece) <= sel.piece
        out += piece
    assert len(out) == sel.bytes
    return bytes(out), sel


def ring_content(r: ring.Ring) -> bytes:
    return fetch(r.snapshot())[0]


# -- byte bound, eviction ---------------------------------------------------------

def test_keeps_exactly_the_newest_records_that_fit():
    records = [rec(i, 1 + (i * 37) % 300) for i in range(3000)]
    c = Counters()
    r = ring.Ring(50_000, c)
    for area, n in frames_of(records, [1, 7, 30, 2]):
        r.append(memoryview(area), n)
        assert r.bytes <= r.window
    kept = newest_fitting(records, 50_000)
    assert ring_content(r) == b"".join(kept)
    assert r.records == len(kept) and r.bytes == sum(map(len, kept))
    assert c["dropped.evicted"] == len(records) - len(kept)
    assert c["bytes_dropped.evicted"] == sum(map(len, records)) - r.bytes


@settings(max_examples=60, deadline=None)
@given(window=st.integers(100, 40_000),
       sizes=st.lists(st.integers(0, 1500), min_size=1, max_size=400),
       groups=st.lists(st.integers(1, 40), min_size=1, max_size=8),
       block=st.sampled_from([4096, 16384, 1 << 20]))
def test_byte_bound_model(window, sizes, groups, block):
    records = [rec(i, s) for i, s in enumerate(sizes)]
    c = Counters()
    r = ring.Ring(window, c, block=block)
    seen = []
    for area, n in frames_of(records, groups):
        r.append(memoryview(area), n)
        seen.extend(records[len(seen) : len(seen) + n])
        kept = newest_fitting(seen, window)
        assert r.bytes == sum(map(len, kept)) <= window
        assert r.records == len(kept)
        assert c["dropped.evicted"] == len(seen) - len(kept)
    assert ring_content(r) == b"".join(newest_fitting(records, window))


def test_eviction_is_oldest_first_across_chunk_kinds():
    """Small frames (joined) and large frames (kept as they are) mixed."""
    big = [rec(i, 1400) for i in range(0, 600)]       # 600 x 1444 B, one frame of ~850 KiB
    small = [rec(i, 100) for i in range(600, 2600)]   # one record per frame
    c = Counters()
    r = ring.Ring(1 << 20, c)
    r.append(memoryview(b"".join(big)), len(big))
    assert isinstance(r.chunks[0].data, memoryview)  # no copy of a large frame
    for x in small:
        r.append(memoryview(x), 1)
    expect = newest_fitting(big + small, 1 << 20)
    assert ring_content(r) == b"".join(expect)
    assert c["dropped.evicted"] == len(big) + len(small) - len(expect)


def test_small_frames_are_joined_into_few_chunks():
    r = ring.Ring(4 << 20)
    for i in range(20000):
        r.append(memoryview(rec(i, 60)), 1)
    assert r.records == 20000
    assert r.chunk_count <= (20000 * 120) // r.block + 2


def test_frame_larger_than_the_window_keeps_its_newest_records():
    records = [rec(i, 500) for i in range(100)]
    c = Counters()
    r = ring.Ring(10_000, c)
    r.append(memoryview(b"".join(records)), 100)
    kept = newest_fitting(records, 10_000)
    assert ring_content(r) == b"".join(kept)
    assert c["dropped.evicted"] == 100 - len(kept)


def test_dead_prefix_of_a_large_chunk_is_dropped():
    """A large frame evicted bit by bit does not pin its evicted bytes."""
    big = [rec(i, 1000) for i in range(3000)]        # ~3 MiB in one frame
    r = ring.Ring(3 << 20)
    r.append(memoryview(b"".join(big)), len(big))
    for i in range(3000, 5000):                      # ~2 MiB of small frames
        r.append(memoryview(rec(i, 1000)), 1)
    held = sum(len(c.data) for c in r.chunks) + r._open_bytes
    assert held <= r.window + ring.COMPACT_MIN + 2 * r.block
    assert ring_content(r) == b"".join(newest_fitting(big + [rec(i, 1000)
                                                             for i in range(3000, 5000)],
                                                      r.window))


def test_empty_frames_and_empty_ring():
    r = ring.Ring(1000)
    r.append(memoryview(b""), 0)
    assert r.records == 0 and ring_content(r) == b""
    out, sel = fetch(r.snapshot(), since_us=0)
    assert out == b"" and sel.records == 0


def test_window_must_be_positive():
    with pytest.raises(ValueError):
        ring.Ring(0)


# -- snapshots --------------------------------------------------------------------------

def test_snapshot_does_not_change_when_the_ring_moves_on():
    records = [rec(i, 200) for i in range(2000)]
    r = ring.Ring(100_000)
    for area, n in frames_of(records[:1000], [10]):
        r.append(memoryview(area), n)
    snap = r.snapshot()
    before = newest_fitting(records[:1000], 100_000)
    for area, n in frames_of(records[1000:], [3]):
        r.append(memoryview(area), n)
    assert fetch(snap)[0] == b"".join(before)
    assert snap.records == len(before)
    assert ring_content(r) == b"".join(newest_fitting(records, 100_000))


# -- selection ------------------------------------------------------------------------------

@pytest.fixture
def full_ring():
    """4000 records with times 0.000, 0.001, ... s, frames of mixed sizes."""
    records = [rec(i, 1 + (i * 53) % 700, dport=5353 if i % 3 == 0 else 9) for i in range(4000)]
    r = ring.Ring(16 << 20)
    for area, n in frames_of(records, [1, 50, 400, 5]):
        r.append(memoryview(area), n)
    return r, records


def test_whole_buffer(full_ring):
    r, records = full_ring
    out, sel = fetch(r.snapshot())
    assert out == b"".join(records) and sel.records == 4000


@pytest.mark.parametrize("since,until", [(0, 1), (1500, 2500), (3999, 4000), (2000, None),
                                         (None, 10), (4000, None), (100, 100_000)])
def test_time_window_is_half_open(full_ring, since, until):
    r, records = full_ring
    lo = None if since is None else since * 1000
    hi = None if until is None else until * 1000
    out, sel = fetch(r.snapshot(), since_us=lo, until_us=hi)
    expect = records[since or 0 : until]
    assert out == b"".join(expect) and sel.records == len(expect)


def test_time_window_with_unordered_timestamps():
    """Senders' clocks differ: selection is per record, not by position."""
    rnd = random.Random(7)
    times = [rnd.randrange(0, 10_000_000) for _ in range(3000)]
    records = [rec(i, 80, ts=t) for i, t in enumerate(times)]
    r = ring.Ring(1 << 20)
    for area, n in frames_of(records, [13]):
        r.append(memoryview(area), n)
    out, _ = fetch(r.snapshot(), since_us=2_000_000, until_us=5_000_000)
    assert out == b"".join(x for x, t in zip(records, times, strict=True) if 2_000_000 <= t < 5_000_000)


@pytest.mark.parametrize("extra", [0, 1, 999])
def test_max_bytes_keeps_the_newest_that_fit(full_ring, extra):
    r, records = full_ring
    want = records[-700:]
    cap = HDR + sum(map(len, want)) + min(extra, len(records[-701]) - 1)
    out, sel = fetch(r.snapshot(), max_bytes=cap)
    assert out == b"".join(want) and sel.records == 700
    assert HDR + sel.bytes <= cap


def test_max_bytes_smaller_than_any_record(full_ring):
    r, _ = full_ring
    out, sel = fetch(r.snapshot(), max_bytes=HDR + 10)
    assert out == b"" and sel.records == 0
    with pytest.raises(ValueError):
        ring.Selection(r.snapshot(), max_bytes=HDR - 1)


def test_filter_time_and_size_together(full_ring):
    r, records = full_ring
    flt = Filter("udp and dst port 5353")
    chosen = [x for i, x in enumerate(records) if i % 3 == 0 and 1000 <= i < 3000]
    out, _ = fetch(r.snapshot(), since_us=1_000_000, until_us=3_000_000, flt=flt)
    assert out == b"".join(chosen)
    want = newest_fitting(chosen, 50_000)
    out, sel = fetch(r.snapshot(), since_us=1_000_000, until_us=3_000_000, flt=flt,
                     max_bytes=HDR + 50_000)
    assert out == b"".join(want) and sel.records == len(want)


def test_filter_matching_nothing(full_ring):
    r, _ = full_ring
    out, sel = fetch(r.snapshot(), flt=Filter("tcp"))
    assert out == b"" and sel.records == 0


def test_large_ranges_are_sent_without_copy():
    records = [rec(i, 1000) for i in range(5000)]   # ~5 MiB
    r = ring.Ring(64 << 20)
    for area, n in frames_of(records, [500]):        # ~500 KiB frames: own chunks
        r.append(memoryview(area), n)
    sel = ring.Selection(r.snapshot())
    assert sel.plan()
    pieces = []
    while (p := sel.next_piece()) is not None:
        pieces.append(p)
    assert b"".join(pieces) == b"".join(records)
    datas = {id(c.data.obj) for c in r.chunks}
    assert all(isinstance(p, memoryview) and id(p.obj) in datas for p in pieces)


def test_plan_is_incremental(full_ring):
    _, records = full_ring
    r = ring.Ring(16 << 20, block=16384)
    for area, n in frames_of(records, [1, 50, 5]):
        r.append(memoryview(area), n)
    assert r.chunk_count >= 50
    sel = ring.Selection(r.snapshot(), flt=Filter("ip"))
    steps = 0
    while not sel.plan(budget=1):
        steps += 1
    assert steps == r.chunk_count - 1  # one chunk per step with a tiny budget
    out = bytearray()
    while (p := sel.next_piece()) is not None:
        out += p
    assert out == b"".join(records)
    with pytest.raises(RuntimeError):
        ring.Selection(r.snapshot()).next_piece()


def test_a_query_lets_go_of_each_chunk_once_produced():
    """Memory: a chunk evicted during a query is held only until it is sent."""
    import gc
    import weakref
    from array import array

    parts = [[rec(k * 100 + i, 1000) for i in range(100)] for k in range(3)]
    arrays = [array("B", b"".join(p)) for p in parts]   # ~100 KiB frames: kept without copy
    refs = [weakref.ref(a) for a in arrays]
    r = ring.Ring(400_000)
    for a in arrays:
        r.append(memoryview(a), 100)
    del a, arrays
    sel = ring.Selection(r.snapshot())
    assert sel.plan()
    first = bytes(sel.next_piece())
    for i in range(500):                       # the ring moves on: all three are evicted
        r.append(memoryview(rec(1000 + i, 1000)), 1)
    second = bytes(sel.next_piece())           # the first piece has been handed on
    gc.collect()
    assert refs[0]() is None                   # produced, handed on and evicted: gone
    assert refs[1]() is not None and refs[2]() is not None  # still to be sent
    rest = second
    while (p := sel.next_piece()) is not None:
        rest += p
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert first + rest == b"".join(parts[0] + parts[1] + parts[2])


def test_outside_tells_when_a_query_holds_evicted_memory():
    """Ring.outside(Selection.oldest_view()): False while everything the
    query still has to send is in the ring, True once a chunk it holds was
    evicted, False again once the query has produced it."""
    frames = [b"".join(rec(k * 100 + i, 1000) for i in range(100)) for k in range(3)]
    r = ring.Ring(3 * len(frames[0]))  # ~100 KB frames: their own chunks; three fit
    for f in frames:
        r.append(memoryview(f), 100)
    sel = ring.Selection(r.snapshot())
    assert not r.outside(sel.oldest_view())  # before planning: the snapshot's views
    assert sel.plan()
    assert not r.outside(sel.oldest_view())
    r.append(memoryview(frames[0]), 100)  # ~100 KB more: the oldest chunk goes
    assert r.outside(sel.oldest_view())
    p = sel.next_piece()  # the whole evicted chunk, zero-copy: still held by the piece
    assert p is not None and r.outside(sel.oldest_view())
    p = sel.next_piece()  # the next chunk: the evicted one is let go
    assert p is not None and not r.outside(sel.oldest_view())
    while sel.next_piece() is not None:
        pass
    assert sel.oldest_view() is None and not r.outside(None)


def test_a_compacted_chunk_is_outside_for_the_old_view():
    big = b"".join(rec(i, 1000) for i in range(3000))  # ~3 MiB, one chunk
    r = ring.Ring(len(big))
    r.append(memoryview(big), 3000)
    snap = r.snapshot()
    r.append(memoryview(b"".join(rec(5000 + i, 1000) for i in range(1600))), 1600)
    # more than half of the big chunk evicted: its live tail was copied
    assert r.chunks[0].seq == snap.views[0].seq and r.chunks[0].data is not snap.views[0].data
    assert r.outside(snap.views[0])
    assert not r.outside(r.snapshot().views[0])


def test_an_empty_ring_has_nothing_of_an_old_snapshot():
    r = ring.Ring(10_000, block=4096)
    r.append(memoryview(rec(1, 1000)), 1)
    snap = r.snapshot()
    for i in range(20):
        r.append(memoryview(rec(2 + i, 1000)), 1)
    assert r.outside(snap.views[0])
