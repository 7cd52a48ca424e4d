from nflog_pipe.nflog import QthreshPolicy


def feed(policy, rate, seconds, t0=0.0, n0=0, step=0.01):
    """Packets at ``rate`` for ``seconds``; returns (changes, t, n)."""
    changes, t, n = [], t0, n0
    for _ in range(int(seconds / step)):
        t += step
        n += int(rate * step)
        q = policy.update(n, t)
        if q is not None:
            changes.append(q)
    return changes, t, n


def test_light_traffic_keeps_batches_small():
    p = QthreshPolicy()
    changes, *_ = feed(p, 1000, 2.0)
    assert p.current <= 2  # a batch fills in ~2 ms at 1 kpps
    assert all(q <= 2 for q in changes)


def test_load_raises_to_the_maximum_within_tens_of_ms():
    p = QthreshPolicy()
    p.update(0, 0.0)
    assert p.update(1000, 0.01) == 1024  # 100 kpps seen over 10 ms


def test_lowered_only_after_a_sustained_drop():
    p = QthreshPolicy()
    _, t, n = feed(p, 100_000, 0.5)
    assert p.current == 1024
    changes, t, n = feed(p, 50_000, 1.0, t, n)  # half the rate: target 512, not < 1024/4
    assert changes == [] and p.current == 1024
    changes, t, n = feed(p, 500, 1.0, t, n)
    assert p.current == 1 and changes[-1] == 1


def test_targets_are_powers_of_two_within_bounds():
    p = QthreshPolicy(qmax=1024)
    for rate in (0, 1, 499, 501, 3000, 9999, 10_000, 20_000, 10**7):
        q = p.target(rate)
        assert 1 <= q <= 1024 and q & (q - 1) == 0
    assert p.target(0) == 1 and p.target(10**7) == 1024


def test_a_threshold_the_kernel_refused_is_not_recorded():
    """The controller reports each sendto(); a refused change leaves the threshold unknown."""
    import os
    import struct

    from nflog_pipe.nflog import NflogReader
    r = object.__new__(NflogReader)  # no netlink socket: only the report pipe
    rd, wr = os.pipe()
    os.set_blocking(rd, False)
    r._ctl_status, r._qthresh, r._ctl_partial = rd, 64, b""
    try:
        os.write(wr, struct.pack("=II", 0, 64))  # group 0: applied
        assert r.qthresh == 64
        os.write(wr, struct.pack("=II", 0, 0))   # group 0: sendto failed
        assert r.qthresh is None
    finally:
        os.close(rd)
        os.close(wr)
