"""When the sender's record areas become frames, and when it reads again (sans-IO).

The sender's loop (``sender.Sender``) reads the NFLOG socket into one record
area per destination (the C walker puts each record in the area of its
flow's shard) and sends areas as frames.  It decides nothing itself: it tells
``SenderCore`` what happened (a read ended, an area filled, a socket became
writable, time passed, the process is exiting) and does what the core
answers: send these areas, each as a frame that can or cannot still grow
(``outgoing``: a refused frame that can grow is held, one that cannot is
dropped and counted).  ``DrainPacer`` says how long to wait before the next
read.  Both are plain state machines, tested by table
(tests/unit/test_sender_core.py, tests/unit/test_drain_pacer.py).
"""

from __future__ import annotations

from . import outgoing


class SenderCore:
    """Which areas go out, and when.

    - An area that must close goes out at once and cannot grow (``full``):
      with one destination once it holds more than ``--batch-size`` (it might
      not take the next kernel batch whole), with several when its next
      record does not fit (up to ``--batch-size`` + 256 KiB: each shard gets
      a share of each kernel batch, and closing at ``--batch-size`` made its
      frames 40 % smaller and more numerous than one destination's).
    - When the socket is drained, an area goes out if its oldest record has
      waited ``hold`` seconds (``due``), as a frame that may grow.  One
      destination: ``hold`` 0, each drain makes a frame.  Several: each gets
      1/N of every kernel batch, and sent at each drain that would make N
      times the frames of one destination, each costing a send and a wake-up
      of ZeroMQ's I/O thread (about 25 % more CPU per packet with 2 shards,
      bench/RESULTS.md); with ``hold`` = 10 ms (the kernel's own flush
      period) frames are as large as one destination's, for at most 10 ms
      more latency.
    - A held area (its socket's queue was full) waits for its socket to be
      writable (``writable``); meanwhile it keeps filling, and once full it
      goes out through ``full`` (and is dropped if still refused).
    - At exit every non-empty area goes out and cannot grow (``final``).

    Areas are numbered 0..n-1; ``streams[i]`` numbers and counts area i's frames.
    """

    HOLD = 0.01

    def __init__(self, streams: list[outgoing.Stream], hold: float | None = None):
        self.streams = streams
        self.n = len(streams)
        self.hold = (0.0 if self.n == 1 else self.HOLD) if hold is None else hold
        self.since: list[float | None] = [None] * self.n  # when the oldest unsent record was read
        self.waiting = [False] * self.n  # held: its socket's queue was full

    # -- events in, areas to send out: lists of (area, can_grow) -----------------
    def filled(self, now: float, counts) -> None:
        """A read put records in the areas (``counts[i]`` records in area i)."""
        since = self.since
        for i in range(self.n):
            if since[i] is None and counts[i]:
                since[i] = now

    def full(self, rooms) -> list[tuple[int, bool]]:
        """The reader stopped: an area has no room left (``rooms[i]`` False)."""
        return [(i, False) for i in range(self.n) if not rooms[i]]

    def due(self, now: float, counts) -> list[tuple[int, bool]]:
        """The socket is drained (or time passed): the areas whose oldest record has waited."""
        since, waiting, hold = self.since, self.waiting, self.hold
        return [(i, True) for i in range(self.n)
                if counts[i] and not waiting[i] and since[i] is not None
                and now - since[i] >= hold]

    def writable(self, i: int) -> list[tuple[int, bool]]:
        """Area i's socket can take a frame again."""
        return [(i, True)] if self.waiting[i] else []

    def final(self, counts) -> list[tuple[int, bool]]:
        return [(i, False) for i in range(self.n) if counts[i]]

    def next_due(self) -> float | None:
        """When the next area falls due (None: none is waiting for its time)."""
        t = [s for s, w in zip(self.since, self.waiting, strict=True) if s is not None and not w]
        return min(t) + self.hold if t else None

    # -- what became of an area --------------------------------------------------
    def outcome(self, i: int, outcome: str) -> bool:
        """Area i was offered (``outgoing`` SENT, HELD or DROPPED); whether
        the area is now empty (the loop resets it)."""
        if outcome is outgoing.HELD:
            self.waiting[i] = True
            return False
        self.waiting[i] = False
        self.since[i] = None
        return True


class DrainPacer:
    """How long the loop waits before draining the netlink socket again.

    Every wakeup costs this process CPU whatever it brings: a blocking poll
    and its wake-up (about 20 µs on the 2-core reference VM), a frame handed
    to ZeroMQ's I/O thread and its TCP send (about 30 µs).  Two rules keep
    wakeups and frames few when packets come fast:

    - drains are at least ``min_interval`` (1 ms) apart.  A sudden flood is
      read one packet per netlink message until the kernel batch size has
      caught up (``QthreshPolicy``, 10 ms); drained as fast as they come,
      those would make hundreds of small frames within milliseconds and
      fill ZeroMQ's queue, which counts messages (the frames after it are
      dropped, ``dropped.queue_full``);
    - the kernel hands over at most about 256 KiB per netlink batch, so with
      large packets at high rates a batch arrives every 1 to 2 ms.  When the
      recent byte rate fills ``frame_bytes`` within ``max_wait``, the loop
      waits that long after each drain, so that one wakeup and one frame
      carry several kernel batches.  The rate is measured over windows of
      ``interval`` seconds.

    At low and moderate rates neither applies and latency is untouched; at
    high rates at most ``max_wait`` is added.
    """

    def __init__(self, frame_bytes: int, max_wait: float = 0.005, interval: float = 0.05,
                 min_interval: float = 0.001):
        self.frame_bytes = frame_bytes
        self.max_wait = max_wait
        self.interval = interval
        self.min_interval = min_interval
        self.wait = 0.0
        self._t0: float | None = None
        self._b0 = 0

    def update(self, bytes_total: int, started: float, now: float) -> float:
        """After a drain that began at ``started`` and ended at ``now``, with
        the cumulative byte count: the seconds to wait before the next drain
        (0: as soon as the socket has data).  The next drain then begins at
        least ``min_interval`` after this one began."""
        gap = started + self.min_interval - now
        if self._t0 is None:
            self._t0, self._b0 = now, bytes_total
        elif now - self._t0 >= self.interval:
            rate = (bytes_total - self._b0) / (now - self._t0)
            fill = self.frame_bytes / rate if rate > 0 else float("inf")
            self.wait = fill if fill <= self.max_wait else 0.0
            self._t0, self._b0 = now, bytes_total
        return max(self.wait, gap, 0.0)
