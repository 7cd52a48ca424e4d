"""nflog-zmq-send: NFLOG groups -> batched frames -> ZeroMQ PUSH.

The loop: poll the netlink socket; on data, the C reader drains it into a
record area per destination, placed right after the room for a frame
header; the header is packed in place and the frame is queued with one
non-blocking send.  When an area goes out is ``batching``'s decision; past
``--zmq-buffer-frames`` queued frames, ``outgoing``'s rule holds a frame
that can still grow and drops (and counts, ``dropped.queue_full``) one that
cannot: the sender never blocks on the network.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from typing import TYPE_CHECKING

import zmq

from . import batching, config, frame, outgoing, privs, ratecontrol, runtime, security, shard
from .config import Option
from .counters import init as init_counters
from .metrics import Counters

if TYPE_CHECKING:  # the binding links libnetfilter_log: loaded by main() only (_load_nflog)
    from .nflog import NflogReader, QthreshPolicy

log = logging.getLogger("nflog_pipe.sender")
SERVICE = "send"

OPTIONS = [
    Option("groups", type=config.group_list, metavar="GROUPS", required=True,
           help="NFLOG groups to read, a comma list (e.g. 0,1)"),
    Option("dst", type=config.endpoint, metavar="DST", required=True, many=True,
           help="ZeroMQ endpoint to PUSH frames to (e.g. tcp://ids.example:1234); several "
           "(up to 16) split the traffic by flow: each packet goes to exactly one of them, "
           "chosen by a symmetric flow hash (--shard-key), each with a queue of its own; in "
           "the environment variable, separated by spaces"),
    Option("shard_key", ("--shard-key",), choices=tuple(shard.KEYS), default="addr",
           metavar="addr|ports", help="with several destinations: " + shard.SHARD_KEY_HELP),
    Option("user", ("-u", "--user"), type=config.user_spec, metavar="USER[:GROUP]",
           help="after binding the groups, switch to this user (and its group, or GROUP), "
           "clearing supplementary groups and every capability"),
    Option("libnflog_nlbufsiz", ("--libnflog-nlbufsiz",), type=config.mib(1024.0),
           default=10.0, metavar="MiB",
           help="netlink socket receive buffer: how much the kernel may queue for this "
           "process before it drops packets (set with SO_RCVBUFFORCE and verified)"),
    Option("libnflog_nlbufsiz_max", ("--libnflog-nlbufsiz-max",), type=config.mib(1024.0),
           default=64.0, metavar="MiB",
           help="on a kernel overrun (ENOBUFS) the receive buffer doubles up to this size "
           "(applied by the separate process that keeps only CAP_NET_ADMIN)"),
    Option("libnflog_kbufsiz", ("--libnflog-kbufsiz",), type=config.count(1, 16384), default=128,
           metavar="KiB", help="the kernel's per-group batch buffer (nflog_set_nlbufsiz), "
           "4 to 128 KiB: bigger batches cost the gateway less per packet"),
    Option("libnflog_qthresh", ("--libnflog-qthresh",), type=config.auto_or(config.count(1, 65536)),
           default="auto", metavar="PACKETS|auto",
           help="the kernel sends a batch once it holds this many packets (nflog_set_qthresh; an "
           "iptables --nflog-threshold overrides it per rule). auto: follow the packet rate, "
           "1 when traffic is light (low latency) up to 1024 under load (low cost per packet); "
           "a separate process that keeps only CAP_NET_ADMIN applies the changes"),
    Option("libnflog_timeout", ("--libnflog-timeout",), type=config.seconds(600.0, lo=0.01, zero=True),
           default=0.01,
           metavar="S", help="the kernel sends a batch at the latest this long after its first "
           "packet (nflog_set_timeout, in steps of 0.01 s)"),
    Option("zmq_buffer_frames", ("--zmq-buffer-frames",), type=config.count(1, 1_000_000),
           default=50, metavar="FRAMES", help="frames (each about --batch-size KiB of packets) "
           "queued for the network (ZMQ_SNDHWM); past it frames are dropped and counted, never "
           "waited for"),
    Option("zmq_buffer", ("--zmq-buffer",), metavar="PACKETS", refused=(
        "the original counted packets here (one ZeroMQ message per packet); messages are now "
        "frames of many packets: use --zmq-buffer-frames FRAMES (default 50; "
        "NFLOG_PIPE_ZMQ_BUFFER_FRAMES)")),
    Option("batch_size", ("--batch-size",), type=config.count(1, 16384), default=256,
           metavar="KiB", help="record bytes of one frame: a frame closes once its records "
           "exceed this (at most this + 256 KiB); with several destinations each shard's "
           "area fills up to that maximum, or goes out after 10 ms"),
    Option("sender_id", ("--sender-id",), type=config.text(frame.MAX_SENDER_ID, "sender id"),
           default=None, metavar="NAME",
           help="identity carried in every frame (default: the host name)"),
    Option("zmq_linger", ("--zmq-linger",), type=config.seconds(3600.0, zero=True), default=1.0, metavar="S",
           help="at exit, wait this long for queued frames to leave"),
    Option("rate_control", ("--rate-control",), flag=True, default=False,
           help="rate control in this process: compress above --lwm, drop the excess above "
           "--hwm (docs/rate-control.md); the receiver detects compressed frames on its own"),
] + ratecontrol.WATERMARK_OPTIONS + ratecontrol.COMPRESS_OPTIONS + security.CLIENT_OPTIONS \
    + config.LOG_OPTIONS + config.STATSD_OPTIONS


class Sender:
    """The loop: NFLOG areas -> frames -> ZeroMQ, one socket per destination.

    What to send and when is ``batching.SenderCore``'s decision, what becomes
    of a refused frame is ``outgoing``'s; this class does the reading, the
    sending and the kernel's counters.  With ``--rate-control`` (one
    destination) an area goes through the controller, which may pass it on,
    compress it, squash it with later ones or cut it (docs/rate-control.md)."""

    def __init__(self, reader: NflogReader, socks: list[zmq.Socket], sender_id: bytes,
                 rt: runtime.Runtime, qpolicy: QthreshPolicy | None = None,
                 rc: ratecontrol.RateController | None = None):
        self.reader = reader
        self.socks = socks
        self.sid = sender_id
        self.rt = rt
        self.c = c = rt.counters
        self.qpolicy = qpolicy
        self.rc = rc
        n = len(socks)
        # each destination its own stream (two may reach one receiver) and, with
        # several, its own counters (shard.<i>.*, added to the totals)
        self.core = batching.SenderCore([outgoing.Stream(c if n == 1 else shard.ShardCounters(c, i))
                                         for i in range(n)])
        self.streams = self.core.streams
        # a full frame: a batch closes once it holds more than --batch-size,
        # somewhere below this capacity (--batch-size + 256 KiB)
        self.pacer = batching.DrainPacer(reader.batch.cap)
        for i in range(n):  # the sender id never changes: written once after the header's place
            reader.area_frame(i)[frame.HEADER_SIZE : reader.header_room] = sender_id
        # cumulative C counters already accounted
        self._seen = {"packets": 0, "bytes": 0, "seq_lost": 0, "enobufs": 0, "malformed": 0,
                      "nl_errors": 0, "recvs": 0}
        self._warned_overrun = False
        init_counters(c, "packets_in", "bytes_in", "netlink_buffers", "dropped.kernel_overrun")
        b = reader.batch  # records in each area, read after every netlink read
        self._counts = (lambda: (b.count,)) if n == 1 else (lambda: b.shard_count[0:n])

    @property
    def instance(self) -> int:
        return self.streams[0].instance

    # -- reading -----------------------------------------------------------------
    def pump(self) -> None:
        """Drain the netlink socket.  An area that fills up goes out at once;
        the others when the socket is drained and their time has come
        (``SenderCore.due``).  Not after each bounded read (status 2): a
        sudden flood read one packet per netlink message (before the kernel
        batch size has caught up) would otherwise fill ZeroMQ's queue, which
        counts messages, with small frames within milliseconds."""
        r, core = self.reader, self.core
        while True:
            status = r.read()
            self._account_kernel()
            now = time.monotonic()
            core.filled(now, self._counts())
            if status == 2:  # more is waiting: keep filling
                if self.qpolicy:
                    self._adapt(now)
                continue
            if status == 1:  # an area cannot take another buffer
                self._out(core.full([r.area_room(i) for i in range(core.n)]))
                continue
            break
        now = time.monotonic()
        self._out(core.due(now, self._counts()))
        if self.qpolicy:
            self._adapt(now)

    def _adapt(self, now: float) -> None:
        q = self.qpolicy.update(self.c["packets_in"], now)
        if q is not None and self.reader.set_qthresh(q):
            log.debug("kernel batch size now %d packets", q, extra={"event": "qthresh", "qthresh": q})

    def _account_kernel(self) -> None:
        b = self.reader.batch
        seen = self._seen
        c = self.c
        if b.packets != seen["packets"]:
            c["packets_in"] += b.packets - seen["packets"]
            c["bytes_in"] += b.bytes - seen["bytes"]
            c["netlink_buffers"] += b.recvs - seen["recvs"]
            seen["packets"], seen["bytes"], seen["recvs"] = b.packets, b.bytes, b.recvs
        if b.seq_lost != seen["seq_lost"]:
            lost = b.seq_lost - seen["seq_lost"]
            c["packets_in"] += lost
            c["dropped.kernel_overrun"] += lost
            seen["seq_lost"] = b.seq_lost
        if b.enobufs != seen["enobufs"]:
            c.add("kernel_enobufs", b.enobufs - seen["enobufs"])
            seen["enobufs"] = b.enobufs
            grew = self.reader.grow_rcvbuf()
            if not self._warned_overrun or grew:
                log.warning("kernel overrun (ENOBUFS): packets were lost before this process "
                            "could read them; receive buffer now %d bytes",
                            self.reader.rcvbuf, extra={"event": "kernel_overrun",
                                                       "rcvbuf": self.reader.rcvbuf})
                self._warned_overrun = True
        if b.malformed != seen["malformed"] or b.nl_errors != seen["nl_errors"]:
            c.add("netlink_malformed", b.malformed - seen["malformed"])
            c.add("netlink_errors", b.nl_errors - seen["nl_errors"])
            seen["malformed"], seen["nl_errors"] = b.malformed, b.nl_errors

    # -- sending -----------------------------------------------------------------
    def _out(self, areas: list[tuple[int, bool]]) -> None:
        for i, can_grow in areas:
            if self.rc is not None:
                self._out_controlled(i, can_grow)
            else:
                self._out_area(i, can_grow)

    def _out_area(self, i: int, can_grow: bool) -> None:
        """Area i as one frame: its header packed in place, the buffer sent."""
        r = self.reader
        count, raw_len = r.area_count(i), r.area_len(i)
        buf = r.area_frame(i)
        st = self.streams[i]
        st.pack_header(buf, self.sid, count, raw_len)
        accepted = outgoing.try_send(self.socks[i], buf)
        if self.core.outcome(i, st.result(accepted, count, raw_len, can_grow)):
            r.reset_area(i)  # else held: more records join it, POLLOUT retries

    def _out_controlled(self, i: int, can_grow: bool) -> None:
        """With --rate-control: the area goes through the controller.  While
        the queue is full, an area that can grow is held, as without it."""
        r, core = self.reader, self.core
        count = r.area_count(i)
        if can_grow and not self.socks[i].get(zmq.EVENTS) & zmq.POLLOUT:
            core.outcome(i, self.streams[i].result(False, count, r.area_len(i), True))
            return
        buf = r.area_frame(i)
        for out in self.rc.offer(self.sid, buf[r.header_room :], count):
            self._emit(out, buf)
        core.outcome(i, outgoing.SENT)  # what the controller did with it is counted
        r.reset_area(i)

    def _emit(self, out: ratecontrol.Output, area: memoryview | None = None) -> None:
        """A frame the controller composed (it cannot grow)."""
        st = self.streams[0]
        if out.codec == frame.CODEC_NONE:
            # the area itself, passed on (all of it, or its leading records when --hwm cut
            # it): its header packed in place
            st.pack_header(area, self.sid, out.count, out.raw_len)
            data = area[: self.reader.header_room + out.raw_len]
        else:
            data = bytearray(frame.HEADER_SIZE) + self.sid + out.payload
            st.pack_header(data, self.sid, out.count, out.raw_len, len(out.payload),
                           frame.FLAG_COMPRESSED, out.codec)
        st.result(outgoing.try_send(self.socks[0], data), out.count, out.raw_len, False)

    # -- the loop ----------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.reader.fd, zmq.POLLIN)
        core, rc, socks = self.core, self.rc, self.socks
        polling = [False] * core.n
        while not self.rt.stopping:
            for i, w in enumerate(core.waiting):
                if w != polling[i]:
                    poller.register(socks[i], zmq.POLLOUT) if w else poller.unregister(socks[i])
                    polling[i] = w
            timeout = self.rt.timeout(0.5 if not self.qpolicy else 0.1)
            if (due := core.next_due()) is not None:
                # whole milliseconds, rounded up: zmq_poll truncates, and a
                # timeout of 0 until the area is due would spin
                timeout = min(timeout, math.ceil(max(0.0, due - time.monotonic()) * 1000) / 1000)
            if rc is not None and (rc_due := rc.timeout()) is not None:
                timeout = min(timeout, rc_due)
            events = dict(poller.poll(timeout * 1000))
            for i in range(core.n):
                if polling[i] and socks[i] in events:
                    self._out(core.writable(i))
            if self.reader.fd in events:
                started = time.monotonic()
                self.pump()
                wait = self.pacer.update(self.c["bytes_in"], started, time.monotonic())
                if wait:
                    time.sleep(wait)  # more kernel batches join the next frame
            else:
                now = time.monotonic()
                self._out(core.due(now, self._counts()))
                if self.qpolicy:
                    self._adapt(now)
            if rc is not None:
                for out in rc.poll():
                    self._emit(out)
            self.rt.tick()
        self.pump()  # whatever the kernel already handed over
        self._out(core.final(self._counts()))
        if rc is not None:
            for out in rc.flush():
                self._emit(out)


def _load_nflog():
    """The NFLOG binding, loaded only by the command that reads NFLOG: the receiver,
    the relays and the query tool run on hosts without libnetfilter_log."""
    try:
        from . import nflog
    except ImportError as e:
        if "libnetfilter_log" in str(e):
            raise ImportError(f"cannot load libnetfilter_log ({e}): install the Debian package "
                              "libnetfilter-log1") from None
        raise ImportError(f"the NFLOG binding nflog_pipe._nflog is missing ({e}): reinstall the "
                          "package on a host with libnetfilter-log-dev") from None
    return nflog


def main(argv: list[str] | None = None) -> int:
    args = config.parse_args("nflog-zmq-send", __doc__.split("\n\n")[0], OPTIONS, argv)
    runtime.ignore_hangup()
    runtime.setup_logging(SERVICE, args)
    try:
        nflog = _load_nflog()
    except ImportError as e:
        return runtime.fatal("%s", e)
    sender_id = (args.sender_id or config.short_hostname()).encode()
    if len(sender_id) > frame.MAX_SENDER_ID:
        return runtime.fatal("--sender-id is longer than %d bytes", frame.MAX_SENDER_ID)
    if args.user:
        if os.geteuid() != 0:
            return runtime.fatal("--user needs the sender to start as root")
        try:
            privs.resolve_user(args.user)
        except privs.PrivilegeError as e:
            return runtime.fatal("--user: %s", e)
    if args.libnflog_nlbufsiz_max < args.libnflog_nlbufsiz:
        return runtime.fatal("--libnflog-nlbufsiz-max is below --libnflog-nlbufsiz")
    dsts = args.dst
    if len(dsts) > shard.MAX_SHARDS:
        return runtime.fatal("at most %d destinations", shard.MAX_SHARDS)
    if len(set(dsts)) != len(dsts):
        return runtime.fatal("a destination is given twice: %s", " ".join(dsts))
    if len(dsts) > 1 and args.rate_control:
        return runtime.fatal("--rate-control works with one destination only (use the "
                             "nflog-zmq-compress relay behind each shard)")
    counters = Counters()
    rc = None
    if args.rate_control:
        try:
            rc = ratecontrol.from_options(args, counters)
        except ValueError as e:
            return runtime.fatal("%s", e)
    try:  # keys are read now, while the files are still readable
        curve = security.Curve.from_args(args, counters, client=True, server=False)
    except security.SecurityError as e:
        return runtime.fatal("%s", e)
    timeout_cs = round(args.libnflog_timeout * 100)
    adaptive = args.libnflog_qthresh == "auto"
    try:
        reader = nflog.NflogReader(
            args.groups, rcvbuf=int(args.libnflog_nlbufsiz * 2**20),
            rcvbuf_max=int(args.libnflog_nlbufsiz_max * 2**20),
            kbufsiz=args.libnflog_kbufsiz * 1024, qthresh=1 if adaptive else args.libnflog_qthresh,
            timeout_cs=timeout_cs, batch_bytes=args.batch_size * 1024,
            header_room=frame.HEADER_SIZE + len(sender_id), shards=len(dsts),
            shard_key=shard.KEYS[args.shard_key])
    except nflog.NflogError as e:
        return runtime.fatal("cannot set up NFLOG: %s", e)
    if not frame.keep_frame_memory(reader.frame_bytes):
        log.warning("could not tune malloc for frames of %d bytes: each frame costs an mmap",
                    reader.frame_bytes, extra={"event": "malloc_tuning_refused"})
    # cleanup on every path, fatal ones too: the NFLOG reader (and its controller),
    # the socket, the context; then the totals
    with contextlib.ExitStack() as stack:
        stack.callback(reader.close)
        return _run(args, nflog, reader, sender_id, counters, curve, rc, adaptive, stack)


def _run(args, nflog, reader, sender_id: bytes, counters: Counters, curve, rc, adaptive: bool,
         stack: contextlib.ExitStack) -> int:
    # Privileges go before any thread exists: capabilities are per thread and
    # ZeroMQ starts I/O threads with its context.  The controller (queue
    # thresholds with --libnflog-qthresh auto, receive buffer growth up to
    # --libnflog-nlbufsiz-max) is forked first, so that it can keep
    # CAP_NET_ADMIN and nothing else; this process keeps no capability.
    qpolicy = None
    try:
        if adaptive or reader.rcvbuf_max > reader.rcvbuf:
            uid, gid = privs.resolve_user(args.user)[:2] if args.user else (os.getuid(), os.getgid())
            reader.start_controller(uid, gid)
        if adaptive:
            qpolicy = nflog.QthreshPolicy(start=1)
        who = privs.drop(args.user)
    except (OSError, privs.PrivilegeError) as e:
        return runtime.fatal("dropping privileges: %s", e)
    ctx = zmq.Context(1)
    stack.callback(ctx.term)
    dsts = args.dst
    socks = []
    for dst in dsts:
        sock = ctx.socket(zmq.PUSH)
        stack.callback(sock.close)
        socks.append(sock)
        sock.ipv6 = True  # IPv6 addresses and names too (IPv4 still works)
        sock.sndhwm = args.zmq_buffer_frames
        sock.linger = int(args.zmq_linger * 1000)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
        if curve:
            curve.client(sock)
        try:
            sock.connect(dst)
        except zmq.ZMQError as e:
            return runtime.fatal("cannot connect to %s: %s", dst, e)
    rt = runtime.Runtime(SERVICE, args, counters, gauges=lambda: {
        "netlink_queue_bytes": reader.queued_bytes(), "netlink_rcvbuf": reader.kernel_rcvbuf()})
    rt.install_signals()
    sender = Sender(reader, socks, sender_id, rt, qpolicy, rc)
    log.info("started", extra={"event": "start", "groups": args.groups,
                               "dst": dsts[0] if len(dsts) == 1 else dsts,
                               "shard_key": args.shard_key if len(dsts) > 1 else None,
                               "sender_id": sender_id.decode(), "instance": sender.instance,
                               "rcvbuf": reader.rcvbuf, "qthresh": args.libnflog_qthresh,
                               "controller_pid": reader._ctl_pid or None,
                               "curve": bool(curve), **who,
                               "rate_control": ratecontrol.describe(rc) if rc else False})
    try:
        sender.run()
    finally:
        reader.close()  # first, as before: nothing more is read while ZeroMQ flushes
        stack.close()  # the sockets, the context (the --zmq-linger flush)
        rt.finish(sender_id=sender_id.decode(), instance=sender.instance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
