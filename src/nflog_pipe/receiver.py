"""nflog-pcap-recv: ZeroMQ PULL (many senders) -> validated frames -> pcap.

Every frame is validated whole (``frame.decode``) before any of its records
reaches the output; a rejected frame is logged (rate-limited per kind),
counted and skipped, and the daemon goes on.  The loop never waits for the
output: see ``output.PcapOutput``.
"""

from __future__ import annotations

import logging
import sys
import time

import zmq

from . import config, frame, runtime
from .config import Option
from .logs import RateLimited
from .metrics import Counters
from .output import PcapOutput

log = logging.getLogger("nflog_pipe.receiver")
SERVICE = "recv"

OPTIONS = [
    Option("src", type=config.endpoint, metavar="SRC", required=True,
           help="ZeroMQ endpoint to bind (PULL); many senders may connect"),
    Option("dst", metavar="DST", required=True,
           help="where the pcap stream goes: a FIFO (an IDS reads it with -r), a file, or - "
           "for stdout"),
    Option("fifo_create", ("--fifo-create",), flag=True, default=False,
           help="create DST as a FIFO if it does not exist"),
    Option("output_buffer", ("--output-buffer",), type=config.positive_float, default=4.0,
           metavar="MiB", help="records waiting for a slow output reader; past it frames are "
           "dropped whole and counted"),
    Option("fifo_retry", ("--fifo-retry",), type=config.positive_float, default=0.1, metavar="S",
           help="how often to look for a FIFO reader while none is attached"),
    Option("zmq_buffer", ("--zmq-buffer",), type=config.positive_int, default=200,
           metavar="MSGS", help="frames ZeroMQ may queue on the way in (ZMQ_RCVHWM)"),
    Option("rate_control", ("--rate-control",), flag=True, default=False,
           help="accepted for old command lines; compressed frames are detected on their own"),
] + config.LOG_OPTIONS + config.STATSD_OPTIONS


class SenderTrack:
    """Sequence tracking of one sender instance: gaps are transit losses."""

    __slots__ = ("next_pkt", "next_seq", "packets", "lost")

    def __init__(self, f: frame.Frame):
        self.next_pkt = f.pkt_seq
        self.next_seq = f.seq
        self.packets = 0
        self.lost = 0


class Receiver:
    """Frame handling, independent of the socket loop (tests drive it)."""

    def __init__(self, output: PcapOutput, counters: Counters):
        self.output = output
        self.c = counters
        self.senders: dict[tuple[str, int], SenderTrack] = {}
        self._warn = RateLimited(log, 10.0)
        for k in ("frames_in", "packets_in", "bytes_in", "dropped.malformed",
                  "dropped.malformed_frames", "dropped.transit"):
            self.c.setdefault(k, 0)

    def handle(self, data: memoryview, peer: str = "") -> frame.Frame | None:
        c = self.c
        c["frames_in"] += 1
        try:
            f = frame.decode(data)
        except frame.FrameError as e:
            c["dropped.malformed_frames"] += 1
            if e.count and e.kind not in ("magic", "short", "oversize", "count", "length"):
                # the header was intact: these packets are known lost
                c["packets_in"] += e.count
                c["dropped.malformed"] += e.count
            self._warn.warning(f"malformed.{e.kind}", "rejected frame (%s): %s", e.kind, e,
                               event="malformed_frame", peer=peer, size=len(data))
            return None
        self._track(f)
        c["packets_in"] += f.count
        c["bytes_in"] += f.size - 16 * f.count
        self.output.write(f.records, f.count)
        return f

    def _track(self, f: frame.Frame) -> None:
        key = (f.sender_id, f.instance)
        t = self.senders.get(key)
        if t is None:
            t = self.senders[key] = SenderTrack(f)
            log.info("new sender %s (instance %08x)", f.sender_id, f.instance,
                     extra={"event": "sender_new", "sender_id": f.sender_id,
                            "instance": f.instance, "seq": f.seq})
        elif f.pkt_seq != t.next_pkt:
            if f.pkt_seq > t.next_pkt:
                gap = f.pkt_seq - t.next_pkt
                t.lost += gap
                self.c["packets_in"] += gap
                self.c["dropped.transit"] += gap
                self._warn.warning(f"transit.{f.sender_id}", "%d packets from %s lost in transit",
                                   gap, f.sender_id, event="transit_loss",
                                   sender_id=f.sender_id, frames=f.seq - t.next_seq)
            else:
                self._warn.warning(f"reorder.{f.sender_id}", "frame from %s out of order",
                                   f.sender_id, event="reorder", sender_id=f.sender_id)
        t.next_pkt = f.pkt_seq + f.count
        t.next_seq = f.seq + 1
        t.packets += f.count

    def per_sender(self) -> dict:
        return {f"{sid}/{inst:08x}": {"packets": t.packets, "transit_lost": t.lost}
                for (sid, inst), t in self.senders.items()}


def run(args, rt: runtime.Runtime, pull: zmq.Socket, output: PcapOutput) -> Receiver:
    recv = Receiver(output, rt.counters)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    out_registered = None
    next_check = 0.0
    while not rt.stopping:
        fd = output.fd if output.wants_write else None
        if fd != out_registered:
            if out_registered is not None:
                poller.unregister(out_registered)
            if fd is not None:
                poller.register(fd, zmq.POLLOUT)
            out_registered = fd
        interval = args.fifo_retry if not output.attached else 0.25
        events = dict(poller.poll(min(rt.timeout(0.5), interval) * 1000))
        if pull in events:
            for _ in range(256):
                try:
                    msg = pull.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                recv.handle(msg.buffer, _peer(msg))
        if output.wants_write:
            output.flush()
        now = time.monotonic()
        if now >= next_check:
            if output.attached:
                output.check_reader()
            else:
                output.try_attach()
            next_check = now + interval
        if output.closed:
            rt.stop("output closed")
        rt.tick(now)
    return recv


def _peer(msg: zmq.Frame) -> str:
    try:
        return msg.get("Peer-Address") or ""
    except zmq.ZMQError:
        return ""


def main(argv: list[str] | None = None) -> int:
    args = config.parse_args("nflog-pcap-recv", __doc__.split("\n\n")[0], OPTIONS, argv)
    runtime.setup_logging(SERVICE, args)
    if args.rate_control:
        log.info("--rate-control is no longer needed: compressed frames are detected")
    counters = Counters()
    try:
        output = PcapOutput(args.dst, counters, int(args.output_buffer * 2**20), args.fifo_create)
    except OSError as e:
        return runtime.fatal("cannot use output %s: %s", args.dst, e.strerror or e)
    ctx = zmq.Context(1)
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = args.zmq_buffer
    pull.maxmsgsize = frame.MAX_FRAME
    pull.linger = 0
    try:
        pull.bind(args.src)
    except zmq.ZMQError as e:
        return runtime.fatal("cannot bind %s: %s", args.src, e)
    rt = runtime.Runtime(SERVICE, args, counters,
                         gauges=lambda: {"output_pending_bytes": output.pending_bytes})
    rt.install_signals()
    log.info("started", extra={"event": "start", "src": args.src, "dst": args.dst,
                               "output": output.kind})
    recv = None
    try:
        recv = run(args, rt, pull, output)
    finally:
        output.close()
        pull.close()
        ctx.term()
        rt.finish(senders=recv.per_sender() if recv else {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
