"""PcapOutput against real FIFOs and real readers (no root needed)."""

import os
import subprocess
from pathlib import Path

import pytest
from lab import FifoReader, pcap_prefix, tool, wait_until

from nflog_pipe import pcap
from nflog_pipe.metrics import Counters
from nflog_pipe.output import PcapOutput

PKT = bytes.fromhex("4500001d00004000401100007f0000017f000001303900350009000041")
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
    out.close()
    assert len(pcap.parse(first)[1]) == 3
    assert len(pcap.parse(second)[1]) == 1
    assert c["packets_out"] == 4 and c["dropped.output"] == 0 and out.readers == 2
    assert c["dropped.reader_gone"] == c["dropped.unread_at_exit"] == 0


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
    out.check_reader()  # counts what the reader took
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


# -- one pipe per reader (issue 12) --------------------------------------------

def areas(n: int, size: int = 1000) -> list[memoryview]:
    """n frames of 3 records each, every record a distinct payload."""
    return [memoryview(b"".join(pcap.record(i, j, b"\x45" + bytes([i & 0xFF, j]) * (size // 2))
                                for j in range(3))) for i in range(n)]


REC = 16 + 1001  # a record of areas()


def ropen(path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def take(fd: int, limit: int = 1 << 30) -> bytes:
    out = bytearray()
    while len(out) < limit:
        try:
            chunk = os.read(fd, min(1 << 16, limit - len(out)))
        except BlockingIOError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def whole_records(data: bytes) -> int:
    """Records of a reader's stream that arrived whole (the stream checked
    from byte 0 by the restart tests' oracle)."""
    return pcap_prefix(data)[0]


def test_a_reader_back_at_once_never_sees_the_old_pipe(fifo):
    """The first reader leaves with a full pipe and the next one opens the path
    at once, before the receiver could notice: it gets its own pipe, a header
    first; what the first reader left is counted, a cut record once."""
    c = Counters()
    out = PcapOutput(str(fifo), c)
    r1 = ropen(fifo)
    assert out.try_attach()
    first_inode = os.fstat(r1).st_ino
    assert os.stat(fifo).st_ino != first_inode  # a fresh FIFO is at the path already
    for a in areas(100):
        out.write(a, 3)
    got1 = take(r1, 24 + 5 * 3 * REC + 500)  # reads part of the stream, stops mid-record
    os.close(r1)
    r2 = ropen(fifo)  # back at once: the receiver has not looked yet
    assert os.fstat(r2).st_ino != first_inode and take(r2) == b""
    assert out.try_attach()  # reader 2 attached, reader 1 handed over ...
    out.check_reader()  # ... and found gone
    for a in areas(10):
        out.write(a, 3)
    got2 = take(r2)
    out.close(grace=0.5)
    os.close(r2)
    assert whole_records(got1) == 15 and whole_records(got2) == 30
    assert c["packets_out"] == 45
    assert c["dropped.reader_gone"] == 300 - 15  # the cut record once
    assert c["dropped.output"] == c["dropped.unread_at_exit"] == 0


def test_a_second_reader_takes_over_the_first_gets_what_was_its_own(fifo):
    c = Counters()
    out = PcapOutput(str(fifo), c)
    r1 = ropen(fifo)
    assert out.try_attach()
    for a in areas(5):
        out.write(a, 3)
    r2 = ropen(fifo)
    assert out.try_attach() and out.readers == 2
    for a in areas(7):
        out.write(a, 3)
    got1 = take(r1)
    out.check_reader()  # reader 1 emptied its pipe: it is retired, gets EOF
    assert take(r1) == b"" and os.read(r1, 1) == b""
    os.close(r1)
    got2 = take(r2)
    out.close(grace=0.5)
    os.close(r2)
    assert whole_records(got1) == 15 and len(got1) == 24 + 15 * REC
    assert whole_records(got2) == 21 and len(got2) == 24 + 21 * REC
    assert c["packets_out"] == 36 and c["dropped.reader_gone"] == 0


def test_reader_killed_mid_record_many_times(fifo):
    """Readers leave at every kind of point (in the header, mid-record, on a
    boundary, before reading): conservation is exact each time."""
    c = Counters()
    out = PcapOutput(str(fifo), c)
    total = whole = 0
    for i, limit in enumerate((0, 10, 24, 24 + REC, 24 + REC + 17, 40000, 1 << 30) * 3):
        r = ropen(fifo)
        assert out.try_attach()
        for a in areas(4 + i):
            out.write(a, 3)
            total += 3
        whole += whole_records(take(r, limit))
        os.close(r)
        out.check_reader()
        assert not out.attached
    out.close(grace=0)
    assert c["packets_out"] == whole
    assert total == c["packets_out"] + c["dropped.reader_gone"]


def _recv(tmp_path, dst, *extra, user=None):
    argv = [tool("nflog-pcap-recv"), "tcp://127.0.0.1:9", str(dst), "--log-format", "text",
            *extra]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=20)


def test_bad_output_paths_are_start_up_errors(tmp_path):
    (tmp_path / "adir").mkdir()
    capture = tmp_path / "capture.pcap"
    capture.write_bytes(b"precious")
    cases = [(tmp_path / "adir", "is a directory", ()),
             (tmp_path / "missing" / "out.pcap", "does not exist", ()),
             (tmp_path / "missing" / "out.pcap", "does not exist", ("--fifo-create",)),
             (capture, "is a regular file, not a FIFO", ("--fifo-create",))]
    for dst, why, extra in cases:
        r = _recv(tmp_path, dst, *extra)
        assert r.returncode == 2, (dst, r.stderr)
        lines = [x for x in r.stderr.splitlines() if " ERROR " in x]
        assert len(lines) == 1 and f"cannot use output {dst}: " in lines[0] and why in lines[0]
    assert capture.read_bytes() == b"precious"  # never truncated


def test_output_not_writable_is_a_start_up_error(tmp_path):
    """As an unprivileged user (root may write anywhere): a FIFO it cannot
    open for writing, a directory it cannot create in."""
    import shutil
    import tempfile
    user = "65534" if os.geteuid() == 0 else None
    top = Path(tempfile.mkdtemp(prefix="nzp-ro-"))  # pytest's tmp_path is 0700
    os.chmod(top, 0o755)
    ro = top / "ro"
    ro.mkdir()
    os.mkfifo(ro / "f.pcap", 0o644)
    os.chmod(ro, 0o555)
    try:
        for dst, why, extra in [(ro / "f.pcap", "is not writable", ()),
                                (ro / "new.pcap", f"directory {ro} is not writable", ()),
                                (ro / "new.pcap", f"directory {ro} is not writable",
                                 ("--fifo-create",))]:
            r = _recv(tmp_path, dst, *extra, user=user)
            assert r.returncode == 2, (dst, r.stderr)
            lines = [x for x in r.stderr.splitlines() if " ERROR " in x]
            assert len(lines) == 1 and why in lines[0], r.stderr
        if user:  # tmp_path is 0700, root's
            r = _recv(tmp_path, tmp_path / "x.pcap", user=user)
            assert r.returncode == 2 and "permission denied on the way to it" in r.stderr
    finally:
        os.chmod(ro, 0o755)
        shutil.rmtree(top)


def test_hand_over_with_a_full_pipe_moves_the_queue_to_the_new_reader(fifo):
    """The old reader does not read: its pipe is full and records wait in the
    queue. A new reader takes over: it gets a header, then what was queued (a
    record partly written stays with the old reader, to be finished); the old
    reader keeps its pipe. Nothing is lost, nothing is cut or read twice."""
    c = Counters()
    out = PcapOutput(str(fifo), c)
    r1 = ropen(fifo)
    assert out.try_attach()
    frames = areas(600)  # ~1.8 MB: more than the pipe (1 MiB) holds
    for a in frames:
        out.write(a, 3)
    assert out.pending_bytes > 0
    r2 = ropen(fifo)
    assert out.try_attach()
    for a in areas(5):
        out.write(a, 3)
    got1, got2 = bytearray(), bytearray()
    for _ in range(2000):
        got1 += take(r1)
        got2 += take(r2)
        out.flush()
        out.check_reader()
        if not out.wants_write and not out.pending_bytes and len(out._old) == 0:
            break
    got1 += take(r1)
    got2 += take(r2)
    out.close(grace=0.5)
    got2 += take(r2)
    w1, w2 = pcap_prefix(bytes(got1)), pcap_prefix(bytes(got2))
    assert w1[1] == w2[1] == 0  # nothing cut
    assert w1[0] + w2[0] == 1815 == c["packets_out"]
    assert w1[0] < 1800 and w2[0] > 15  # the queue went to the new reader
    order = [(r.ts_sec, r.ts_usec) for g in (got1, got2) for r in pcap.parse(bytes(g))[1]]
    assert order == [(i, j) for n in (600, 5) for i in range(n) for j in range(3)]
    assert c["dropped.reader_gone"] == c["dropped.output"] == c["dropped.unread_at_exit"] == 0
    os.close(r1)
    os.close(r2)


def test_a_symlink_to_the_fifo_stays_a_symlink(fifo, tmp_path):
    link = tmp_path / "link.pcap"
    link.symlink_to(fifo)
    c = Counters()
    out = PcapOutput(str(link), c)
    r1 = ropen(link)
    assert out.try_attach()
    assert link.is_symlink() and os.stat(link).st_ino == os.stat(fifo).st_ino
    assert os.stat(fifo).st_ino != os.fstat(r1).st_ino  # the FIFO it leads to is fresh
    out.write(areas(1)[0], 3)
    assert pcap_prefix(take(r1))[0] == 3
    out.close(grace=0)
    os.close(r1)
