"""The receiver's traffic buffer: the most recent records, bounded in bytes.

``Ring`` keeps validated record areas (pcap records, see
``docs/frame-format.md``) in arrival order.  Its window is a hard bound on the
pcap bytes kept (record headers included): after every ``append`` the ring
holds exactly the newest records that fit, older records are evicted one by
one (``dropped.evicted``, ``bytes_dropped.evicted``).  Eviction is not a loss
of the live path: evicted records were delivered (or counted) on the live
output like every other record.

Storage is a deque of immutable chunks, each with a per-record index built in
C (``nzp_index``: offset and timestamp of each record):
- a frame of ``OWN_CHUNK`` bytes or more is kept as it is (a read-only view
  of the received message: no copy);
- smaller frames are collected and joined into one chunk of about ``block``
  bytes (one copy), so a trickle of one-packet frames does not cost a Python
  object per packet;
- the oldest chunk may be partly evicted (``first`` moves on); its dead
  prefix is dropped by copying the live tail once the prefix is both larger
  than 1 MiB and larger than the tail.

Memory therefore stays within the window plus the index (12 bytes per
record), the collecting chunk's list, and the dead prefix of the oldest chunk.

``Snapshot`` is what a query sees: read-only views of the chunks at the time
of the request; later appends and evictions do not change it.  A chunk
evicted while a query still has to send it stays in memory until it is sent:
``Ring.outside`` tells whether a query holds such a chunk, and the query
server admits no new query while one does, so that all queries together hold
at most one window beside the ring (see ``docs/query-protocol.md``).
``Selection`` turns a snapshot into the bytes of a response, step by step
(the receiver's loop interleaves it with live traffic): a time window and a
BPF filter (in C, ``nzp_select``), then ``max_bytes`` keeping the newest
records, then pieces of at most ``piece`` bytes, zero-copy where whole
chunk ranges are sent.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, replace

from . import pcap
from ._bpf import ffi as _bffi
from ._bpf import lib as _blib
from ._records import ffi as _rffi
from ._records import lib as _rlib
from .bpf import Filter
from .counters import init as init_counters
from .metrics import Counters
from .query.protocol import PIECE  # noqa: F401  (the largest data message)

#: frames from this size on are kept as their own chunk, without a copy
#: (a busy sender's frames are up to 256 KiB: --batch-size)
OWN_CHUNK = 64 << 10
#: smaller frames are joined into chunks of about this size
BLOCK = 1 << 20
#: the dead prefix of the oldest chunk is dropped once it is this large
#: (and larger than the live tail)
COMPACT_MIN = 1 << 20
#: record ranges from this size on go out as views of the chunk (no copy)
ZERO_COPY_MIN = 64 << 10
#: bytes of records a ``Selection.plan`` step scans with the filter
PLAN_BUDGET = 4 << 20

NO_LIMIT = 2**64 - 1


def tune_malloc(threshold: int = OWN_CHUNK) -> bool:
    """Have glibc map allocations of ``threshold`` bytes and more (received
    frames, joined chunks) on their own, so that evicted chunks return their
    memory to the system.  Without it glibc raises its threshold after the
    first frees and keeps freed frames in the heap: the receiver's RSS then
    stays at its high-water mark (up to twice the window after queries
    during heavy traffic).  ``MALLOC_MMAP_THRESHOLD_`` in the environment
    wins.  Returns whether the setting was made."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(_blib.nzp_malloc_mmap_threshold(threshold))


def index(data, count: int) -> tuple[array, array]:
    """Offsets and timestamps (µs) of the ``count`` records of a validated
    record area, built in C."""
    offsets = array("I", [0]) * count
    ts = array("Q", [0]) * count
    if count:
        n = _rlib.nzp_index(_rffi.from_buffer(data), len(data), count,
                            _rffi.from_buffer("uint32_t[]", offsets),
                            _rffi.from_buffer("uint64_t[]", ts))
        if n != count:
            raise ValueError(f"record area holds {n} records, not {count}")
    return offsets, ts


