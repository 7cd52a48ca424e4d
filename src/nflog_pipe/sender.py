"""nflog-zmq-send: NFLOG groups -> batched frames -> ZeroMQ PUSH.

The loop: poll the netlink socket; on data, the C reader drains it into a
record area placed right after the room for a frame header; the header is
packed in place and the frame is queued with one non-blocking send.  Past
``--zmq-buffer`` queued messages a frame is dropped and its packets counted
(``dropped.queue_full``): the sender never blocks on the network.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import random
import sys
import time
from typing import TYPE_CHECKING

import zmq

from . import config, frame, pcap, privs, ratecontrol, runtime, security, shard
from .config import Option
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
           default=50, metavar="FRAMES", help="frames (each up to --batch-size KiB of packets) "
           "queued for the network (ZMQ_SNDHWM); past it frames are dropped and counted, never "
           "waited for"),
    Option("zmq_buffer", ("--zmq-buffer",), metavar="PACKETS", refused=(
        "the original counted packets here (one ZeroMQ message per packet); messages are now "
        "frames of many packets: use --zmq-buffer-frames FRAMES (default 50; "
        "NFLOG_PIPE_ZMQ_BUFFER_FRAMES)")),
    Option("batch_size", ("--batch-size",), type=config.count(1, 16384), default=256,
           metavar="KiB", help="largest record area of one frame"),
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


#: frames from this size on are handed to ZeroMQ without a copy (BufferPool);
#: below it the copy is cheaper than the tracking (bench/RESULTS.md: zero-copy
#: made 64 B frames of ~110 KiB cost 20 % more, 1400 B frames of ~400 KiB 9 % less)
ZERO_COPY_MIN = 192 * 1024


class BufferPool:
    """Frame buffers handed to ZeroMQ without a copy (``send(copy=False)``).

    pyzmq's default copies every frame into a ZeroMQ message; a frame is tens
    to hundreds of KiB here, where that copy is a visible part of the cost
    per packet.  Without the copy, libzmq reads the buffer itself, later, from
    its I/O thread: the buffer must not be written again until libzmq has
    released it (``MessageTracker.done``).  So after each frame the reader
    goes on in another buffer, and sent buffers come back here once released
    (in order: one socket sends its frames in order).  At most
    ``--zmq-buffer-frames`` + a few buffers exist."""

    def __init__(self, reader: NflogReader, sender_id: bytes):
        self.reader = reader
        self.sid = sender_id
        self.free: list = []
        self.inflight: collections.deque = collections.deque()

    def take(self):
        inflight = self.inflight
        while inflight and inflight[0][0].done:
            self.free.append(inflight.popleft()[1])
        if self.free:
            return self.free.pop()
        return self.reader.new_buffer(frame.HEADER_SIZE, self.sid)

    def sent(self, tracker, buf) -> None:
        self.inflight.append((tracker, buf))


def push_frame(st, sid: bytes, buf, count: int, raw_len: int, must: bool):
    """The one send path of a stream (``Sender`` or a ``Shard``: ``sock``, ``instance``,
    ``seq``, ``pkt_seq``, ``waiting``, ``c``): pack its header into ``buf`` and hand the
    frame to ZeroMQ without waiting. Returns ``(done, tracker)``: ``done`` False when the
    queue is full and ``must`` is False (the caller keeps the batch); when it is full and
    ``must`` is True the frame is dropped and counted; ``tracker`` is set when the
    buffer went zero-copy and stays ZeroMQ's until it is sent."""
    frame.HEADER.pack_into(buf, 0, frame.MAGIC, frame.VERSION, 0, frame.CODEC_NONE, len(sid),
                           st.instance, count, st.seq, st.pkt_seq, raw_len, raw_len)
    zero_copy = len(buf) >= ZERO_COPY_MIN
    try:
        tracker = st.sock.send(buf, zmq.NOBLOCK, copy=not zero_copy, track=zero_copy)
    except zmq.Again:
        if not must:
            st.waiting = True
            return False, None
        st.c["dropped.queue_full"] += count
        st.c.add("frames_dropped.queue_full")
        tracker = None
    else:
        st.seq += 1
        st.pkt_seq += count
        st.c["packets_out"] += count
        st.c["bytes_out"] += raw_len - count * pcap.RECORD_HEADER_SIZE
        st.c["frames_out"] += 1
        if not zero_copy:
            tracker = None
    st.waiting = False
    return True, tracker


