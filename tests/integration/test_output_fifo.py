"""PcapOutput against real FIFOs and real readers (no root needed)."""

import os
import subprocess

import pytest
from lab import (
    PKT,  # noqa: E402  (the sample packet: tools/lib/testkit.py)
    FifoReader,
    wait_until,
)

from nflog_pipe import pcap
from nflog_pipe.metrics import Counters
from nflog_pipe.output import PcapOutput

AREA = memoryview(pcap.record(1, 2, PKT) * 3)


@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "out.pcap"
    os.mkfifo(p)
    return p


def test_no_reader_counts_and_does_not_block(fifo):
    c = Counters()
    out = PcapOutput(str(fifo), c)
    assert out.kind == "fifo" and not out.attached
    assert out.write(AREA, 3) is False
    assert c["dropped.output"] == 3 and c["packets_out"] == 0


def test_each_reader_gets_a_fresh_header(fifo):
    c = Counters()
    out = PcapOutput(str(fifo), c)
    r1 = FifoReader(fifo)
    wait_until(out.try_attach, what="first reader")
    out.write(AREA, 3)
    out.flush()
    wait_until(lambda: len(r1.data) == 24 + len(AREA), what="first stream")
    first = r1.close()
    wait_until(lambda: (out.check_reader(), not out.attached)[1], what="detach")
    r2 = FifoReader(fifo)
    wait_until(out.try_attach, what="second reader")
    out.write(AREA[: len(AREA) // 3], 1)
    wait_until(lambda: len(r2.data) == 24 + len(AREA) // 3, what="second stream")
    second = r2.close()
    assert len(pcap.parse(first)[1]) == 3
    assert len(pcap.parse(second)[1]) == 1
    assert c["packets_out"] == 4 and c["dropped.output"] == 0 and out.readers == 2
    out.close()


def test_slow_reader_whole_frames_dropped_never_cut(fifo):
    """A reader that does not read: the pipe fills, pending output is bounded,
    later frames are dropped whole; the reader then gets only whole records."""
    c = Counters()
    out = PcapOutput(str(fifo), c, max_pending=64 * 1024)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    assert out.try_attach()
    big = memoryview(pcap.record(1, 2, b"\x45" + bytes(60000)))
    sent = 0
    for _ in range(200):  # ~12 MB offered to a pipe of at most 1 MiB + 64 KiB pending
        out.write(big, 1)
        sent += 1
    assert c["dropped.output"] > 0
    assert out.pending_bytes <= 64 * 1024 + len(big)
    data = bytearray()
    os.set_blocking(rfd, False)
    for _ in range(1000):
        out.flush()
        try:
            chunk = os.read(rfd, 1 << 20)
        except BlockingIOError:
            if not out.wants_write:
                break
            continue
        data += chunk
    os.close(rfd)
    recs = pcap.parse(bytes(data))[1]
    assert len(recs) == c["packets_out"] == sent - c["dropped.output"]
    assert all(len(r.data) == 60001 for r in recs)


def test_tcpdump_reads_the_fifo_live(fifo, tmp_path):
    c = Counters()
    out = PcapOutput(str(fifo), c)
    p = subprocess.Popen(["tcpdump", "-l", "-n", "-r", str(fifo)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        wait_until(out.try_attach, what="tcpdump opens the FIFO")
        out.write(AREA, 3)
        lines = [p.stdout.readline() for _ in range(3)]
        assert all("127.0.0.1.12345 > 127.0.0.1.53" in line for line in lines)
    finally:
        out.close()
        p.wait(10)
    assert p.returncode == 0


def test_regular_file_and_missing_path(tmp_path):
    c = Counters()
    out = PcapOutput(str(tmp_path / "new.pcap"), c)
    assert out.kind == "file"
    out.write(AREA, 3)
    out.close()
    assert len(pcap.parse((tmp_path / "new.pcap").read_bytes())[1]) == 3


def test_fifo_create(tmp_path):
    import stat
    out = PcapOutput(str(tmp_path / "made.fifo"), Counters(), create_fifo=True)
    assert stat.S_ISFIFO(os.stat(tmp_path / "made.fifo").st_mode) and out.kind == "fifo"


def test_fifo_removed_while_running_is_retried(fifo):
    c = Counters()
    out = PcapOutput(str(fifo), c)
    os.unlink(fifo)
    assert out.try_attach() is False  # warns, keeps going
    os.mkfifo(fifo)
    r = FifoReader(fifo)
    wait_until(out.try_attach, what="reader on the re-created FIFO")
    out.write(AREA, 3)
    wait_until(lambda: len(r.data) == 24 + len(AREA), what="stream")
    r.close()
