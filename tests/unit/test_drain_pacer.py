"""DrainPacer: the sender waits for fuller frames only when large packets
arrive fast, never longer than its bound, and drains at most once per
millisecond."""

import pytest

from nflog_pipe.sender import DrainPacer

FRAME = 512 * 1024


def feed(pacer, byte_rate, seconds, t0=0.0, b0=0, step=0.002):
    """Drains `step` s apart at `byte_rate`; returns (last wait, t, bytes)."""
    t, b, wait = t0, b0, None
    for _ in range(int(seconds / step)):
        t += step
        b += int(byte_rate * step)
        wait = pacer.update(b, t)
    return wait, t, b


@pytest.mark.parametrize("byte_rate", [0, 1_000, 100 * 1_500, 50_000 * 1_428, 64 * 10**6])
def test_no_wait_below_a_full_frame_within_the_bound(byte_rate):
    p = DrainPacer(FRAME, max_wait=0.005)
    wait, *_ = feed(p, byte_rate, 1.0)
    assert wait == 0.0  # drains 2 ms apart: the 1 ms minimum gap does not apply either


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
    assert p.update(0, 10.0) == 0.0
    assert p.update(1_000, 10.0002) == pytest.approx(0.0008)  # 0.2 ms after the last
    assert p.update(2_000, 10.0012) == pytest.approx(0.0)  # 1 ms after: no wait


def test_a_flood_of_tiny_drains_is_paced_from_the_start():
    p = DrainPacer(FRAME, min_interval=0.001)
    waits = [p.update(i * 1_500, 5.0 + i * 0.0001) for i in range(20)]  # drains 0.1 ms apart
    assert waits[0] == 0.0
    assert all(w == pytest.approx(0.0009) for w in waits[1:])
