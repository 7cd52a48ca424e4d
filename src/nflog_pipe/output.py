"""The receiver's live pcap output: a FIFO (the main use), a file or stdout.

Never blocks the receiver, and never hands a reader a stream that does not
start with a pcap header (``docs/architecture.md``, "The FIFO and its
readers"):

- a FIFO is opened with O_NONBLOCK; while no reader has it open (ENXIO) the
  receiver keeps draining ZeroMQ and counts what the output could not take
  (``dropped.output``), retrying the open on a short timer;
- **one pipe per reader**: the moment a reader is attached, a fresh FIFO is
  renamed over the path, so the next ``open()`` of the path lands on an inode
  no writer has touched; the attached reader's pipe lives on only for it.
  A reader can therefore never inherit the rest of an earlier reader's
  stream, however quickly it comes back;
- a new reader while one is attached takes the stream over (hand-over): the
  old reader gets what was already meant for it, then end-of-file;
- writes are non-blocking; a partial write is finished before anything else,
  so records are never interleaved, and at most ``max_pending`` bytes wait; a
  frame that does not fit is dropped whole and counted;
- a record counts as ``packets_out`` once its reader has read it whole (the
  write end's FIONREAD says how much of what was written is still in the
  pipe); when a reader leaves, what it had not read whole (in the pipe, cut,
  or still queued) is counted as ``dropped.reader_gone``.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import select
import stat
import struct
import sys
import termios
import time
from collections import deque

from . import pcap
from .logs import RateLimited
from .metrics import Counters
from .writeq import WriteQueue

REC = pcap.RECORD_HEADER_SIZE

log = logging.getLogger(__name__)

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
_INT = struct.Struct("i")
MAX_HANDED_OVER = 8  # replaced readers still reading what was theirs
SETTLE_EVERY = 32  # frames held for a reader beyond those it has not read yet
OUTPUT_COUNTERS = ("packets_out", "bytes_out", "dropped.output", "dropped.reader_gone",
                   "dropped.unread_at_exit")


def unread_bytes(fd: int) -> int:
    """Bytes written to a pipe that no reader has taken yet (FIONREAD works on
    either end, and keeps working after the last reader closed)."""
    return _INT.unpack(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def records_within(data: memoryview, limit: int) -> tuple[int, int]:
    """Of a record area, how many records end within its first ``limit``
    bytes, and their captured IP bytes.  Only run for the one buffer a
    departing reader was in the middle of."""
    off = whole = nbytes = 0
    while off + REC <= len(data):
        caplen = pcap.RECORD_HEADER.unpack_from(data, off)[2]
        end = off + REC + caplen
        if end > limit:
            break
        whole += 1
        nbytes += caplen
        off = end
    return whole, nbytes


class ReaderPipe:
    """One reader's pipe (or the output file): the write end, what waits to be
    written, and what was pushed but not yet read whole.

    ``ledger`` holds one entry per pushed buffer, ``(end, records, data)``,
    ``end`` being the buffer's end as an offset in the stream this reader
    gets; what the reader has taken is ``written - unread_bytes(fd)``."""

    __slots__ = ("fd", "q", "pushed", "written", "ledger", "number")

    def __init__(self, fd: int, number: int):
        self.fd = fd
        self.number = number
        self.q = WriteQueue(functools.partial(os.writev, fd))
        self.pushed = 0
        self.written = 0
        self.ledger: deque[tuple[int, int, memoryview]] = deque()

    def push(self, data: memoryview, records: int = 0) -> None:
        self.pushed += len(data)
        self.q.push(data, records)
        if records:
            self.ledger.append((self.pushed, records, data))

    def take_unstarted(self) -> list[tuple[memoryview, int]]:
        """Hand-over: the buffers not begun yet leave this reader's queue (the
        next reader gets them); a buffer partly written stays to be finished."""
        moved = self.q.take_unstarted()
        self.pushed -= sum(len(data) for data, _ in moved)
        while self.ledger and self.ledger[-1][0] > self.pushed:
            self.ledger.pop()
        return moved


class PcapOutput:
    def __init__(self, path: str, counters: Counters, max_pending: int = 4 << 20,
                 create_fifo: bool = False):
        self.path = path
        self.c = counters
        self.max_pending = max_pending
        self.closed = False  # stdout went away for good
        self.readers = 0  # readers attached so far
        self._cur: ReaderPipe | None = None  # the attached reader
        self._old: list[ReaderPipe] = []  # readers handed over, taking what was theirs
        self._warn = RateLimited(log, 30.0)
        self._mode = 0o640
        self._owner: tuple[int, int] | None = None
        for k in OUTPUT_COUNTERS:
            self.c.setdefault(k, 0)
        if path == "-":
            self.kind = "stdout"
            self._attach(sys.stdout.fileno())
            return
        # a symbolic link stays: the FIFO (or file) it leads to is used
        self._fifo = os.path.realpath(path)
        self.kind = check_path(self._fifo, create_fifo)
        if self.kind == "fifo":
            if not os.path.exists(self._fifo):
                os.mkfifo(self._fifo, 0o640)
                os.chmod(self._fifo, 0o640)
                log.info("created FIFO %s", self._fifo)
            st = os.stat(self._fifo)
            self._mode = stat.S_IMODE(st.st_mode)
            self._owner = (st.st_uid, st.st_gid)
            self.try_attach()
        else:
            if os.path.exists(path) and stat.S_ISREG(os.stat(path).st_mode):
                log.info("%s is a regular file: writing a pcap file over it", path,
                         extra={"event": "output_file", "replaced_bytes": os.stat(path).st_size})
            elif not os.path.exists(path):
                log.info("%s does not exist: writing a regular pcap file (use --fifo-create "
                         "to make a FIFO)", path)
            self._attach(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                 0o640))

    # -- reader attachment -----------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._cur is not None

    @property
    def fd(self) -> int | None:
        return self._cur.fd if self._cur is not None else None

    @property
    def pending_bytes(self) -> int:
        return sum(p.q.bytes for p in self._pipes())

    def _pipes(self) -> list[ReaderPipe]:
        return self._old + ([self._cur] if self._cur is not None else [])

    def poll_items(self) -> list[tuple[int, bool]]:
        """(fd, bytes waiting) of every reader's write end: the loop polls them
        for POLLOUT when bytes wait, and always for POLLERR (the reader left),
        so that a departure is noticed (and counted) at once."""
        if self.kind != "fifo":
            return [(p.fd, True) for p in self._pipes() if p.q]
        return [(p.fd, bool(p.q)) for p in self._pipes()]

    def _attach(self, fd: int) -> None:
        self.readers += 1
        self._cur = ReaderPipe(fd, self.readers)
        if self.kind != "file":
            os.set_blocking(fd, False)
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # not a pipe, or above /proc/sys/fs/pipe-max-size
        self._cur.push(memoryview(pcap.GLOBAL_HEADER_BYTES))

    def try_attach(self) -> bool:
        """Look for a reader on the path (non-blocking); one that is found gets
        a pipe of its own, and takes the stream over from an attached one."""
        if self.kind != "fifo":
            return self.attached
        try:
            fd = os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader (yet)
                self._warn.warning("fifo", "cannot open output %s: %s (retrying)", self.path,
                                   e.strerror, path=self.path)
            return False
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode):
            os.close(fd)
            self._warn.warning("fifo", "%s is no longer a FIFO (retrying)", self.path)
            return False
        if any(os.path.samestat(st, os.fstat(p.fd)) for p in self._pipes()):
            os.close(fd)  # the path still leads to an attached pipe (renewing it failed)
            return False
        # first of all, make the path lead to a pipe nobody has written to
        self._renew_path()
        handed_over = self._cur
        moved: list[tuple[memoryview, int]] = []
        if handed_over is not None:
            moved = handed_over.take_unstarted()
            self._old.append(handed_over)
            log.info("%s: a new reader takes the stream over from reader %d", self.path,
                     handed_over.number, extra={"event": "reader_replaced",
                                                "reader": handed_over.number,
                                                "moved_records": sum(n for _, n in moved)})
            self._cur = None
            if len(self._old) > MAX_HANDED_OVER:  # readers that neither read nor leave
                self._detach(self._old[0], f"more than {MAX_HANDED_OVER} handed-over readers "
                             "still attached: the oldest is let go")
        self._attach(fd)
        for data, records in moved:
            self._cur.push(data, records)
        self._flush(self._cur)
        log.info("reader attached to %s", self.path, extra={"event": "reader_attached",
                                                             "readers": self.readers})
        return True

    def _renew_path(self) -> None:
        """Rename a fresh FIFO over the path (atomic: an ``open()`` of the path
        finds either the old inode or the new one, never nothing)."""
        d, name = os.path.split(self._fifo)
        tmp = os.path.join(d, f".{name}.{os.getpid()}.next")
        try:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.mkfifo(tmp, 0o600)
            try:
                self._same_owner(tmp)
                os.chmod(tmp, self._mode)
                os.rename(tmp, self._fifo)
            except OSError:
                os.unlink(tmp)
                raise
        except OSError as e:
            log.error("cannot put a fresh FIFO at %s: %s; a reader that opens it before this "
                      "reader leaves would share its pipe", self.path, e.strerror or e,
                      extra={"event": "fifo_renew_failed"})

    def _same_owner(self, tmp: str) -> None:
        """The fresh FIFO gets the owner and group of the one DST was at start
        (readers must be able to open it), as far as the receiver may."""
        if not self._owner or self._owner == (os.geteuid(), os.getegid()):
            return
        try:
            os.chown(tmp, *self._owner)
        except PermissionError:
            try:
                os.chown(tmp, -1, self._owner[1])
            except PermissionError:
                self._warn.warning("chown", "cannot give the fresh FIFO at %s the owner "
                                   "%d:%d of the first one: readers need the mode %o to allow "
                                   "them", self.path, *self._owner, self._mode)

    def check_reader(self) -> None:
        """Notice readers that left (POLLERR on the write end), count what
        readers have read, forget handed-over pipes they have emptied."""
        if self.kind != "fifo":
            return
        for p in self._pipes():
            pl = select.poll()
            pl.register(p.fd, 0)
            if any(ev & (select.POLLERR | select.POLLHUP) for _, ev in pl.poll(0)):
                self._detach(p, "reader closed the FIFO")
                continue
            unread = self._settle(p)
            if p is not self._cur and not p.q and unread == 0:
                self._retire(p)

    def _settle(self, p: ReaderPipe, unread: int | None = None) -> int:
        """Count the records ``p``'s reader has read whole as ``packets_out``;
        returns the bytes still in the pipe."""
        if unread is None:
            unread = unread_bytes(p.fd)
        taken = p.written - unread
        records = nbytes = 0
        ledger = p.ledger
        while ledger and ledger[0][0] <= taken:
            end, n, data = ledger.popleft()
            records += n
            nbytes += len(data) - REC * n
        if records:
            self.c["packets_out"] += records
            self.c["bytes_out"] += nbytes
        return unread

    def _lose(self, p: ReaderPipe, reason: str) -> tuple[int, int, int]:
        """``p``'s reader is gone (or will not be waited for): settle what it
        read whole, count everything else, a cut record once.  Returns
        (records lost, bytes of a record cut short by the reader, bytes that
        were left in the pipe)."""
        unread = unread_bytes(p.fd)
        taken = p.written - unread
        self._settle(p, unread)
        lost = cut = 0
        if p.ledger and (start := p.ledger[0][0] - len(p.ledger[0][2])) < taken:
            end, n, data = p.ledger.popleft()
            whole, nbytes = records_within(data, taken - start)
            self.c["packets_out"] += whole
            self.c["bytes_out"] += nbytes
            lost += n - whole
            cut = taken - start - (REC * whole + nbytes)
        lost += sum(entry[1] for entry in p.ledger)
        p.ledger.clear()
        p.q.clear()
        self.c[reason] += lost
        return lost, cut, unread

    def _retire(self, p: ReaderPipe) -> None:
        os.close(p.fd)
        if p is self._cur:
            self._cur = None
        else:
            self._old.remove(p)
        log.info("%s: handed-over reader %d has everything that was meant for it", self.path,
                 p.number, extra={"event": "reader_retired", "reader": p.number})

    def _detach(self, p: ReaderPipe, why: str) -> None:
        if self.kind == "fifo":
            lost, cut, unread = self._lose(p, "dropped.reader_gone")
        else:  # stdout or a file: no pipe accounting, what was queued is lost
            lost, cut, unread = p.q.clear(), 0, 0
            self.c["dropped.reader_gone" if self.kind == "stdout" else "dropped.output"] += lost
        if self.kind == "stdout":
            self.closed = True
        else:
            os.close(p.fd)
        if p is self._cur:
            self._cur = None
        else:
            self._old.remove(p)
        log.info("%s: %s", self.path, why, extra={"event": "reader_detached",
                                                  "reader": p.number, "dropped_unread": lost,
                                                  "cut_bytes": cut, "pipe_bytes": unread})

    # -- writing -----------------------------------------------------------------
    def write(self, records: memoryview, count: int) -> bool:
        """Queue a validated record area; False if it was dropped."""
        if not len(records):
            # a valid empty frame: nothing to write (queued, writev would
            # return 0 for it forever; found by tests/fuzz)
            return True
        cur = self._cur
        if cur is None or cur.q.bytes + len(records) > self.max_pending:
            self.c["dropped.output"] += count
            return False
        if self.kind == "fifo":
            cur.push(records, count)
        else:
            cur.q.push(records, count)
        self._flush(cur)
        return True

    def flush(self) -> None:
        for p in self._pipes():
            if p.q:
                self._flush(p)

    def _flush(self, p: ReaderPipe) -> None:
        done = p.q.write()
        p.written += done.bytes
        if done.records and self.kind != "fifo":  # a FIFO counts what its reader read
            self.c["packets_out"] += done.records
            self.c["bytes_out"] += done.record_bytes - REC * done.records
        e = done.error
        if e is None:
            if len(p.ledger) > SETTLE_EVERY and self.kind == "fifo":
                # every few frames (never per packet): what the reader took is
                # counted, and the frames it read are let go
                self._settle(p)
            return
        if isinstance(e, BrokenPipeError):
            self._detach(p, "reader went away")
        else:
            self._warn.warning("write", "writing %s: %s", self.path, e.strerror)
            self._detach(p, f"write error: {e.strerror}")

    @property
    def wants_write(self) -> bool:
        return any(p.q for p in self._pipes())

    def close(self, grace: float = 2.0) -> None:
        """At exit: give attached readers up to ``grace`` seconds to take what
        is theirs (queued and in the pipe); what they have not read whole by
        then is counted as ``dropped.unread_at_exit``."""
        if self.kind == "file" and self._cur is not None:
            os.set_blocking(self._cur.fd, True)
        deadline = time.monotonic() + grace
        while self._pipes():
            self.flush()
            self.check_reader()
            pending = [p for p in self._pipes()
                       if p.q or (self.kind == "fifo" and unread_bytes(p.fd))]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        for p in self._pipes():
            if self.kind == "fifo":
                self._lose(p, "dropped.unread_at_exit")
            else:
                self.c["dropped.unread_at_exit"] += p.q.clear()
            if self.kind != "stdout":
                os.close(p.fd)
        self._cur = None
        self._old.clear()


def check_path(path: str, create_fifo: bool) -> str:
    """What DST is ("fifo" or "file"), or an OSError with one clear line:
    a bad output path is a start-up error, not a warning every 30 s."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not os.path.isdir(d):
            raise OSError(errno.ENOENT, f"directory {d} does not exist") from None
        if not os.access(d, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, f"directory {d} is not writable") from None
        return "fifo" if create_fifo else "file"
    except PermissionError:
        raise OSError(errno.EACCES, f"permission denied on the way to it ({d})") from None
    if stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EISDIR, "it is a directory")
    if not os.access(path, os.W_OK):
        raise OSError(errno.EACCES, "it is not writable")
    if stat.S_ISFIFO(st.st_mode):
        if not os.access(d, os.W_OK | os.X_OK):
            raise OSError(errno.EACCES, f"directory {d} is not writable: the receiver puts a "
                          "fresh FIFO at the path for every reader")
        return "fifo"
    if stat.S_ISREG(st.st_mode):
        if create_fifo:
            raise OSError(errno.EEXIST, "it is a regular file, not a FIFO: remove it, or "
                          "drop --fifo-create to write a pcap file over it")
        return "file"
    if stat.S_ISCHR(st.st_mode):
        return "file"
    raise OSError(errno.EINVAL, "it is neither a FIFO nor a regular file")
