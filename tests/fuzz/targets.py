"""Fuzz targets: one small function per parser that reads bytes from the network.

Adding a target: write ``fn(data: bytes) -> None`` that feeds ``data`` to the
parser inside ``budget(...)`` and asserts its properties, decorate it with
``@target(name, strategy=..., mutator=...)``, and add ``corpus/<name>/`` with
a few hand-made inputs (``seeds.py``).  CI and bench/fuzz.py pick it up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

from nflog_pipe import frame, logs, pcap
from nflog_pipe.metrics import Counters
from nflog_pipe.output import PcapOutput
from nflog_pipe.receiver import Receiver

from . import mutators, strategies, wire
from .harness import budget, target

KINDS = {"short", "magic", "version", "flags", "oversize", "length", "count", "sender_id",
         "decompress", "codec", "records"}


def check_frame(data: bytes, f: frame.Frame) -> None:
    """What an accepted frame promises: its header, and a record area of
    exactly ``count`` valid pcap records."""
    h = wire.header(data)
    sid = data[wire.HDR.size:wire.HDR.size + h.id_len]
    assert (f.sender_id.encode(), f.instance, f.seq, f.pkt_seq, f.count) == \
        (sid, h.instance, h.seq, h.pkt_seq, h.count)
    assert len(f.records) == h.raw_len
    problem = wire.records_problem(f.records, f.count)
    assert problem is None, f"accepted frame with a bad record area: {problem}"
    recs = list(pcap.iter_records(f.records))
    assert len(recs) == f.count
    assert all(len(r.data) <= pcap.SNAPLEN and r.origlen >= len(r.data) for r in recs)
    again = frame.decode(frame.encode(f.sender_id, f.instance, f.seq, f.pkt_seq, f.count,
                                      f.records))
    assert bytes(again.records) == bytes(f.records)


@target("frame", strategy=strategies.frames(), mutator=mutators.mutate_frame, max_len=300_000)
def fuzz_frame(data: bytes) -> None:
    """frame.decode: FrameError (the check the format names) or a valid frame."""
    err = f = None
    with budget(wire.expansion_budget(data), "frame.decode"):
        try:
            f = frame.decode(data)
        except frame.FrameError as e:
            err = e
    expected = wire.reference_verdict(data)
    if err is not None:
        assert err.kind in KINDS, f"unknown rejection kind {err.kind!r}"
        assert err.kind == expected, f"decode says {err.kind!r}, the format says {expected!r}"
        assert err.count is None or err.count <= frame.MAX_RECORDS, \
            f"a rejected frame accounts for {err.count} packets, more than a frame can hold"
        return
    assert expected is None, f"decode accepted a frame the format rejects ({expected})"
    check_frame(data, f)


# -- the receiver ---------------------------------------------------------------------
class _StrictLogs(logging.Handler):
    """Formats every record with both of the project's formatters (a record
    that cannot be formatted is a crash, not a silent line on stderr)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.formatters = (logs.JsonFormatter(), logs._TextFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        record.service = "fuzz"
        for fmt in self.formatters:
            fmt.format(record)


_strict = _StrictLogs()


@contextlib.contextmanager
def strict_logs(name: str = "nflog_pipe"):
    lg = logging.getLogger(name)
    saved = lg.level, lg.propagate
    lg.addHandler(_strict)
    lg.setLevel(logging.DEBUG)
    lg.propagate = False  # keep pytest's log capture out of the budget
    try:
        yield
    finally:
        lg.removeHandler(_strict)
        lg.setLevel(saved[0])
        lg.propagate = saved[1]


class PcapSink:
    """A receiver output on a regular file, read back after every frame."""

    ROTATE = 64 << 20

    def __init__(self, directory: str | None = None):
        self.dir = directory or tempfile.mkdtemp(prefix="nzp-fuzz-")
        self.files = 0
        self.records = 0  # records expected in the current file
        self._open()

    def _open(self) -> None:
        self.files += 1
        self.path = os.path.join(self.dir, f"out-{self.files}.pcap")
        self.counters = Counters()
        self.out = PcapOutput(self.path, self.counters, max_pending=1 << 30)
        self.rfd = os.open(self.path, os.O_RDONLY)
        self.pos = 0
        self.records = 0

    def check(self, f: frame.Frame | None) -> None:
        """The file grew by exactly the frame's records (or not at all)."""
        size = os.fstat(self.rfd).st_size
        new = os.pread(self.rfd, size - self.pos, self.pos)
        if f is None:
            assert not new, f"a rejected frame wrote {len(new)} bytes"
            return
        if self.pos == 0 and new:
            assert new[:24] == pcap.GLOBAL_HEADER_BYTES, "output does not start with the header"
            new = new[24:]
        assert new == bytes(f.records), "the output is not the frame's records"
        problem = wire.records_problem(new, f.count)
        assert problem is None, f"corrupt record written: {problem}"
        self.pos = size
        self.records += f.count

    def rotate(self) -> None:
        """Between inputs: a file grown past ROTATE is verified and replaced."""
        if self.pos > self.ROTATE:
            self.verify()
            self._open()

    def verify(self) -> int:
        """Close the output and parse the whole file as a pcap reader would."""
        self.out.close()
        os.close(self.rfd)
        with open(self.path, "rb") as fh:
            blob = fh.read()
        if not blob:
            return 0
        info, recs = pcap.parse(blob)
        assert info["linktype"] == pcap.LINKTYPE_RAW and info["snaplen"] == pcap.SNAPLEN
        assert len(recs) == self.records
        assert all(len(r.data) <= pcap.SNAPLEN and r.origlen >= len(r.data) for r in recs)
        return len(recs)

    def close(self) -> int:
        n = self.verify()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)
        return n


_sink: PcapSink | None = None


def receiver_sink() -> PcapSink:
    global _sink
    if _sink is None:
        _sink = PcapSink()
    return _sink


def close_receiver_sink() -> int:
    """Verify and remove the shared output; returns the records it held."""
    global _sink
    n = _sink.close() if _sink else 0
    _sink = None
    return n


@target("receiver", strategy=strategies.frame_sequences, mutator=mutators.mutate_frames,
        max_len=600_000)
def fuzz_receiver(data: bytes) -> None:
    """Receiver.handle on a sequence of messages: never raises, writes only
    whole valid records, counts every rejected frame."""
    sink = receiver_sink()
    sink.rotate()
    c = sink.counters
    recv = Receiver(sink.out, c)
    for msg in wire.split_frames(data):
        before = dict(c)
        with strict_logs(), budget(wire.expansion_budget(msg), "Receiver.handle"):
            f = recv.handle(memoryview(msg), "fuzz")
        sink.check(f)
        delta = {k: v - before.get(k, 0) for k, v in c.items()}
        assert delta["frames_in"] == 1 and delta.get("dropped.output", 0) == 0
        if f is None:
            assert delta["frames_dropped.malformed"] == 1
            # a rejected frame whose header is intact also moves its sender's
            # stream past it: a gap before it is a transit loss, counted once
            assert delta["dropped.malformed"] <= frame.MAX_RECORDS
            assert delta["packets_in"] == delta["dropped.malformed"] + delta.get("dropped.transit", 0)
        else:
            assert delta["packets_in"] == f.count + delta["dropped.transit"]
            assert delta["packets_out"] == f.count
            assert delta["bytes_in"] == delta["bytes_out"] == len(f.records) - 16 * f.count


from . import more_targets  # noqa: E402,F401  (registers the other targets)