class Sender:
    """Moves batches from an NflogReader to a ZeroMQ socket."""

    def __init__(self, reader: NflogReader, sock: zmq.Socket, sender_id: bytes,
                 rt: runtime.Runtime, qpolicy: QthreshPolicy | None = None,
                 rc: ratecontrol.RateController | None = None):
        self.reader = reader
        # a full frame: a batch closes once it holds more than --batch-size,
        # somewhere below this capacity (--batch-size + 256 KiB)
        self.pacer = DrainPacer(reader.batch.cap)
        self.qpolicy = qpolicy
        self.sock = sock
        self.sid = sender_id
        self.rt = rt
        self.c = rt.counters
        self.instance = random.getrandbits(32)
        self.seq = 0
        self.pkt_seq = 0
        # cumulative C counters already accounted
        self._seen = {"packets": 0, "bytes": 0, "seq_lost": 0, "enobufs": 0, "malformed": 0,
                      "nl_errors": 0, "recvs": 0}
        self._warned_overrun = False
        # the sender id never changes: write it once after the header's place
        reader.frame()[frame.HEADER_SIZE : reader.header_room] = sender_id
        for k in ("packets_in", "bytes_in", "packets_out", "bytes_out", "frames_out", "netlink_buffers",
                  "dropped.queue_full", "dropped.kernel_overrun"):
            self.c.setdefault(k, 0)
        # rate control swaps the send path; without it the batch path is untouched
        self.rc = rc
        if rc is not None:
            self._send = self._send_controlled
        self.waiting = False  # a batch ZeroMQ could not take yet
        self.pool = BufferPool(reader, sender_id)

    def pump(self) -> None:
        """Drain the netlink socket, one frame per batch.  While ZeroMQ's
        queue is full, the batch keeps growing (up to --batch-size) and goes
        out when the socket can take it: small frames coalesce instead of
        being dropped; a full batch that still finds the queue full is
        dropped and counted.  A batch goes out when the socket is drained or
        the batch is full, not after each bounded read (status 2): a sudden
        flood read one packet per netlink message (before the kernel batch
        size has caught up) would otherwise fill ZeroMQ's queue, which
        counts messages, with small frames within milliseconds."""
        while True:
            status = self.reader.read()
            self._account_kernel()
            if status == 2:  # more is waiting: keep filling this batch
                if self.qpolicy:
                    self._adapt(time.monotonic())
                continue
            if self.reader.count:
                self._send(status == 1)
            if status == 0:
                break
        if self.qpolicy:
            self._adapt(time.monotonic())

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

    def _send(self, must: bool = True) -> None:
        r = self.reader
        count, raw_len = r.count, r.batch.len
        done, tracker = push_frame(self, self.sid, r.frame(), count, raw_len, must)
        if not done:  # keep the batch; more records join it, POLLOUT retries
            return
        if tracker is not None:  # the buffer is ZeroMQ's until sent: the next batch goes elsewhere
            self.pool.sent(tracker, r.current_buffer())
            r.reset()
            r.use_buffer(self.pool.take())
        r.reset()

    # -- with --rate-control: the batch goes through the controller ----------------
    def _send_controlled(self, must: bool = True) -> None:
        r = self.reader
        buf = r.frame()
        for out in self.rc.offer(self.sid, buf[r.header_room :], r.count):
            self._emit(out, buf)
        r.reset()

    def _emit(self, out: ratecontrol.Output, batch: memoryview | None = None) -> None:
        if out.codec == frame.CODEC_NONE:
            # the batch itself, passed on: its header is packed in place
            # (all of it, or its leading records when --hwm cut it)
            frame.HEADER.pack_into(batch, 0, frame.MAGIC, frame.VERSION, 0, frame.CODEC_NONE,
                                   len(self.sid), self.instance, out.count, self.seq,
                                   self.pkt_seq, out.raw_len, out.raw_len)
            data = batch[: self.reader.header_room + out.raw_len]
        else:
            data = frame.pack_header(self.sid, self.instance, self.seq, self.pkt_seq, out.count,
                                     out.raw_len, len(out.payload), frame.FLAG_COMPRESSED,
                                     out.codec) + out.payload
        try:
            self.sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self.c["dropped.queue_full"] += out.count
            self.c.add("frames_dropped.queue_full")
        else:
            self.seq += 1
            self.pkt_seq += out.count
            self.c["packets_out"] += out.count
            self.c["bytes_out"] += out.raw_len - out.count * 16
            self.c["frames_out"] += 1

    def _rc_timeout(self, timeout: float) -> float:
        due = self.rc.timeout()
        return timeout if due is None else min(timeout, due)

    def _rc_due(self) -> None:
        for out in self.rc.poll():
            self._emit(out)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.reader.fd, zmq.POLLIN)
        rc = self.rc
        polling_out = False
        while not self.rt.stopping:
            if self.waiting != polling_out:
                poller.modify(self.sock, zmq.POLLOUT) if self.waiting else poller.unregister(self.sock)
                polling_out = self.waiting
            timeout = self.rt.timeout(0.5 if not self.qpolicy else 0.1)
            if rc is not None:
                timeout = self._rc_timeout(timeout)
            events = dict(poller.poll(timeout * 1000))
            if self.sock in events and self.waiting:
                self._send(False)
            if self.reader.fd in events:
                started = time.monotonic()
                self.pump()
                wait = self.pacer.update(self.c["bytes_in"], started, time.monotonic())
                if wait:
                    time.sleep(wait)  # more kernel batches join the next frame
            elif self.qpolicy:
                self._adapt(time.monotonic())
            if rc is not None:
                self._rc_due()
            self.rt.tick()
        self.pump()  # whatever the kernel already handed over
        if self.waiting:
            self._send(True)
        if rc is not None:
            for out in rc.flush():
                self._emit(out)


