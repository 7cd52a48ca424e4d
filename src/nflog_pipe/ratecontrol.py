"""Rate control: pass frames on as they are, squash and compress them, or
drop the excess, depending on the rate offered.  Pure logic, no sockets: the
clock is injectable and every decision is a return value.

Semantics (``docs/rate-control.md``):

* the *offered rate* is measured on record-area bytes (pcap records as they
  travel uncompressed) entering the controller: the last ``wm_interval``
  bytes divided by the time they took to arrive, or, when the last second
  holds less than that, the bytes of the last second per second
  (:class:`RateMeter`);
* offered rate at or below ``lwm``: a frame goes on at once, unchanged
  (after whatever of the same sender was still waiting to be compressed);
* above ``lwm``: frames are squashed per sender id and compressed; a squash
  buffer leaves when it holds ``batch_bytes`` or ``delay`` seconds after its
  first frame came in, whichever is first (:meth:`RateController.poll`);
* ``hwm`` is a token bucket (:class:`TokenBucket`): on average at most
  ``hwm`` bytes per second go on, plus a burst of ``wm_interval`` bytes.  A
  frame larger than what the bucket holds keeps the leading records that
  fit and loses the rest; a frame that finds the bucket empty is dropped
  whole.  Every packet dropped is counted as ``dropped.hwm``: only the excess
  is dropped, and what goes on is spread over time, not all of one window.

A watermark of 0 is off.  Both rates are in bytes per second here; the
daemons' options are in MiB/s (:func:`from_options`).
"""

from __future__ import annotations

import argparse
import logging
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import codec, config, frame
from ._records import ffi as _rffi
from ._records import lib as _rlib
from .config import Option
from .counters import init as init_counters
from .logs import RateLimited

log = logging.getLogger(__name__)

MiB = 1 << 20
#: the rate of light traffic is measured over this many seconds
MAX_SPAN = 1.0
#: a burst arriving faster than this is measured as if it took this long
MIN_SPAN = 0.01


@dataclass(slots=True)
class Output:
    """One frame to send.  ``codec`` NONE: ``payload`` is the record area
    exactly as it was offered (the same object, not a copy)."""

    key: bytes
    count: int
    raw_len: int
    payload: bytes | memoryview
    codec: int


class RateMeter:
    """Offered byte rate from (time, bytes) samples, O(1) amortised per sample."""

    def __init__(self, window_bytes: int, max_span: float = MAX_SPAN, min_span: float = MIN_SPAN):
        if window_bytes <= 0:
            raise ValueError("the measuring window must be more than 0 bytes")
        self.window = window_bytes
        self.max_span = max_span
        self.min_span = min_span
        self._q: deque[tuple[float, int]] = deque()
        self._sum = 0

    def add(self, now: float, n: int) -> None:
        q = self._q
        q.append((now, n))
        self._sum += n
        # keep just enough samples: the bytes after the oldest sample's time
        # must hold the window, the oldest is only the start mark
        while len(q) >= 2 and self._sum - q[0][1] - q[1][1] >= self.window:
            self._sum -= q.popleft()[1]

    def rate(self, now: float) -> float:
        q = self._q
        cutoff = now - self.max_span
        while q and q[0][0] <= cutoff:
            self._sum -= q.popleft()[1]
        if q:
            after = self._sum - q[0][1]
            if after >= self.window:
                return after / max(now - q[0][0], self.min_span)
        return self._sum / self.max_span


class TokenBucket:
    """``rate`` bytes per second on average, bursts of ``depth`` bytes."""

    def __init__(self, rate: float, depth: float, now: float):
        self.rate = rate
        self.depth = depth
        self.tokens = depth
        self.last = now

    def budget(self, now: float) -> float:
        """Bytes that may go on now."""
        if now > self.last:
            self.tokens = min(self.depth, self.tokens + (now - self.last) * self.rate)
            self.last = now
        return self.tokens

    def spend(self, n: int) -> None:
        self.tokens -= n

    @property
    def full(self) -> bool:
        return self.tokens >= self.depth


