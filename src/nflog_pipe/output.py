"""The receiver's live pcap output: a FIFO (the main use), a file or stdout.

Never blocks the receiver:
- a FIFO is opened with O_NONBLOCK; while no reader has it open (ENXIO) the
  receiver keeps draining ZeroMQ and counts what the output could not take
  (``dropped.output``), retrying the open on a short timer;
- every reader that (re)attaches starts with a fresh pcap header;
- writes are non-blocking; a partial write is finished before anything else,
  so records are never interleaved or cut, and at most ``max_pending`` bytes
  wait; a frame that does not fit is dropped whole and counted;
- a reader that goes away (EPIPE, or POLLERR on the idle pipe) is not an
  error: what was queued for it is counted as dropped and the receiver waits
  for the next reader.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import select
import stat
import sys

from . import pcap
from .logs import RateLimited
from .metrics import Counters
from .writeq import WriteQueue

log = logging.getLogger(__name__)

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


class PcapOutput:
    def __init__(self, path: str, counters: Counters, max_pending: int = 4 << 20,
                 create_fifo: bool = False):
        self.path = path
        self.c = counters
        self.max_pending = max_pending
        self.fd: int | None = None
        self.closed = False  # stdout went away for good
        self.readers = 0  # readers attached so far
        self._q: WriteQueue | None = None  # while attached
        self._warn = RateLimited(log, 30.0)
        for k in ("packets_out", "bytes_out", "dropped.output"):
            self.c.setdefault(k, 0)
        if path == "-":
            self.kind = "stdout"
            self._attach(sys.stdout.fileno())
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if create_fifo:
                os.mkfifo(path, 0o640)
                log.info("created FIFO %s", path)
                self.kind = "fifo"
            else:
                self.kind = "file"
                log.info("%s does not exist: writing a regular pcap file (use --fifo-create "
                         "to make a FIFO)", path)
        else:
            if stat.S_ISFIFO(st.st_mode):
                self.kind = "fifo"
            elif stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode):
                self.kind = "file"
            else:
                raise OSError(errno.EINVAL, f"{path} is neither a FIFO nor a regular file")
        if self.kind == "file":
            self._attach(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640))
        else:
            self.try_attach()

    # -- reader attachment -----------------------------------------------------
    @property
    def attached(self) -> bool:
        return self.fd is not None

    @property
    def pending_bytes(self) -> int:
        return self._q.bytes if self._q is not None else 0

    def _attach(self, fd: int) -> None:
        self.fd = fd
        self._q = WriteQueue(functools.partial(os.writev, fd))
        self.readers += 1
        if self.kind != "file":
            os.set_blocking(fd, False)
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # not a pipe, or above /proc/sys/fs/pipe-max-size
        self._q.push(memoryview(pcap.GLOBAL_HEADER_BYTES))

    def try_attach(self) -> bool:
        """FIFO without a reader: try to open it (non-blocking)."""
        if self.attached or self.kind != "fifo":
            return self.attached
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return False  # no reader yet
            self._warn.warning("fifo", "cannot open output %s: %s (retrying)", self.path,
                               e.strerror, path=self.path)
            return False
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            self._warn.warning("fifo", "%s is no longer a FIFO (retrying)", self.path)
            return False
        self._attach(fd)
        log.info("reader attached to %s", self.path, extra={"event": "reader_attached",
                                                             "readers": self.readers})
        return True

    def check_reader(self) -> None:
        """An idle FIFO whose reader left: notice it now (POLLERR), so that
        the next reader cannot inherit the end of the previous stream."""
        if self.kind != "fifo" or not self.attached:
            return
        p = select.poll()
        p.register(self.fd, 0)
        if any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0)):
            self._detach("reader closed the FIFO")

    def _detach(self, why: str) -> None:
        lost = self._q.clear()
        self.c["dropped.output"] += lost
        self._q = None
        if self.kind == "stdout":
            self.closed = True
        else:
            os.close(self.fd)
        self.fd = None
        log.info("%s: %s", self.path, why, extra={"event": "reader_detached",
                                                  "dropped_pending": lost})

    # -- writing -----------------------------------------------------------------
    def write(self, records: memoryview, count: int) -> bool:
        """Queue a validated record area; False if it was dropped."""
        if not len(records):
            # a valid empty frame: nothing to write (queued, writev would
            # return 0 for it forever; found by tests/fuzz)
            return True
        if not self.attached or self.pending_bytes + len(records) > self.max_pending:
            self.c["dropped.output"] += count
            return False
        self._q.push(records, count)
        self.flush()
        return True

    def flush(self) -> None:
        if not self._q:
            return
        done = self._q.write()
        if done.records:
            self.c["packets_out"] += done.records
            self.c["bytes_out"] += done.record_bytes - 16 * done.records
        e = done.error
        if e is None:
            return
        if isinstance(e, BrokenPipeError):
            self._detach("reader went away")
        else:
            self._warn.warning("write", "writing %s: %s", self.path, e.strerror)
            self._detach(f"write error: {e.strerror}")

    @property
    def wants_write(self) -> bool:
        return bool(self._q)

    def close(self) -> None:
        if self.attached and self.kind != "stdout":
            os.set_blocking(self.fd, True) if self.kind == "file" else None
            self.flush()
            if self._q is not None:  # flush() may have detached it
                self.c["dropped.output"] += self._q.clear()
                os.close(self.fd)
        elif self.attached:
            self.flush()
        self.fd = None