class Shard:
    """One destination of a sharded sender: its socket, its own stream
    (instance and sequence numbers: two shards may reach one receiver) and
    its counters (``shard.<i>.*``, added to the totals)."""

    __slots__ = ("index", "dst", "sock", "instance", "seq", "pkt_seq", "waiting", "c", "since",
                 "pool")

    def __init__(self, index: int, dst: str, sock: zmq.Socket, counters: Counters):
        self.index = index
        self.dst = dst
        self.sock = sock
        self.instance = random.getrandbits(32)
        self.seq = 0
        self.pkt_seq = 0
        self.waiting = False
        self.since: float | None = None  # when its oldest unsent record was read
        self.c = shard.ShardCounters(counters, index)
        for k in ("packets_out", "bytes_out", "frames_out", "dropped.queue_full"):
            self.c.setdefault(k, 0)


class ShardedSender(Sender):
    """Several destinations: the C walker has already put each record in the
    area of its flow's shard; each shard's area becomes a frame to its own
    socket.  A shard whose queue is full keeps filling its area while the
    others go on; when its area is full it is dropped and counted for that
    shard only (``shard.<i>.dropped.queue_full``).

    Frames: each shard gets 1/N of every kernel batch.  Sent at once, that
    would be N times the frames of one destination, and every frame costs a
    send and a wake-up of ZeroMQ's I/O thread (about 25 % more CPU per packet
    with 2 shards, bench/RESULTS.md).  So a shard's frame goes out when its
    area is full, or once its oldest record has waited ``HOLD`` (10 ms, the
    kernel's own flush period): frames as large as one destination's, for
    at most 10 ms more latency."""

    HOLD = 0.01

    def __init__(self, reader: NflogReader, shards: list[Shard], sender_id: bytes,
                 rt: runtime.Runtime, qpolicy: QthreshPolicy | None = None):
        super().__init__(reader, shards[0].sock, sender_id, rt, qpolicy, None)
        self.shards = shards
        for i, s in enumerate(shards):
            reader.shard_frame(i)[frame.HEADER_SIZE : reader.header_room] = sender_id
            s.pool = BufferPool(reader, sender_id)
        self._final = False

    @property
    def waiting(self) -> bool:
        return any(s.waiting for s in getattr(self, "shards", ()))

    @waiting.setter
    def waiting(self, value: bool) -> None:
        pass  # per shard (Shard.waiting)

    def pump(self) -> None:
        """Drain the netlink socket; a shard whose area is full goes out at
        once, the others when their records have waited ``HOLD`` (``due``)."""
        r = self.reader
        b = r.batch
        while True:
            status = r.read()
            self._account_kernel()
            now = time.monotonic()
            for s in self.shards:
                if s.since is None and b.shard_count[s.index]:
                    s.since = now
            if status == 2:
                if self.qpolicy:
                    self._adapt(now)
                continue
            if status == 1:  # a shard cannot take another buffer
                for s in self.shards:
                    if not r.shard_room(s.index):
                        self._send_shard(s, b.shard_count[s.index], True)
                continue
            break
        self.due(time.monotonic())
        if self.qpolicy:
            self._adapt(time.monotonic())

    def due(self, now: float) -> None:
        """Send the shards whose oldest record has waited ``HOLD``."""
        b = self.reader.batch
        for s in self.shards:
            if s.since is not None and not s.waiting and now - s.since >= self.HOLD:
                self._send_shard(s, b.shard_count[s.index], False)

    def next_due(self) -> float | None:
        t = [s.since for s in self.shards if s.since is not None and not s.waiting]
        return min(t) + self.HOLD if t else None

    def _send(self, must: bool = True) -> None:
        r = self.reader
        b = r.batch
        for s in self.shards:
            i = s.index
            count = b.shard_count[i]
            if count:
                # must: the batch is full; a shard that still has room may wait
                self._send_shard(s, count, must and (self._final or not r.shard_room(i)))

    def _send_shard(self, s: Shard, count: int, must: bool) -> None:
        r = self.reader
        i = s.index
        raw_len = r.batch.shard_len[i]
        done, tracker = push_frame(s, self.sid, r.shard_frame(i), count, raw_len, must)
        if not done:
            return
        if tracker is not None:
            s.pool.sent(tracker, r.current_buffer(i))
            r.reset_shard(i)
            r.use_buffer(s.pool.take(), i)
        s.since = None
        r.reset_shard(i)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.reader.fd, zmq.POLLIN)
        polling = {s.index: False for s in self.shards}
        while not self.rt.stopping:
            for s in self.shards:
                if s.waiting != polling[s.index]:
                    poller.register(s.sock, zmq.POLLOUT) if s.waiting else poller.unregister(s.sock)
                    polling[s.index] = s.waiting
            timeout = self.rt.timeout(0.5 if not self.qpolicy else 0.1)
            if (due := self.next_due()) is not None:
                # whole milliseconds, rounded up: zmq_poll truncates, and a
                # timeout of 0 until the shard is due would spin
                timeout = min(timeout, math.ceil(max(0.0, due - time.monotonic()) * 1000) / 1000)
            events = dict(poller.poll(timeout * 1000))
            for s in self.shards:
                if s.waiting and s.sock in events:
                    self._send_shard(s, self.reader.batch.shard_count[s.index], False)
            if self.reader.fd in events:
                started = time.monotonic()
                self.pump()
                wait = self.pacer.update(self.c["bytes_in"], started, time.monotonic())
                if wait:
                    time.sleep(wait)
            else:
                self.due(time.monotonic())
                if self.qpolicy:
                    self._adapt(time.monotonic())
            self.rt.tick()
        self.pump()
        self._final = True
        self._send(True)


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
    if len(socks) == 1:
        sender = Sender(reader, socks[0], sender_id, rt, qpolicy, rc)
    else:
        sender = ShardedSender(reader, [Shard(i, d, k, counters) for i, (d, k)
                                        in enumerate(zip(dsts, socks, strict=True))],
                               sender_id, rt, qpolicy)
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
