"""nflog-pcap-recv: ZeroMQ PULL (many senders) -> validated frames -> pcap.

Every frame is validated whole (``frame.decode``) before any of its records
reaches the output; a rejected frame is logged (rate-limited per kind),
counted and skipped, and the daemon goes on.  The loop never waits for the
output: see ``output.PcapOutput``.

With ``--buffer-interface`` every accepted frame is also kept in a ring of
the last ``--buffer-window`` MiB (``ring.Ring``) that ``nflog-pcap-query``
fetches (``query.QueryServer``, ``docs/query-protocol.md``); with ``--tap``
it is also streamed to PCAP-over-IP clients (``tap.Tap``).  Both are served
from this loop in bounded steps and never hold up the live output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import zmq

from . import config, frame, listen, runtime, security, shard
from .config import Option
from .logs import RateLimited
from .metrics import Counters
from .output import PcapOutput, check_path
from .query.protocol import buffer_endpoint
from .query.server import QueryServer
from .ring import Ring, tune_malloc
from .tap import Tap, tap_endpoint
from .tracking import StreamTracker, drain

log = logging.getLogger("nflog_pipe.receiver")
SERVICE = "recv"

OPTIONS = [
    Option("src", type=config.endpoint, metavar="SRC", required=True,
           help="ZeroMQ endpoint to bind (PULL); many senders may connect"),
    Option("dst", type=config.path, metavar="DST", required=True, many=True,
           help="where the pcap stream goes: a FIFO (an IDS reads it with -r; every reader "
           "gets a pipe of its own, so the FIFO's directory must be writable), a regular file "
           "(written over), or - for stdout. Several (up to 16): the traffic is split by flow "
           "between them (--shard-key), one IDS per output, each output with its own reader, "
           "buffer and counters (shard.<i>.*); in the environment variable, separated by spaces"),
    Option("shard_key", ("--shard-key",), choices=tuple(shard.KEYS), default="addr",
           metavar="addr|ports", help="with several outputs: " + shard.SHARD_KEY_HELP),
    Option("fifo_create", ("--fifo-create",), flag=True, default=False,
           help="create DST as a FIFO if it does not exist (a regular file at DST is then "
           "an error, never overwritten)"),
    Option("output_buffer", ("--output-buffer",), type=config.mib(4096.0), default=4.0,
           metavar="MiB", help="records waiting for a slow output reader; past it frames are "
           "dropped whole and counted"),
    Option("fifo_retry", ("--fifo-retry",), type=config.seconds(60.0), default=0.1, metavar="S",
           help="how often to look for a (new) FIFO reader and for one that left"),
    Option("zmq_buffer", ("--zmq-buffer",), type=config.count(1, 100000), default=32,
           metavar="MSGS", help="frames ZeroMQ may queue on the way in, per sender "
           "(ZMQ_RCVHWM); past it TCP pushes back and the sender queues, then drops and "
           "counts. Memory: up to this many frames (each at most the sender's --batch-size "
           "+ 256 KiB) per connected sender"),
    Option("rate_control", ("--rate-control",), flag=True, default=False,
           help="accepted for old command lines; compressed frames are detected on their own"),
    Option("buffer_interface", ("--buffer-interface",), type=buffer_endpoint,
           metavar="ENDPOINT", help="keep the last --buffer-window MiB of traffic and serve it "
           "to nflog-pcap-query on this ZeroMQ endpoint (a bare port means tcp://127.0.0.1:PORT)"
           "; with --curve-secret-key/--curve-allow only allowed clients, without keys "
           "loopback only unless --insecure-bind"),
    Option("buffer_window", ("--buffer-window",), type=config.mib(1048576.0), default=64.0,
           metavar="MiB", help="size of the traffic buffer in pcap bytes (a hard bound); the "
           "oldest packets are evicted (counted as dropped.evicted)"),
    Option("buffer_timeout", ("--buffer-timeout",), type=config.seconds(3600.0), default=1.0,
           metavar="S", help="forget a query whose client takes nothing for S seconds"),
    Option("buffer_clients", ("--buffer-clients",), type=config.count(1, 1024), default=4,
           metavar="N", help="queries served at once; more are refused as busy"),
    Option("buffer_rate", ("--buffer-rate",), type=config.mib(1e6, lo=0.01, zero=True), default=64.0,
           metavar="MiB/s", help="queries together send at most this much (0: no limit), so "
           "that they leave the CPU to the live traffic on a busy host"),
    Option("tap", ("--tap",), type=tap_endpoint, metavar="ENDPOINT",
           help="stream the live traffic to PCAP-over-IP clients (Wireshark TCP@host:port) on "
           "this TCP endpoint: tcp://HOST:PORT, HOST:PORT or PORT (127.0.0.1); no "
           "authentication (PCAP-over-IP has none): loopback only unless --insecure-bind"),
    Option("tap_buffer", ("--tap-buffer",), type=config.mib(4096.0), default=4.0,
           metavar="MiB", help="how far a tap client may fall behind before it is "
           "disconnected (counted as dropped.tap_slow)"),
    Option("tap_clients", ("--tap-clients",), type=config.count(1, 1024), default=16,
           metavar="N", help="tap clients served at once; more are refused"),
    Option("insecure_bind", ("--insecure-bind",), flag=True, default=False,
           help="allow --buffer-interface without CURVE, and --tap (which has no "
           "authentication), on addresses other than loopback"),
] + security.SERVER_OPTIONS + config.LOG_OPTIONS + config.STATSD_OPTIONS


class Receiver:
    """Frame handling, independent of the socket loop (tests drive it)."""

    def __init__(self, output: PcapOutput | list[PcapOutput], counters: Counters,
                 ring: Ring | None = None, tap: Tap | None = None, shard_key: str = "addr"):
        self.outputs = output if isinstance(output, list) else [output]
        self.output = self.outputs[0]
        # several outputs: each frame's records are split by flow, in C
        self.splitter = (shard.Splitter(len(self.outputs), shard_key)
                         if len(self.outputs) > 1 else None)
        self.c = counters
        self.ring = ring
        self.tap = tap
        self._warn = RateLimited(log, 10.0)
        self.tracker = StreamTracker(counters, log, self._warn)
        self.per_sender = self.tracker.per_sender
        for k in ("frames_in", "packets_in", "bytes_in", "dropped.malformed",
                  "frames_dropped.malformed", "dropped.transit"):
            self.c.setdefault(k, 0)

    def handle(self, data: memoryview, peer: str = "") -> frame.Frame | None:
        f = self.tracker.accept(data, peer)
        if f is None:
            return None
        if self.splitter is None:
            self.output.write(f.records, f.count)
        else:
            for out, (records, count) in zip(self.outputs,
                                             self.splitter.split(f.records, f.count), strict=True):
                if count:
                    out.write(records, count)
        if self.ring is not None:
            self.ring.append(f.records, f.count)
        if self.tap is not None and self.tap.clients:
            self.tap.write(f.records, f.count)
        return f



class OutputSet:
    """Several outputs (one per shard) seen by the loop as one: each keeps its
    own readers, queue and accounting (``shard.<i>.*`` counters)."""

    def __init__(self, outputs: list[PcapOutput]):
        self.outputs = outputs
        self.kind = outputs[0].kind

    def poll_items(self) -> list[tuple[int, bool]]:
        return [item for o in self.outputs for item in o.poll_items()]

    def check_reader(self) -> None:
        for o in self.outputs:
            o.check_reader()

    def try_attach(self) -> None:
        for o in self.outputs:
            o.try_attach()

    def flush(self) -> None:
        for o in self.outputs:
            if o.wants_write:
                o.flush()

    @property
    def wants_write(self) -> bool:
        return any(o.wants_write for o in self.outputs)

    @property
    def closed(self) -> bool:
        return any(o.closed for o in self.outputs)

    @property
    def pending_bytes(self) -> int:
        return sum(o.pending_bytes for o in self.outputs)

    def close(self) -> None:
        for o in self.outputs:
            o.close()


def run(args, rt: runtime.Runtime, pull: zmq.Socket, output: PcapOutput | OutputSet,
        ring: Ring | None = None, queries: QueryServer | None = None,
        tap: Tap | None = None, monitors: list[listen.Monitor] = ()) -> Receiver:
    recv = Receiver(output.outputs if isinstance(output, OutputSet) else output, rt.counters,
                    ring, tap, getattr(args, "shard_key", "addr"))
    poller = zmq.Poller()
    registered: dict = {}
    next_check = 0.0
    while not rt.stopping:
        registered = _sync_poller(poller, registered, _poll_set(pull, output, queries, tap))
        interval = args.fifo_retry
        wait = min(rt.timeout(0.5), interval)
        if queries is not None:
            if queries.busy:
                wait = 0.0
            elif (deadline := queries.next_deadline()) is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic() + 0.01))
        events = dict(poller.poll(wait * 1000))
        if any(events.get(fd, 0) & zmq.POLLERR for fd, _ in output.poll_items()):
            output.check_reader()  # a reader left: count what it left, write no more to it
        backlog = False
        if pull in events:
            # True: more frames waiting, the live path is saturated
            backlog = drain(pull, recv.handle, 256)
        if output.wants_write:
            output.flush()
        if queries is not None:
            if queries.sock in events:
                queries.readable()
            queries.work(busy_live=backlog)
        if tap is not None:
            _tap_events(tap, events)
        now = time.monotonic()
        if now >= next_check:
            # readers that left, what readers took; then a (new) reader on
            # the path, who gets a pipe of its own (output.py)
            output.check_reader()
            output.try_attach()
            next_check = now + interval
        if output.closed:
            rt.stop("output closed")
        for m in monitors:
            m.poll()
        rt.tick(now)
    return recv


def _poll_set(pull: zmq.Socket, output: PcapOutput, queries: QueryServer | None,
              tap: Tap | None) -> dict:
    """What the loop waits for, built afresh each turn (file descriptors of
    closed tap clients may come back as the FIFO's)."""
    want: dict = {pull: zmq.POLLIN}
    if queries is not None:
        want[queries.sock] = zmq.POLLIN
    if tap is not None:
        want[tap.fd] = zmq.POLLIN
        for fd, wants_write in tap.poll_items():
            want[fd] = zmq.POLLIN | (zmq.POLLOUT if wants_write else 0)
    for fd, wants_write in output.poll_items():
        want[fd] = want.get(fd, 0) | zmq.POLLERR | (zmq.POLLOUT if wants_write else 0)
    return want


def _sync_poller(poller: zmq.Poller, registered: dict, want: dict) -> dict:
    for item in registered:
        if item not in want:
            poller.unregister(item)
    for item, flags in want.items():
        if registered.get(item) != flags:
            poller.register(item, flags)
    return want


def _tap_events(tap: Tap, events: dict) -> None:
    for item, ev in events.items():
        if item == tap.fd:
            tap.accept()
        elif isinstance(item, int) and item in tap.clients:
            if ev & (zmq.POLLIN | zmq.POLLERR):
                tap.readable(item)
            if ev & zmq.POLLOUT:
                tap.writable(item)


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def _exposed(args, curve) -> int | None:
    """Refuse (the exit code) to expose the buffer or the tap beyond loopback unprotected."""
    if args.insecure_bind:
        return None
    if args.buffer_interface and not curve and not security.is_loopback(args.buffer_interface):
        return runtime.fatal("--buffer-interface %s is not loopback and has no CURVE keys: "
                             "anyone reaching it could read the buffered traffic (give "
                             "--curve-secret-key/--curve-allow, or --insecure-bind)",
                             args.buffer_interface)
    if args.tap and not security.is_loopback(f"tcp://{args.tap[0]}:{args.tap[1]}"):
        return runtime.fatal("--tap %s:%d is not loopback: PCAP-over-IP clients cannot "
                             "authenticate (use an SSH tunnel, or --insecure-bind)", *args.tap)
    return None


def _listen(ctx, stack: contextlib.ExitStack, args, curve, counters, monitors) -> zmq.Socket:
    """The data socket, bound (raises zmq.ZMQError); closed by ``stack``."""
    pull = ctx.socket(zmq.PULL)
    stack.callback(pull.close)
    pull.ipv6 = True  # IPv6 addresses and names too (IPv4 still works)
    if curve:
        curve.server(pull)
    pull.rcvhwm = args.zmq_buffer
    pull.maxmsgsize = frame.MAX_FRAME
    pull.linger = 0
    listen.harden(pull)
    monitors.append(listen.Monitor(pull, counters, f"data socket {args.src}"))
    stack.callback(monitors[-1].close)  # before its socket
    pull.bind(args.src)
    return pull


def _serve_buffer(ctx, stack: contextlib.ExitStack, args, curve, counters,
                  monitors) -> tuple[Ring, QueryServer]:
    """The --buffer-window ring and its query server, bound (raises zmq.ZMQError)."""
    ring = Ring(int(args.buffer_window * 2**20), counters)
    tune_malloc()
    router = ctx.socket(zmq.ROUTER)
    stack.callback(router.close)
    router.ipv6 = True
    if curve:
        curve.server(router)
    QueryServer.configure(router)
    listen.harden(router)
    monitors.append(listen.Monitor(router, counters, f"buffer interface {args.buffer_interface}"))
    stack.callback(monitors[-1].close)  # before its socket
    router.bind(args.buffer_interface)
    queries = QueryServer(router, ring, counters, args.buffer_timeout, args.buffer_clients,
                          args.buffer_rate * 2**20)
    stack.callback(queries.close)
    return ring, queries


def _gauges(output, ring, queries, tap):
    def gauges() -> dict:
        g = {"output_pending_bytes": output.pending_bytes}
        if ring is not None:
            g.update(buffer_bytes=ring.bytes, buffer_packets=ring.records,
                     query_active=len(queries.transfers), query_inflight=queries.owed_total)
        if tap is not None:
            g["tap_clients"] = len(tap.clients)
        return g
    return gauges


def _open_outputs(args, counters) -> PcapOutput | OutputSet | int:
    """Every DST checked before any is opened, then opened: one output, or one per shard
    (split by the flow hash); an int is the exit code of a start-up error."""
    dsts = args.dst
    if len(dsts) > shard.MAX_SHARDS:
        return runtime.fatal("at most %d outputs", shard.MAX_SHARDS)
    if len({os.path.realpath(d) if d != "-" else d for d in dsts}) != len(dsts):
        return runtime.fatal("an output is given twice: %s", " ".join(dsts))
    if "-" in dsts and (sys.stdout is None or _closed(1)):
        return runtime.fatal("DST is - but standard output is closed")
    for dst in dsts if len(dsts) > 1 else ():
        try:
            if dst != "-":
                check_path(os.path.realpath(dst), args.fifo_create)
        except OSError as e:
            return runtime.fatal("cannot use output %s: %s", dst, e.strerror or e)
    outputs: list[PcapOutput] = []
    for i, dst in enumerate(dsts):
        try:
            outputs.append(PcapOutput(dst, counters if len(dsts) == 1
                                      else shard.ShardCounters(counters, i),
                                      int(args.output_buffer * 2**20), args.fifo_create))
        except OSError as e:
            for o in outputs:
                o.close(0)
            return runtime.fatal("cannot use output %s: %s", dst, e.strerror or e)
    return outputs[0] if len(outputs) == 1 else OutputSet(outputs)


def _log_start(args, output, curve, limits: dict, ring, tap) -> None:
    dsts = args.dst
    log.info("started", extra={"event": "start", "src": args.src,
                               "dst": dsts[0] if len(dsts) == 1 else dsts,
                               "shard_key": args.shard_key if len(dsts) > 1 else None,
                               "output": output.kind, "buffer_interface": args.buffer_interface,
                               "curve": bool(curve), **limits,
                               "buffer_window_bytes": ring.window if ring else None,
                               "tap": f"{tap.address[0]}:{tap.address[1]}" if tap else None})


def main(argv: list[str] | None = None) -> int:
    args = config.parse_args("nflog-pcap-recv", __doc__.split("\n\n")[0], OPTIONS, argv)
    runtime.ignore_hangup()
    runtime.setup_logging(SERVICE, args)
    if args.rate_control:
        log.info("--rate-control is no longer needed: compressed frames are detected")
    frame.keep_frame_memory(frame.COMMON_FRAME)  # frames stay on the heap (frame.py)
    counters = Counters()
    limits = listen.raise_fd_limit()  # silent peers must not exhaust 1024 descriptors
    try:
        curve = security.Curve.from_args(args, counters, client=False, server=True)
    except security.SecurityError as e:
        return runtime.fatal("%s", e)
    refused = _exposed(args, curve)
    if refused is not None:
        return refused
    output = _open_outputs(args, counters)
    if isinstance(output, int):
        return output
    rt = recv = None
    # cleanup in reverse order of set-up, on every path (fatal ones too): monitors,
    # tap, queries, sockets, output, the authenticator, the context; then the totals
    with contextlib.ExitStack() as stack:
        ctx = zmq.Context(1)
        stack.callback(ctx.term)
        if curve:  # the authenticator runs before anything is bound
            curve.start(ctx)
            stack.callback(curve.stop)
        stack.callback(output.close)
        monitors: list[listen.Monitor] = []
        try:
            pull = _listen(ctx, stack, args, curve, counters, monitors)
        except zmq.ZMQError as e:
            return runtime.fatal("cannot bind %s: %s", args.src, e)
        ring = queries = tap = None
        if args.buffer_interface:
            try:
                ring, queries = _serve_buffer(ctx, stack, args, curve, counters, monitors)
            except zmq.ZMQError as e:
                return runtime.fatal("cannot bind --buffer-interface %s: %s",
                                     args.buffer_interface, e)
        if args.tap:
            try:
                tap = Tap(args.tap, counters, int(args.tap_buffer * 2**20), args.tap_clients)
            except OSError as e:
                return runtime.fatal("cannot listen on --tap %s:%d: %s", *args.tap, e.strerror or e)
            stack.callback(tap.close)
        rt = runtime.Runtime(SERVICE, args, counters, gauges=_gauges(output, ring, queries, tap))
        rt.install_signals()
        if curve and curve.allow:
            rt.on_reload("CURVE allow-list", curve.allow.reload)
        _log_start(args, output, curve, limits, ring, tap)
        try:
            recv = run(args, rt, pull, output, ring, queries, tap, monitors)
        finally:
            stack.close()
            rt.finish(senders=recv.per_sender() if recv else {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
