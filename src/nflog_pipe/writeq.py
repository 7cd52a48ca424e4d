"""Ordered writes of whole buffers to a non-blocking descriptor.

The live output (a FIFO, a file or stdout) and every tap client are written
the same way: buffers are queued in order and written with one scatter-gather
call for up to ``MAX_IOV`` of them; a partial write is finished before
anything else is written, so a record is never cut or interleaved with
another. Buffers are kept as they are (memoryviews of the received frames),
never copied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

MAX_IOV = 64


class Progress(NamedTuple):
    """What one ``WriteQueue.write()`` got done."""
    bytes: int  # written, buffers finished or not
    records: int  # records of the buffers written whole
    record_bytes: int  # size of those buffers (buffers without records not included)
    error: OSError | None  # the write failed (not EAGAIN/EINTR); the queue is as it was left


class WriteQueue:
    """Buffers waiting for a non-blocking descriptor.

    ``send(iov)`` writes a list of buffers and returns the bytes written
    (``os.writev`` bound to a descriptor, ``socket.sendmsg``); each buffer
    may carry the number of records it holds, so that the owner counts a
    record as written only once all of its bytes are.
    """

    __slots__ = ("_items", "bytes", "_send")

    def __init__(self, send: Callable[[Sequence[memoryview]], int]):
        self._items: deque[list] = deque()  # [memoryview, offset, records]
        self.bytes = 0  # not yet written
        self._send = send

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, data: memoryview, records: int = 0) -> None:
        if len(data):  # an empty buffer would make send() return 0 for ever
            self._items.append([data, 0, records])
            self.bytes += len(data)

    def write(self) -> Progress:
        """Write until the descriptor takes no more (or all is written)."""
        items = self._items
        written = records = record_bytes = 0
        while items:
            iov = [item[0][item[1]:] for item in list(items)[:MAX_IOV]]
            try:
                n = self._send(iov)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                return Progress(written, records, record_bytes, e)
            if n <= 0:
                break  # took nothing (cannot happen with non-empty buffers): no busy loop
            written += n
            self.bytes -= n
            while n:
                item = items[0]
                left = len(item[0]) - item[1]
                if n < left:
                    item[1] += n
                    break
                n -= left
                items.popleft()
                if item[2]:
                    records += item[2]
                    record_bytes += len(item[0])
        return Progress(written, records, record_bytes, None)

    def take_unstarted(self) -> list[tuple[memoryview, int]]:
        """Remove the buffers not begun yet and return them, (data, records)
        in order: a buffer partly written stays, so that it is finished."""
        items = self._items
        keep = 1 if items and items[0][1] else 0
        out = []
        while len(items) > keep:
            data, _, records = items.pop()
            self.bytes -= len(data)
            out.append((data, records))
        out.reverse()
        return out

    def clear(self) -> int:
        """Forget everything queued; returns the records that were in it."""
        lost = sum(item[2] for item in self._items)
        self._items.clear()
        self.bytes = 0
        return lost
