"""NFLOG reader: libnetfilter_log for the control plane, C for the data plane.

``NflogReader`` binds one or more NFLOG groups on one netlink socket, applies
and checks every setting, and reads the socket in C (``nzp_read``): each call
drains up to a batch of netlink buffers into a record area ready to be framed,
so Python runs once per batch, never once per packet.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import struct

from ._nflog import ffi, lib
from .errors import PipeError

log = logging.getLogger(__name__)

SO_RCVBUFFORCE = 33
SO_MEMINFO = 55
#: The kernel's per-group batch buffer: NLMSG_GOODSIZE .. 128 KiB.  Values
#: outside are silently ignored by the kernel, so they are refused here.
KBUFSIZ_MIN = 4096
KBUFSIZ_MAX = 131072
#: A recv() buffer holds one kernel batch whole (nlbufsiz, or one packet when
#: a packet is larger than nlbufsiz); anything shorter would truncate it.
RECV_BUFSIZE = 256 * 1024


class NflogError(OSError, PipeError):
    """A libnetfilter_log call failed; ``errno`` and the call are kept."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        pass
    return os.geteuid() == 0


def _check(rc: int, what: str) -> None:
    if rc < 0:
        err = ffi.errno or errno.EIO
        raise NflogError(err, f"{what}: {os.strerror(err)}")