class Chunk:
    """An immutable record area and its index; records before ``first`` are
    evicted.  ``seq`` numbers chunks in arrival order (a compacted chunk keeps
    the number of the one it replaces)."""

    __slots__ = ("data", "offsets", "ts", "first", "count", "seq")

    def __init__(self, data, count: int, seq: int):
        self.data = data
        self.offsets, self.ts = index(data, count)
        self.first = 0
        self.count = count
        self.seq = seq

    @property
    def live_bytes(self) -> int:
        return len(self.data) - self.offsets[self.first]

    def view(self) -> ChunkView:
        return ChunkView(self.data, self.offsets, self.ts, self.first, self.count, self.seq)


@dataclass(frozen=True, slots=True)
class ChunkView:
    """Records ``[first, count)`` of a chunk, as a snapshot saw them."""

    data: bytes | memoryview
    offsets: array
    ts: array
    first: int
    count: int
    seq: int

    @property
    def start(self) -> int:
        return self.offsets[self.first]

    @property
    def nbytes(self) -> int:
        return len(self.data) - self.offsets[self.first]

    @property
    def records(self) -> int:
        return self.count - self.first


@dataclass(frozen=True, slots=True)
class Snapshot:
    views: tuple[ChunkView, ...]
    records: int
    bytes: int
    window: int
    evicted: int


