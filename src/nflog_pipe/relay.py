"""nflog-zmq-compress and nflog-zmq-decompress: relays between senders and a
receiver, in the spirit of ``zmq.devices``.

A :class:`Relay` binds SRC (PULL, many peers may connect) and connects DST
(PUSH).  Every frame that comes in is validated whole (``frame.decode``) and
its stream checked for transit losses (``tracking.StreamTracker``); then

* the compress relay hands its records to a ``RateController``: passed on as
  they are below ``--lwm``, squashed (per sender id) and compressed above it,
  the excess dropped above ``--hwm``;
* the decompress relay passes the records on uncompressed.

Output frames keep the sender id of the frames they carry but are numbered
by the relay (its own ``instance``, ``seq`` and ``pkt_seq`` per sender id),
so the next stage checks the link into it.  Sends never block: past
``--zmq-buffer`` queued frames a frame is dropped and its packets counted
(``dropped.queue_full``; the rule is ``outgoing``'s).  Any stage of a chain
can restart: ZeroMQ reconnects, and a restarted relay is a new stream to the
stage after it.  ``RelayCore`` is the relay without sockets, ``Relay`` its
sockets and loop.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import zmq

from . import config, frame, listen, outgoing, ratecontrol, runtime, security
from .config import Option
from .counters import init as init_counters
from .logs import RateLimited
from .metrics import Counters
from .ratecontrol import Output, RateController
from .tracking import MAX_STREAMS, StreamTracker, drain

log = logging.getLogger("nflog_pipe.relay")

COMPRESS, DECOMPRESS = "compress", "decompress"


class OutStreams:
    """The relay's numbering of what it sends, one stream per sender id.

    At most ``MAX_STREAMS`` ids are remembered (forged ids cost nothing beyond that);
    the least recently used is forgotten in O(1), and if it comes back its numbering
    starts again at 0, which the next stage sees as a rewound stream, not as loss."""

    def __init__(self, counters: Counters, instance: int | None = None,
                 max_streams: int = MAX_STREAMS):
        self.instance = random.getrandbits(32) if instance is None else instance
        self.max_streams = max_streams
        self.c = counters
        init_counters(self.c, "out_streams_forgotten")
        self._next: dict[bytes, list[int]] = {}  # sender id -> [seq, pkt_seq], oldest first

    def frame(self, out: Output) -> bytes:
        seq, pkt_seq = self._next.get(out.key) or (0, 0)
        flags = frame.FLAG_COMPRESSED if out.codec != frame.CODEC_NONE else 0
        hdr = frame.Header.new(out.key, instance=self.instance, count=out.count, seq=seq,
                               pkt_seq=pkt_seq, raw_len=out.raw_len, payload_len=len(out.payload),
                               flags=flags, codec=out.codec)
        return b"".join((hdr.pack(out.key), out.payload))

    def sent(self, out: Output) -> None:
        nxt = self._next.pop(out.key, None)  # re-inserted last: most recently used
        if nxt is None:
            nxt = [0, 0]
            if len(self._next) >= self.max_streams:
                del self._next[next(iter(self._next))]
                self.c["out_streams_forgotten"] += 1
        self._next[out.key] = nxt
        nxt[0] += 1
        nxt[1] += out.count


class RelayCore:
    """What a relay does with frames, without sockets (sans-IO): a frame in
    (bytes) gives the frames to send out (``Output``, made into bytes by
    ``frame_of``); the loop reports what ZeroMQ did with each (``result``).
    Every frame out is a composed one: refused by a full queue it is dropped
    and counted (``outgoing``).  Tested by table in tests/unit/test_relay_core.py."""

    def __init__(self, mode: str, rc: RateController | None = None,
                 counters: Counters | None = None):
        if mode not in (COMPRESS, DECOMPRESS):
            raise ValueError(f"relay mode {mode!r}")
        if mode == DECOMPRESS and rc is not None:
            raise ValueError("the decompress relay has no rate control")
        self.mode = mode
        self.c = counters if counters is not None else Counters()
        self.rc = rc
        if rc is not None:
            rc.c = self.c
            init_counters(self.c, "dropped.hwm", "frames_dropped.hwm", "compressed_frames",
                          "compressed_packets", "compressed_raw_bytes", "compressed_bytes")
        self.out = OutStreams(self.c)
        self._warn = RateLimited(log, 10.0)
        self.tracker = StreamTracker(self.c, log, self._warn)
        init_counters(self.c, "frames_in", "packets_in", "bytes_in", "frames_out", "packets_out",
                      "bytes_out", "dropped.malformed", "frames_dropped.malformed",
                      "dropped.queue_full", "frames_dropped.queue_full")

    def handle(self, data, peer: str = "") -> list[Output]:
        """One frame in (validated whole, its stream checked for transit losses)."""
        f = self.tracker.accept(data, peer)
        if f is None:
            return []
        key = f.sender_id.encode()
        if self.rc is None:
            return [Output(key, f.count, f.size, f.records, frame.CODEC_NONE)]
        return self.rc.offer(key, f.records, f.count)

    def tick(self, now: float | None = None) -> list[Output]:
        """Squashed frames whose delay is over."""
        return self.rc.poll(now) if self.rc is not None else []

    def flush(self) -> list[Output]:
        """At exit: whatever the rate controller still holds."""
        return self.rc.flush() if self.rc is not None else []

    def timeout(self) -> float | None:
        return self.rc.timeout() if self.rc is not None else None

    def frame_of(self, out: Output) -> bytes:
        return self.out.frame(out)

    def result(self, out: Output, accepted: bool) -> str:
        outcome = outgoing.account(self.c, accepted, out.count, out.raw_len, False)
        if outcome is outgoing.SENT:
            self.out.sent(out)
        else:
            self._warn.warning("queue_full", "output queue full: frames dropped",
                               event="queue_full")
        return outcome


class Relay:
    """One relay: ``bind_in`` / ``connect_out``, then ``run()`` (in this
    thread) or ``start()`` (in a new one) until ``stop()``.  The sockets and
    the loop around a ``RelayCore``."""

    def __init__(self, mode: str, rc: RateController | None = None,
                 counters: Counters | None = None, zmq_buffer: int = 50,
                 linger: float = 1.0, ctx: zmq.Context | None = None):
        self.core = RelayCore(mode, rc, counters)
        self.mode = mode
        self.c = self.core.c
        self.zmq_buffer = zmq_buffer
        self.linger = linger
        self._own_ctx = ctx is None
        self.ctx = ctx
        self._binds: list[str] = []
        self._connects: list[str] = []
        self.pull: zmq.Socket | None = None
        self.push: zmq.Socket | None = None
        #: CURVE (security.Curve): server on the input, client on the output
        self.curve = None
        self.monitor: listen.Monitor | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    @property
    def out(self) -> OutStreams:
        return self.core.out

    # -- set-up ------------------------------------------------------------------
    def bind_in(self, endpoint: str) -> None:
        self._binds.append(endpoint)

    def connect_out(self, endpoint: str) -> None:
        self._connects.append(endpoint)

    def setup(self) -> None:
        """Create the sockets, bind and connect (raises zmq.ZMQError).  Called
        by ``run()`` when not done before, in the thread that runs the loop."""
        if self.pull is not None:
            return
        if self.ctx is None:
            self.ctx = zmq.Context(1)
        if self.curve is not None:  # the authenticator runs before anything is bound
            self.curve.start(self.ctx)
        self.pull = self.ctx.socket(zmq.PULL)
        self.push = self.ctx.socket(zmq.PUSH)
        self.pull.ipv6 = self.push.ipv6 = True  # IPv6 addresses and names too
        if self.curve is not None:
            self.curve.server(self.pull)
            self.curve.client(self.push)
        self.pull.rcvhwm = self.zmq_buffer
        self.pull.maxmsgsize = frame.MAX_FRAME
        self.pull.linger = 0
        listen.harden(self.pull)
        self.monitor = listen.Monitor(self.pull, self.c, f"relay input {' '.join(self._binds)}")
        self.push.sndhwm = self.zmq_buffer
        self.push.linger = int(self.linger * 1000)
        self.push.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self.push.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
        for ep in self._binds:
            self.pull.bind(ep)
        for ep in self._connects:
            self.push.connect(ep)

    # -- frames in, frames out ----------------------------------------------------
    def handle(self, data, peer: str = "") -> None:
        for out in self.core.handle(data, peer):
            self._send(out)

    def tick(self, now: float | None = None) -> None:
        for out in self.core.tick(now):
            self._send(out)

    def _send(self, out: Output) -> None:
        self.core.result(out, outgoing.try_send(self.push, self.core.frame_of(out)))

    # -- the loop ----------------------------------------------------------------
    def run(self, rt: runtime.Runtime | None = None) -> None:
        try:
            self.setup()
        except BaseException as e:
            self.error = e
            self.ready.set()
            raise
        self.ready.set()
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        pull = self.pull
        while not self._stopping and not (rt is not None and rt.stopping):
            timeout = rt.timeout(0.5) if rt is not None else 0.1
            if (due := self.core.timeout()) is not None:
                timeout = min(timeout, due)
            if poller.poll(timeout * 1000):
                drain(pull, self.handle, 256)
            now = time.monotonic()
            self.tick(now)
            self.monitor.poll()
            if rt is not None:
                rt.tick(now)
        self.finish()

    def finish(self, max_frames: int = 100000) -> None:
        """At exit: handle what ZeroMQ already received, then send whatever
        the rate controller still holds."""
        if self.pull is None:
            return
        drain(self.pull, self.handle, max_frames)
        for out in self.core.flush():
            self._send(out)

    def start(self) -> threading.Thread:
        """Run in a new (daemon) thread; returns once the sockets are set up."""
        self._thread = threading.Thread(target=self._run_quietly, name=f"relay-{self.mode}",
                                        daemon=True)
        self._thread.start()
        self.ready.wait(10)
        if self.error is not None:
            raise self.error
        return self._thread

    def _run_quietly(self) -> None:
        try:
            self.run()
        except zmq.ZMQError as e:
            # quiet only for what start() reports (set-up) and a context terminated
            # under the thread; anything else from the loop is a failure to show
            if e is not self.error and e.errno != zmq.ETERM:
                self.error = e
                log.error("relay thread failed: %s", e, exc_info=True,
                          extra={"event": "relay_failed", "mode": self.mode})
        finally:
            self.close()

    def stop(self) -> None:
        self._stopping = True

    def join(self, timeout: float | None = 10.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        for s in (self.pull, self.push):
            if s is not None:
                s.close()
        if self.curve is not None:
            self.curve.stop()
        if self._own_ctx and self.ctx is not None:
            self.ctx.term()
            self.ctx = None

    def per_sender(self) -> dict:
        return self.core.tracker.per_sender()


# -- the commands ------------------------------------------------------------------

_COMMON = [
    Option("src", type=config.endpoint, metavar="SRC", required=True,
           help="ZeroMQ endpoint to bind (PULL); senders or another relay connect to it"),
    Option("dst", type=config.endpoint, metavar="DST", required=True,
           help="ZeroMQ endpoint to PUSH frames to (a receiver or another relay)"),
    Option("zmq_buffer", ("--zmq-buffer",), type=config.count(1, 1_000_000), default=50,
           metavar="MSGS", help="frames queued on the way in and on the way out "
           "(ZMQ_RCVHWM/ZMQ_SNDHWM); past it outgoing frames are dropped and counted"),
    Option("zmq_linger", ("--zmq-linger",), type=config.seconds(3600.0, zero=True), default=1.0, metavar="S",
           help="at exit, wait this long for queued frames to leave"),
]

COMPRESS_OPTIONS = (_COMMON + ratecontrol.WATERMARK_OPTIONS + ratecontrol.COMPRESS_OPTIONS
                    + security.RELAY_OPTIONS + config.LOG_OPTIONS + config.STATSD_OPTIONS)
DECOMPRESS_OPTIONS = _COMMON + security.RELAY_OPTIONS + config.LOG_OPTIONS + config.STATSD_OPTIONS

_DESCRIPTIONS = {
    COMPRESS: "relay: frames from SRC, compressed above --lwm, the excess dropped above "
              "--hwm, to DST",
    DECOMPRESS: "relay: frames from SRC, compressed ones expanded, to DST",
}


def _main(mode: str, argv: list[str] | None) -> int:
    prog = f"nflog-zmq-{mode}"
    options = COMPRESS_OPTIONS if mode == COMPRESS else DECOMPRESS_OPTIONS
    args = config.parse_args(prog, _DESCRIPTIONS[mode], options, argv)
    runtime.ignore_hangup()
    runtime.setup_logging(mode, args)
    frame.keep_frame_memory(frame.COMMON_FRAME)  # frames stay on the heap (frame.py)
    counters = Counters()
    limits = listen.raise_fd_limit()
    rc = None
    if mode == COMPRESS:
        try:
            rc = ratecontrol.from_options(args, counters)
        except ValueError as e:
            return runtime.fatal("%s", e)
    try:  # a relay is a server on SRC and a client of DST: all three key options, or none
        curve = security.Curve.from_args(args, counters, client=True, server=True)
    except security.SecurityError as e:
        return runtime.fatal("%s", e)
    relay = Relay(mode, rc, counters, args.zmq_buffer, args.zmq_linger)
    relay.curve = curve
    relay.bind_in(args.src)
    relay.connect_out(args.dst)
    try:
        relay.setup()
    except zmq.ZMQError as e:
        relay.close()
        return runtime.fatal("cannot bind %s / connect %s: %s", args.src, args.dst, e)
    rt = runtime.Runtime(mode, args, counters,
                         gauges=lambda: {"pending_bytes": rc.pending_bytes if rc else 0})
    rt.install_signals()
    if curve and curve.allow:
        rt.on_reload("CURVE allow-list", curve.allow.reload)
    settings = ratecontrol.describe(rc) if rc else {}
    log.info("started", extra={"event": "start", "src": args.src, "dst": args.dst,
                               "instance": relay.out.instance, "curve": bool(curve), **limits,
                               **settings})
    try:
        relay.run(rt)
    finally:
        relay.close()
        rt.finish(senders=relay.per_sender(), instance=relay.out.instance)
    return 0


def compress_main(argv: list[str] | None = None) -> int:
    return _main(COMPRESS, argv)


def decompress_main(argv: list[str] | None = None) -> int:
    return _main(DECOMPRESS, argv)