def record_prefix(area, count: int, budget: float, at_least_one: bool = False) -> tuple[int, int]:
    """How many leading records of a well-formed record area fit in
    ``budget`` bytes, and their size.  The walk over the records is in C
    (``nzp_index``); Python runs once per frame."""
    if count == 0:
        return 0, 0
    offsets = _rffi.new("uint32_t[]", count)
    ts = _rffi.new("uint64_t[]", count)
    n = _rlib.nzp_index(_rffi.from_buffer(area), len(area), count, offsets, ts)
    starts = _rffi.unpack(offsets, n) + [len(area)]
    # records 0..k-1 end where record k starts
    k = max(0, bisect_right(starts, budget) - 1)
    if k == 0 and at_least_one:
        k = 1
    return min(k, count), starts[min(k, n)]


class _Squash:
    __slots__ = ("since", "buf", "count")

    def __init__(self, since: float):
        self.since = since
        self.buf = bytearray()
        self.count = 0


PASS = "pass"
COMPRESS = "compress"


class RateController:
    def __init__(self, lwm: float, hwm: float, wm_interval: float,
                 compressor: codec.Compressor | None = None, delay: float = 0.1,
                 batch_bytes: int = MiB, counters: dict | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if lwm < 0 or hwm < 0:
            raise ValueError("watermarks cannot be negative")
        if lwm and hwm and hwm < lwm:
            raise ValueError(f"the high watermark ({hwm / MiB:g} MiB/s) is below the low "
                             f"watermark ({lwm / MiB:g} MiB/s)")
        if delay <= 0:
            raise ValueError("the compression delay must be more than 0 s")
        if not 0 < batch_bytes <= frame.MAX_RAW:
            raise ValueError(f"the squash size must be 1 to {frame.MAX_RAW} bytes")
        self.lwm = lwm
        self.hwm = hwm
        self.clock = clock
        self.compressor = compressor or codec.Compressor(codec.ZLIB)
        self.delay = delay
        self.batch = batch_bytes
        self.meter = RateMeter(int(wm_interval))
        self.bucket = TokenBucket(hwm, wm_interval, clock()) if hwm else None
        self.mode = PASS
        self.rate = 0.0
        self._pending: dict[bytes, _Squash] = {}
        self._deadline = float("inf")
        self._log = RateLimited(log, 10.0, clock)
        self.c = counters if counters is not None else {}
        init_counters(self.c, "dropped.hwm", "frames_dropped.hwm", "compressed_frames",
                  "compressed_packets", "compressed_raw_bytes", "compressed_bytes")

    # -- the decisions -----------------------------------------------------------
    def offer(self, key: bytes, records: bytes | bytearray | memoryview, count: int,
              now: float | None = None) -> list[Output]:
        """Take one frame's record area; return the frames to send now, in
        order (possibly none, possibly earlier squashed ones)."""
        now = self.clock() if now is None else now
        n = len(records)
        self.meter.add(now, n)
        out = self.poll(now) if now >= self._deadline else []
        if self.bucket is not None:
            budget = self.bucket.budget(now)
            if budget < n:
                # keep what fits (at least one record when the bucket is full,
                # so that a record larger than the burst still gets through)
                k, size = record_prefix(records, count, budget, self.bucket.full)
                self.c["dropped.hwm"] += count - k
                self._log.warning("hwm", "offered rate above --hwm: dropping the excess",
                                  event="hwm_drop",
                                  rate_mib_s=round(self.meter.rate(now) / MiB, 3))
                if k == 0:
                    self.c["frames_dropped.hwm"] += 1
                    return out
                records, count, n = memoryview(records)[:size], k, size
            self.bucket.spend(n)
        self.rate = self.meter.rate(now)
        mode = COMPRESS if self.lwm and self.rate > self.lwm else PASS
        if mode != self.mode:
            self.mode = mode
            log.debug("rate control: %s", mode, extra={"event": "rate_mode", "mode": mode,
                                                         "rate_mib_s": round(self.rate / MiB, 3)})
        p = self._pending.get(key)
        if mode == PASS:
            if p is not None:
                out.append(self._emit(key))
            out.append(Output(key, count, n, records, codec.NONE))
            return out
        if p is not None and len(p.buf) + n > self.batch:
            out.append(self._emit(key))
            p = None
        if p is None:
            if n >= self.batch:  # big enough alone: no copy
                out.append(self._compress(key, records, count))
                return out
            p = self._pending[key] = _Squash(now)
            self._deadline = min(self._deadline, now + self.delay)
        p.buf += records
        p.count += count
        if len(p.buf) >= self.batch:
            out.append(self._emit(key))
        return out

    def poll(self, now: float | None = None) -> list[Output]:
        """Squashed frames whose delay is over."""
        now = self.clock() if now is None else now
        if now < self._deadline:
            return []
        due = [k for k, p in self._pending.items() if p.since + self.delay <= now]
        return [self._emit(k) for k in due]

    def flush(self) -> list[Output]:
        """Everything still waiting (at exit)."""
        return [self._emit(k) for k in list(self._pending)]

    def timeout(self, now: float | None = None) -> float | None:
        """Seconds until ``poll`` has something to emit (None: nothing waits)."""
        if not self._pending:
            return None
        now = self.clock() if now is None else now
        return max(0.0, self._deadline - now)

    @property
    def pending_bytes(self) -> int:
        return sum(len(p.buf) for p in self._pending.values())

    # -- helpers -----------------------------------------------------------------
    def _emit(self, key: bytes) -> Output:
        p = self._pending.pop(key)
        self._deadline = min((q.since for q in self._pending.values()), default=float("inf"))
        self._deadline += self.delay
        return self._compress(key, p.buf, p.count)

    def _compress(self, key: bytes, records, count: int) -> Output:
        payload = self.compressor.compress(records)
        c = self.c
        c["compressed_frames"] += 1
        c["compressed_packets"] += count
        c["compressed_raw_bytes"] += len(records)
        c["compressed_bytes"] += len(payload)
        return Output(key, count, len(records), payload, self.compressor.codec)


# -- options shared by the sender and the compress relay ---------------------

def _codec_name(text: str) -> int:
    try:
        return codec.parse_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


WATERMARK_OPTIONS = [
    Option("lwm", ("--lwm",), type=config.mib(100000.0, lo=1e-6, zero=True), default=1.0, metavar="MiB/s",
           help="low watermark: above this offered rate frames are squashed and compressed "
           "(0: never compress)"),
    Option("hwm", ("--hwm",), type=config.mib(100000.0, lo=1e-6, zero=True), default=5.0, metavar="MiB/s",
           help="high watermark: on average at most this much goes on, the excess is dropped "
           "and counted as dropped.hwm (0: never drop)"),
    Option("wm_interval", ("--wm-interval",), type=config.mib(1024.0), default=1.0,
           metavar="MiB", help="the rate is measured over the last this-many MiB (at most "
           "over the last second), and bursts of this size above --hwm still pass"),
]

COMPRESS_OPTIONS = [
    Option("codec", ("--codec",), type=_codec_name, default="zlib", metavar="zlib|zstd",
           help="compression codec: zlib, or zstd (needs the zstandard package)"),
    Option("compress_level", ("--compress-level",), type=config.count(1, 22), metavar="N",
           help="compression level (zlib 1-9, default 6; zstd 1-19, default 3)"),
    Option("compress_delay", ("--compress-delay",), type=config.seconds(60.0), default=0.1,
           metavar="S", help="squashed frames leave at the latest this long after their first "
           "packet came in, however light the traffic"),
    Option("compress_batch", ("--compress-batch",), type=config.count(1, 65536), default=1024,
           metavar="KiB", help="squashed frames leave once they hold this much (uncompressed)"),
]


def from_options(args, counters: dict | None = None) -> RateController:
    """A controller from the daemons' options; ValueError with a message for
    the user when they do not fit together."""
    if args.lwm and args.hwm and args.hwm < args.lwm:
        raise ValueError(f"--hwm {args.hwm:g} is below --lwm {args.lwm:g}")
    level = getattr(args, "compress_level", None)
    cdc = args.codec  # an int: argparse applies _codec_name to the default too
    try:
        level = codec.check(cdc, level)
    except ValueError as e:
        raise ValueError(f"--codec/--compress-level: {e}") from None
    batch = args.compress_batch * 1024
    if batch > frame.MAX_RAW:
        raise ValueError(f"--compress-batch is above {frame.MAX_RAW // 1024} KiB")
    return RateController(args.lwm * MiB, args.hwm * MiB, args.wm_interval * MiB,
                          codec.Compressor(cdc, level), args.compress_delay, batch, counters)


def describe(rc: RateController) -> dict:
    """Settings for the start-up log record."""
    return {"lwm_mib_s": rc.lwm / MiB, "hwm_mib_s": rc.hwm / MiB,
            "wm_interval_mib": rc.meter.window / MiB, "codec": rc.compressor.name,
            "compress_level": rc.compressor.level, "compress_delay_s": rc.delay,
            "compress_batch_kib": rc.batch // 1024}