class NflogReader:
    def __init__(self, groups: list[int], *, rcvbuf: int = 10 << 20, rcvbuf_max: int = 64 << 20,
                 kbufsiz: int = KBUFSIZ_MAX, qthresh: int | None = None,
                 timeout_cs: int | None = None, batch_bytes: int = 256 * 1024,
                 header_room: int = 0, shards: int = 1, shard_key: int = 0):
        if not KBUFSIZ_MIN <= kbufsiz <= KBUFSIZ_MAX:
            raise NflogError(errno.ERANGE, f"kernel batch buffer {kbufsiz} bytes: the kernel "
                             f"accepts {KBUFSIZ_MIN} to {KBUFSIZ_MAX} and ignores anything else")
        if len(groups) > lib.NZP_MAX_GROUPS:
            raise NflogError(errno.EINVAL, f"at most {lib.NZP_MAX_GROUPS} groups per process")
        self.groups = list(groups)
        self._qthresh = qthresh
        self._ctl_fd: int | None = None
        #: the controller's reports (group, qthresh applied or 0), read before each request
        self._ctl_status: int | None = None
        self._ctl_partial = b""
        self._ctl_pid = 0
        self.rcvbuf_max = max(rcvbuf_max, rcvbuf)
        self._gh: list = []
        self._h = lib.nflog_open()
        if self._h == ffi.NULL:
            raise NflogError(ffi.errno, f"nflog_open: {os.strerror(ffi.errno)}")
        try:
            self.fd = lib.nflog_fd(self._h)
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12, fileno=os.dup(self.fd))
            self.rcvbuf = 0
            for g in groups:
                self._bind(g, kbufsiz, qthresh, timeout_cs)
            self.set_rcvbuf(rcvbuf)
            os.set_blocking(self.fd, False)
        except BaseException:
            self.close()
            raise
        # one frame buffer per destination: header room, then the record area
        # (with several destinations the walker writes each record into the
        # area of its flow's shard, flowhash.h)
        self.header_room = header_room
        self._rbuf = ffi.new("unsigned char[]", RECV_BUFSIZE)
        cap = batch_bytes + RECV_BUFSIZE
        self._size = header_room + cap
        self.frame_bytes = self._size  # the largest frame: header room and a full area
        self.batch = ffi.new("struct nzp_batch *")
        self.batch.cap = cap
        self.batch.ngroups = len(groups)
        for i, g in enumerate(groups):
            self.batch.groups[i] = g
        self.shards = shards
        if shards > lib.NZP_MAX_SHARDS:
            raise NflogError(errno.EINVAL, f"at most {lib.NZP_MAX_SHARDS} destinations")
        if shards > 1:
            self.batch.nshards = shards
            self.batch.shard_key = shard_key
        self._frames = [ffi.new("unsigned char[]", self._size) for _ in range(shards)]
        self._buffers = [ffi.buffer(f, self._size) for f in self._frames]
        if shards > 1:
            for i, f in enumerate(self._frames):
                self.batch.shard_out[i] = f + header_room
        else:
            self.batch.out = self._frames[0] + header_room

    # -- control plane ---------------------------------------------------------
    def _bind(self, group: int, kbufsiz: int, qthresh: int | None, timeout_cs: int | None) -> None:
        gh = lib.nflog_bind_group(self._h, group)
        if gh == ffi.NULL:
            err = ffi.errno
            if err == errno.EPERM and _has_net_admin():
                raise NflogError(err, f"NFLOG group {group} is already bound by another process "
                                 "(another nflog-zmq-send, ulogd2, tcpdump -i nflog...)")
            if err == errno.EPERM:
                raise NflogError(err, f"binding NFLOG group {group} needs root or CAP_NET_ADMIN "
                                 f"in this network namespace: {os.strerror(err)}")
            raise NflogError(err, f"binding NFLOG group {group}: {os.strerror(err)}")
        self._gh.append(gh)
        _check(lib.nflog_set_mode(gh, lib.NFULNL_COPY_PACKET, 0xFFFF),
               f"group {group}: copy mode packet")
        _check(lib.nflog_set_nlbufsiz(gh, kbufsiz), f"group {group}: kernel buffer {kbufsiz}")
        if qthresh is not None:
            _check(lib.nflog_set_qthresh(gh, qthresh), f"group {group}: qthresh {qthresh}")
        if timeout_cs is not None:
            _check(lib.nflog_set_timeout(gh, timeout_cs), f"group {group}: timeout {timeout_cs}")
        _check(lib.nflog_set_flags(gh, lib.NFULNL_CFG_F_SEQ), f"group {group}: sequence numbers")

    def set_rcvbuf(self, size: int) -> int:
        """Force the socket receive buffer (SO_RCVBUFFORCE) and verify it."""
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError as e:
            raise NflogError(e.errno, f"netlink receive buffer of {size} bytes (SO_RCVBUFFORCE "
                             f"needs CAP_NET_ADMIN): {e.strerror}") from None
        got = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if got < size:  # the kernel reports twice what was set
            raise NflogError(errno.ENOBUFS, f"netlink receive buffer: asked {size}, got {got}")
        self.rcvbuf = size
        return got

    def kernel_rcvbuf(self) -> int:
        """The receive buffer the kernel applies now (it reports twice what
        was set), for the ``netlink_rcvbuf`` gauge.  0 once closed."""
        if self._sock is None:
            return 0
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2

    def queued_bytes(self) -> int:
        """Bytes the kernel holds for this socket, not yet read (a gauge:
        near ``rcvbuf`` means overruns are coming).  0 once closed."""
        if self._sock is None:
            return 0
        return struct.unpack_from("I", self._sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0]

    def grow_rcvbuf(self) -> bool:
        """After an overrun: double the receive buffer up to its cap.  With
        the controller (the sender's privileges are dropped) the request goes
        to it and takes effect within microseconds, asynchronously; without
        it, this process must still hold CAP_NET_ADMIN."""
        if self.rcvbuf >= self.rcvbuf_max:
            return False
        size = min(self.rcvbuf * 2, self.rcvbuf_max)
        if self._ctl_fd is not None:
            try:
                os.write(self._ctl_fd, struct.pack("=II", lib.NZP_CTL_RCVBUF, size))
            except OSError as e:
                log.warning("cannot grow the netlink receive buffer: controller unavailable: %s",
                            e.strerror)
                self._stop_controller()
                self.rcvbuf_max = self.rcvbuf
                return False
            self.rcvbuf = size
            return True
        try:
            self.set_rcvbuf(size)
        except NflogError as e:
            log.warning("cannot grow the netlink receive buffer: %s", e)
            self.rcvbuf_max = self.rcvbuf
            return False
        return True

    # -- run-time kernel batch size (privilege-separated) ------------------------
    def start_controller(self, uid: int, gid: int) -> int:
        """Fork the child that may change queue thresholds and grow the
        receive buffer later (see ``nzp_ctl_child`` in nflog.h): it keeps
        only CAP_NET_ADMIN, runs as uid/gid, and can only touch this
        reader's groups, and the receive buffer up to ``rcvbuf_max``.  Call
        before any thread exists and before dropping the parent's
        privileges."""
        # one stream socketpair: commands to the child, its reports back
        pw, pr = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        w, r = pw.detach(), pr.detach()
        groups = ffi.new("uint16_t[]", self.groups)
        pid = os.fork()
        if pid == 0:  # child: C only from here, never returns into Python code
            rc = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                keep = sorted({r, self.fd})
                os.closerange(3, keep[0])
                for a, b in zip(keep, keep[1:] + [1 << 16], strict=True):
                    os.closerange(a + 1, b)
                rc = 1 if lib.nzp_ctl_child(r, self.fd, groups, len(self.groups), uid, gid,
                                            self.rcvbuf_max) else 0
            finally:
                os._exit(rc)
        os.close(r)
        os.set_blocking(w, False)
        self._ctl_fd, self._ctl_pid = w, pid
        self._ctl_status, self._ctl_partial = w, b""
        return pid

    @property
    def qthresh(self) -> int | None:
        """The queue threshold last set; None once the kernel refused one (unknown)."""
        self._read_reports()
        return self._qthresh

    def set_qthresh(self, qthresh: int) -> bool:
        """Ask the controller to set every group's queue threshold."""
        if self._ctl_fd is None:
            return False
        self._read_reports()
        try:
            os.write(self._ctl_fd, b"".join(struct.pack("=II", g, qthresh) for g in self.groups))
        except OSError as e:  # controller gone: stay at the current setting
            log.warning("kernel batch size controller unavailable: %s", e.strerror)
            self._stop_controller()
            return False
        self._qthresh = qthresh
        return True

    def _read_reports(self) -> None:
        """The controller's results of earlier requests: a threshold the kernel did not
        take (sendto failed) is not the current one."""
        try:
            data = os.read(self._ctl_status, 4096) if self._ctl_status is not None else b""
        except OSError:  # nothing yet (EAGAIN), or the controller gone
            return
        data = self._ctl_partial + data
        whole = len(data) // 8 * 8
        self._ctl_partial = data[whole:]
        for group, applied in struct.iter_unpack("=II", data[:whole]):
            if applied == 0:
                log.warning("the kernel refused a batch size change for group %d; the "
                            "threshold stays unknown until the next change succeeds", group,
                            extra={"event": "qthresh_failed", "group": group})
                self._qthresh = None

    def _stop_controller(self) -> None:
        self._ctl_status = None  # the same socket as _ctl_fd
        if self._ctl_fd is not None:
            os.close(self._ctl_fd)
            self._ctl_fd = None
        if self._ctl_pid:
            try:
                os.waitpid(self._ctl_pid, 0)
            except ChildProcessError:
                pass
            self._ctl_pid = 0

    # -- data plane --------------------------------------------------------------
    def read(self, max_recvs: int = 64) -> int:
        """Drain the socket into the areas.  0: drained, 1: an area must go out
        (the one without room, ``area_room``; with shards the rest of the
        buffer is kept and placed by the next read), 2: max_recvs reached;
        raises NflogError on a socket error."""
        rc = lib.nzp_read(self.fd, self._rbuf, RECV_BUFSIZE, self.batch, max_recvs)
        if rc < 0:
            raise NflogError(-rc, f"reading the NFLOG socket: {os.strerror(-rc)}")
        return rc

    # -- the record areas: one per destination (area 0 alone without shards) --
    @property
    def count(self) -> int:
        """Records waiting in all areas."""
        if self.shards > 1:
            return sum(self.batch.shard_count[0 : self.shards])
        return self.batch.count

    def area_count(self, i: int) -> int:
        return self.batch.shard_count[i] if self.shards > 1 else self.batch.count

    def area_len(self, i: int) -> int:
        return self.batch.shard_len[i] if self.shards > 1 else self.batch.len

    def area_frame(self, i: int) -> memoryview:
        """Header room followed by the records of area ``i``."""
        return memoryview(self._buffers[i])[: self.header_room + self.area_len(i)]

    def area_room(self, i: int) -> bool:
        """After ``read`` returned 1: whether area ``i`` may stay (it is not the
        one that had no room)."""
        return i != self.batch.blocked_shard

    def reset_area(self, i: int) -> None:
        if self.shards > 1:
            self.batch.shard_len[i] = 0
            self.batch.shard_count[i] = 0
        else:
            self.batch.len = 0
            self.batch.count = 0

    # -- teardown ----------------------------------------------------------------
    def close(self) -> None:
        """Unbind the groups and close the socket.  Unbinding needs
        CAP_NET_ADMIN; without it (privileges dropped) closing the socket
        releases the groups in the kernel all the same."""
        self._stop_controller()
        for gh in self._gh:
            if lib.nflog_unbind_group(gh) < 0:
                log.debug("unbind: %s (the socket close releases the group)",
                          os.strerror(ffi.errno))
        self._gh = []
        if getattr(self, "_sock", None) is not None:
            self._sock.close()
            self._sock = None
        if self._h is not None and self._h != ffi.NULL:
            lib.nflog_close(self._h)
        self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class QthreshPolicy:
    """The kernel's batch size (queue threshold) from the packet rate.

    Big batches cost the gateway and this process less per packet; small ones
    keep latency low when traffic is light (the kernel's flush timer cannot
    go below 10 ms).  Below ``busy_rate`` packets/s the target is a batch that
    fills in ``fill_time`` (2 ms: a packet waits about 1 ms); above it, a
    batch per kernel flush period (10 ms), up to ``qmax``.  Values are powers
    of two.  Raised as soon as 10 ms of traffic say so; lowered only when the
    target falls below a quarter of the current value over ``interval``.
    """

    def __init__(self, qmax: int = 1024, fill_time: float = 0.002, busy_rate: float = 10000.0,
                 interval: float = 0.1, start: int = 1):
        self.qmax = qmax
        self.fill_time = fill_time
        self.busy_rate = busy_rate
        self.interval = interval
        self.current = start
        self._t0: float | None = None
        self._n0 = 0

    def target(self, rate: float) -> int:
        want = rate * (self.fill_time if rate < self.busy_rate else 0.01)
        want = max(1.0, min(float(self.qmax), want))
        return min(self.qmax, 1 << (int(want) - 1).bit_length()) if want > 1 else 1

    def update(self, packets_total: int, now: float) -> int | None:
        """Feed the cumulative packet count; returns a new threshold or None."""
        if self._t0 is None:
            self._t0, self._n0 = now, packets_total
            return None
        span = now - self._t0
        if span < 0.01:
            return None
        t = self.target((packets_total - self._n0) / span)
        if t > self.current or (span >= self.interval and t * 4 <= self.current):
            self.current = t
            self._t0, self._n0 = now, packets_total
            return t
        if span >= self.interval:
            self._t0, self._n0 = now, packets_total
        return None
