"""DrainPacer: the sender waits for fuller frames only when large packets
arrive fast, never longer than its bound, and drains at most once per
millisecond."""

import itertools

import pytest

from nflog_pipe.batching import DrainPacer

FRAME = 512 * 1024


def feed(pacer, byte_rate, seconds, t0=0.0, b0=0, step=0.002, cost=0.0001):
    """Drains `step` s apart at `byte_rate`, each taking `cost` s; returns
    (the wait for a fuller frame after the last drain, t, bytes).  What
    update() returns adds the 1 ms spacing of drains to it."""
    t, b = t0, b0
    for _ in range(int(seconds / step)):
        t += step
        b += int(byte_rate * step)
        ret = pacer.update(b, t - cost, t)
        assert ret == pytest.approx(max(pacer.wait, 0.001 - cost))
    return pacer.wait, t, b


@pytest.mark.parametrize("byte_rate", [0, 1_000, 100 * 1_500, 50_000 * 1_428, 64 * 10**6])
def test_no_wait_below_a_full_frame_within_the_bound(byte_rate):
    p = DrainPacer(FRAME, max_wait=0.005)
    wait, *_ = feed(p, byte_rate, 1.0)
    assert wait == 0.0


@pytest.mark.parametrize("byte_rate", [100_000 * 1_428, 250_000 * 1_428])
def test_waits_for_a_full_frame_at_high_byte_rates(byte_rate):
    p = DrainPacer(FRAME, max_wait=0.005)
    wait, *_ = feed(p, byte_rate, 0.5)
    assert wait == pytest.approx(FRAME / byte_rate, rel=0.05)
    assert 0 < wait <= 0.005


def test_stops_waiting_within_a_window_after_the_rate_drops():
    p = DrainPacer(FRAME, max_wait=0.005, interval=0.05)
    wait, t, b = feed(p, 150 * 10**6, 0.5)
    assert wait > 0
    wait, t, b = feed(p, 1_000_000, 0.12, t, b)  # two windows of light traffic
    assert wait == 0.0


def test_drains_at_most_once_per_min_interval():
    p = DrainPacer(FRAME, min_interval=0.001)
    assert p.update(0, 10.0, 10.0001) == pytest.approx(0.0009)  # began 0.1 ms ago
    assert p.update(1_000, 10.0012, 10.0012) == pytest.approx(0.001)
    assert p.update(2_000, 10.005, 10.0065) == 0.0  # a drain longer than the interval


@pytest.mark.parametrize("cost", [0.00002, 0.0003, 0.0009])
def test_a_flood_is_drained_at_most_once_per_millisecond(cost):
    """Closed loop, as the sender runs it: data is always waiting, each
    drain takes `cost`, the loop sleeps what update() returns.  Drains
    begin at least 1 ms apart, and not much more."""
    p = DrainPacer(FRAME, min_interval=0.001)
    t, b, starts = 5.0, 0, []
    for _ in range(200):
        starts.append(t)
        b += 1_500
        t += cost
        t += p.update(b, starts[-1], t)
    gaps = [y - x for x, y in itertools.pairwise(starts)]
    assert min(gaps) >= 0.001 - 1e-9
    assert max(gaps) <= 0.001 + 1e-9