class Ring:
    def __init__(self, window: int, counters: Counters | None = None, block: int = BLOCK):
        if window < 1:
            raise ValueError("the window must be at least one byte")
        self.window = window
        self.c = counters if counters is not None else Counters()
        # a small window gets small chunks, so that eviction stays fine-grained
        self.block = max(4096, min(block, window // 8))
        self.own_chunk = min(OWN_CHUNK, self.block)
        self.chunks: deque[Chunk] = deque()
        self._open: list = []  # small frames waiting to be joined
        self._open_bytes = 0
        self._open_count = 0
        self.bytes = 0  # pcap bytes kept (records with their headers)
        self.records = 0
        self._seq = 0  # of the next chunk
        init_counters(self.c, "dropped.evicted", "bytes_dropped.evicted")

    # -- filling -------------------------------------------------------------
    def append(self, area, count: int) -> None:
        """Keep a validated record area of ``count`` records (``frame.decode``
        output).  The area must not change afterwards (received messages and
        decompressed bytes do not)."""
        n = len(area)
        if not count:
            return
        if n >= self.own_chunk:
            self._seal()
            self.chunks.append(Chunk(memoryview(area).toreadonly(), count, self._next_seq()))
        else:
            if self._open_bytes + n > self.block:
                self._seal()
            self._open.append(area)
            self._open_bytes += n
            self._open_count += count
        self.bytes += n
        self.records += count
        if self.bytes > self.window:
            self._evict(self.bytes - self.window)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _seal(self) -> None:
        """Join the collected small frames into one indexed chunk."""
        if not self._open:
            return
        data = b"".join(self._open) if len(self._open) > 1 else bytes(self._open[0])
        self.chunks.append(Chunk(data, self._open_count, self._next_seq()))
        self._open.clear()
        self._open_bytes = self._open_count = 0

    def _evict(self, excess: int) -> None:
        evicted = evicted_bytes = 0
        chunks = self.chunks
        while excess > 0:
            if not chunks:
                self._seal()
            c = chunks[0]
            live = c.live_bytes
            start = c.offsets[c.first]
            # first record k that starts at least `excess` bytes after the
            # first live one: evicting the records before it is just enough
            k = bisect_left(c.offsets, start + excess, c.first, c.count)
            if live <= excess or k == c.count:
                chunks.popleft()
                n, b = c.count - c.first, live
            else:
                n, b = k - c.first, c.offsets[k] - start
                c.first = k
                dead = c.offsets[k]
                if dead >= COMPACT_MIN and dead > live - b:
                    chunks[0] = Chunk(bytes(memoryview(c.data)[dead:]), c.count - k, c.seq)
            evicted += n
            evicted_bytes += b
            excess -= b
        self.bytes -= evicted_bytes
        self.records -= evicted
        self.c["dropped.evicted"] += evicted
        self.c["bytes_dropped.evicted"] += evicted_bytes

    # -- reading ---------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """What a query sees: the records kept now, oldest first."""
        self._seal()
        views = tuple(c.view() for c in self.chunks)
        return Snapshot(views, self.records, self.bytes, self.window, self.c["dropped.evicted"])

    def outside(self, view: ChunkView | None) -> bool:
        """Whether a snapshot's ``view`` refers to memory the ring no longer
        holds (its chunk was evicted, or replaced by a compacted copy)."""
        if view is None:
            return False
        if not self.chunks:
            return True  # every sealed chunk is gone
        oldest = self.chunks[0]
        return view.seq < oldest.seq or (view.seq == oldest.seq and view.data is not oldest.data)

    @property
    def chunk_count(self) -> int:
        return len(self.chunks) + (1 if self._open else 0)


class _Plan:
    """Selected records of one chunk view: a whole range (``idx`` None,
    from record ``first``) or a list of record indices."""

    __slots__ = ("view", "idx", "first", "nbytes", "pos")

    def __init__(self, view: ChunkView, idx: array | None, first: int, nbytes: int):
        self.view = view
        self.idx = idx
        self.first = first
        self.nbytes = nbytes
        # progress while producing pieces: byte offset (range) or index (list)
        self.pos = view.offsets[first] if idx is None else 0


class Selection:
    """The records of a snapshot a query asked for, as pcap record bytes.

    ``since_us``/``until_us`` select timestamps in ``[since, until)``;
    ``flt`` a compiled BPF program; ``max_bytes`` bounds the whole pcap file
    (its 24-byte header included) and keeps the newest selected records
    that fit.  Call ``plan()`` until it returns True, then ``next_piece()``
    until it returns None.
    """

    def __init__(self, snap: Snapshot, since_us: int | None = None, until_us: int | None = None,
                 max_bytes: int | None = None, flt: Filter | None = None, piece: int = PIECE):
        if max_bytes is not None and max_bytes < len(pcap.GLOBAL_HEADER_BYTES):
            raise ValueError("max_bytes is smaller than a pcap header")
        self.snap = snap
        self.lo = 0 if since_us is None else max(0, since_us)
        self.hi = NO_LIMIT if until_us is None else max(0, until_us)
        self.max_bytes = max_bytes
        self.flt = flt
        self.piece = max(piece, pcap.SNAPLEN + pcap.RECORD_HEADER_SIZE)
        self.records = 0
        self.bytes = 0  # record bytes (without the pcap header)
        self.planned = False
        self._plans: list[_Plan] = []
        self._next_view = 0
        self._out = 0  # plans fully produced
        self._piece_view: ChunkView | None = None  # behind the last zero-copy piece
        self._every = since_us is None and until_us is None and flt is None

    # -- planning ----------------------------------------------------------------
    def plan(self, budget: int = PLAN_BUDGET) -> bool:
        """Select from the next chunks, scanning about ``budget`` bytes."""
        views = self.snap.views
        scanned = 0
        while self._next_view < len(views) and scanned < budget:
            v = views[self._next_view]
            self._next_view += 1
            if v.first >= v.count:
                continue
            if self._every:
                self._plans.append(_Plan(v, None, v.first, v.nbytes))
                continue
            scanned += v.nbytes
            idx = array("I", [0]) * (v.count - v.first)
            nbytes = _bffi.new("uint64_t *")
            n = _blib.nzp_select(self.flt.ptr if self.flt else _bffi.NULL,
                                 _bffi.from_buffer(v.data), len(v.data),
                                 _bffi.from_buffer("uint32_t[]", v.offsets),
                                 _bffi.from_buffer("uint64_t[]", v.ts),
                                 v.first, v.count, self.lo, self.hi,
                                 _bffi.from_buffer("uint32_t[]", idx), nbytes)
            if n == v.count - v.first:
                self._plans.append(_Plan(v, None, v.first, nbytes[0]))
            elif n:
                del idx[n:]
                self._plans.append(_Plan(v, idx, v.first, nbytes[0]))
        if self._next_view < len(views):
            return False
        if self.max_bytes is not None:
            self._keep_newest(self.max_bytes - len(pcap.GLOBAL_HEADER_BYTES))
        self.records = sum(p.view.count - p.first if p.idx is None else len(p.idx)
                           for p in self._plans)
        self.bytes = sum(p.nbytes for p in self._plans)
        self.planned = True
        # from now on only the plans hold chunks, each until it is produced
        self.snap = replace(self.snap, views=())
        return True

    def _keep_newest(self, budget: int) -> None:
        """Drop the oldest selected records until the rest fits in budget."""
        plans = self._plans
        for i in range(len(plans) - 1, -1, -1):
            p = plans[i]
            if p.nbytes <= budget:
                budget -= p.nbytes
                continue
            v = p.view
            if p.idx is None:
                k = bisect_left(v.offsets, len(v.data) - budget, p.first, v.count)
                if k < v.count:
                    plans[i] = _Plan(v, None, k, len(v.data) - v.offsets[k])
                    i -= 1
            else:
                used = _bffi.new("uint64_t *")
                k = _blib.nzp_tail_fit(_bffi.from_buffer(v.data), len(v.data),
                                       _bffi.from_buffer("uint32_t[]", v.offsets),
                                       _bffi.from_buffer("uint32_t[]", p.idx), len(p.idx),
                                       budget, used)
                if k < len(p.idx):
                    plans[i] = _Plan(v, p.idx[k:], p.first, used[0])
                    i -= 1
            del plans[: i + 1]
            return

    def oldest_view(self) -> ChunkView | None:
        """The oldest chunk this selection still refers to (None: none),
        the last zero-copy piece included: it keeps its chunk alive until the
        next piece is asked for (the previous one has been handed on)."""
        if not self.planned:
            return self.snap.views[0] if self.snap.views else None
        if self._piece_view is not None:
            return self._piece_view
        return self._plans[self._out].view if self._out < len(self._plans) else None

    # -- producing -----------------------------------------------------------------
    def _done_with(self, i: int) -> None:
        """Plan i is produced: let go of its chunk (it may be evicted already)."""
        self._plans[i] = None
        self._out = i + 1

    def next_piece(self) -> bytes | memoryview | None:
        """The next bytes of the response (record bytes only), or None when
        everything was produced.  Large whole ranges are views of the chunks
        (zero-copy); scattered records are gathered into a new buffer."""
        if not self.planned:
            raise RuntimeError("plan() first")
        self._piece_view = None
        plans = self._plans
        buf = None
        pos = 0
        while self._out < len(plans):
            p = plans[self._out]
            v = p.view
            if p.idx is None:
                left = len(v.data) - p.pos
                if buf is None and left >= ZERO_COPY_MIN:
                    take = min(left, self.piece)
                    out = memoryview(v.data)[p.pos : p.pos + take]
                    self._piece_view = v
                    p.pos += take
                    if p.pos == len(v.data):
                        self._done_with(self._out)
                    return out
                if buf is not None and left >= ZERO_COPY_MIN:
                    break  # send what was gathered, then this range as it is
                if buf is None:
                    buf = bytearray(self.piece)
                take = min(left, self.piece - pos)
                buf[pos : pos + take] = memoryview(v.data)[p.pos : p.pos + take]
                pos += take
                p.pos += take
                if p.pos < len(v.data):
                    break  # buffer full
            else:
                if buf is None:
                    buf = bytearray(self.piece)
                taken = _bffi.new("uint32_t *")
                idx = _bffi.from_buffer("uint32_t[]", p.idx)
                written = _blib.nzp_gather(_bffi.from_buffer(v.data), len(v.data),
                                           _bffi.from_buffer("uint32_t[]", v.offsets),
                                           idx + p.pos, len(p.idx) - p.pos,
                                           _bffi.from_buffer(buf) + pos, self.piece - pos,
                                           taken)
                pos += written
                p.pos += taken[0]
                if p.pos < len(p.idx):
                    if not taken[0] and not written and pos == 0:
                        raise RuntimeError("a record larger than a piece")
                    break  # buffer full
            self._done_with(self._out)
        if buf is None or pos == 0:
            return None
        if pos < len(buf) // 2:
            return bytes(memoryview(buf)[:pos])
        return memoryview(buf)[:pos]
