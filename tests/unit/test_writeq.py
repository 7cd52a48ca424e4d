"""WriteQueue: whole buffers in order, records counted when fully written,
partial writes resumed, errors handed back with the queue intact."""

import errno
import fcntl
import functools
import os

import pytest

from nflog_pipe.writeq import MAX_IOV, WriteQueue


class Taker:
    """send(): takes at most `step` bytes per call, per the script of results."""

    def __init__(self, *script):
        self.script = list(script)
        self.out = bytearray()
        self.calls = []

    def __call__(self, iov):
        self.calls.append(len(iov))
        what = self.script.pop(0) if self.script else None
        if isinstance(what, BaseException):
            raise what
        data = b"".join(bytes(v) for v in iov)
        n = len(data) if what is None else min(what, len(data))
        self.out += data[:n]
        return n


def test_partial_writes_are_resumed_and_records_counted_when_whole():
    t = Taker(5, BlockingIOError(), None)
    q = WriteQueue(t)
    q.push(memoryview(b"aaaaaaaa"), 2)
    q.push(memoryview(b"bbbb"), 1)
    assert q.bytes == 12
    first = q.write()  # 5 bytes, then EAGAIN
    assert (first.bytes, first.records, first.record_bytes, first.error) == (5, 0, 0, None)
    assert q.bytes == 7 and q
    second = q.write()
    assert (second.bytes, second.records, second.record_bytes) == (7, 3, 12)
    assert bytes(t.out) == b"aaaaaaaabbbb" and not q and q.bytes == 0


def test_interrupted_write_is_retried():
    t = Taker(InterruptedError(), None)
    q = WriteQueue(t)
    q.push(memoryview(b"xyz"), 1)
    assert q.write().records == 1 and bytes(t.out) == b"xyz"


def test_an_error_comes_back_and_the_queue_stays():
    t = Taker(2, OSError(errno.EPIPE, "Broken pipe"))
    q = WriteQueue(t)
    q.push(memoryview(b"abcd"), 1)
    q.push(memoryview(b"ef"), 1)
    p = q.write()
    assert p.bytes == 2 and p.records == 0 and p.error.errno == errno.EPIPE
    assert q.bytes == 4
    assert q.clear() == 2 and not q and q.bytes == 0


def test_empty_buffers_are_not_queued():
    q = WriteQueue(Taker())
    q.push(memoryview(b""), 3)
    assert not q and q.bytes == 0


def test_at_most_max_iov_buffers_per_call():
    t = Taker()
    q = WriteQueue(t)
    for i in range(MAX_IOV * 2 + 1):
        q.push(memoryview(bytes([i % 256])), 1)
    p = q.write()
    assert p.records == MAX_IOV * 2 + 1
    assert t.calls == [MAX_IOV, MAX_IOV, 1]
    assert bytes(t.out) == bytes(i % 256 for i in range(MAX_IOV * 2 + 1))


def test_a_real_pipe_that_fills_up():
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        size = fcntl.fcntl(w, 1032)  # F_GETPIPE_SZ
        q = WriteQueue(functools.partial(os.writev, w))
        chunk = bytes(range(256)) * 256  # 64 KiB
        n = size // len(chunk) + 3
        for _ in range(n):
            q.push(memoryview(chunk), 1)
        p = q.write()
        assert p.error is None and p.bytes == size and q.bytes == n * len(chunk) - size
        got = bytearray()
        while q:
            got += os.read(r, 1 << 20)
            q.write()
        while len(got) < n * len(chunk):
            got += os.read(r, 1 << 20)
        assert bytes(got) == chunk * n
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("records", [0, 7])
def test_records_of_a_buffer_count_once(records):
    q = WriteQueue(Taker(1, 1, None))
    q.push(memoryview(b"abc"), records)
    total = sum(q.write().records for _ in range(3))
    assert total == records


def test_buffers_without_records_do_not_count_as_record_bytes():
    q = WriteQueue(Taker())
    q.push(memoryview(b"HEADER"))  # e.g. the pcap file header
    q.push(memoryview(b"recs"), 1)
    p = q.write()
    assert (p.bytes, p.records, p.record_bytes) == (10, 1, 4)


def test_take_unstarted_keeps_a_buffer_partly_written():
    q = WriteQueue(Taker(5, BlockingIOError()))
    for i, n in enumerate((10, 20, 30)):
        q.push(memoryview(bytes([i]) * n), i + 1)
    q.write()  # 5 bytes of the first buffer
    moved = q.take_unstarted()
    assert [(bytes(d), r) for d, r in moved] == [(b"\x01" * 20, 2), (b"\x02" * 30, 3)]
    assert q.bytes == 5 and bool(q)
    q2 = WriteQueue(Taker())
    q2.push(memoryview(b"abc"), 1)
    assert [(bytes(d), r) for d, r in q2.take_unstarted()] == [(b"abc", 1)] and not q2
