"""Flow sharding: which destination (sender) or output (receiver) a packet
goes to.

The per-packet work is in C (``_native/flowhash.h``): the sender's netlink
walker writes each record straight into the record area of its shard, the
receiver's ``nzp_split`` copies each validated frame's records into one
region per output.  Python runs once per batch.  Both use the same symmetric
flow hash and the same jump consistent hash, so ``nflog-zmq-send`` with N
destinations and ``nflog-pcap-recv`` with N outputs put a packet in the same
shard number (docs/architecture.md, "Scale-out by flow").
"""

from __future__ import annotations

from ._records import ffi as _ffi
from ._records import lib as _lib

#: --shard-key values -> the C key
KEYS = {"addr": 0, "ports": 1}
#: the most shards of one sender or receiver
MAX_SHARDS = 16
SHARD_KEY_HELP = (
    "what the flow hash that picks a packet's shard covers: 'addr' (the address pair and the "
    "protocol: both directions and every fragment of a flow always together; flows between "
    "the same two hosts share a shard) or 'ports' (also the TCP/UDP/SCTP ports of packets that "
    "are not fragments: spreads the flows of two hosts, but a fragmented datagram then goes "
    "where its addresses send it, possibly not where its flow's other packets go). The "
    "receiver must use the key of its senders")


def shard_of(packet: bytes, nshards: int, key: str = "addr") -> int:
    """The shard of one IP packet (tests, tools): the C function the data path uses."""
    return _lib.nzp_shard(packet, len(packet), KEYS[key], nshards)


def flow_hash(packet: bytes, key: str = "addr") -> int:
    return _lib.nzp_hash(packet, len(packet), KEYS[key])


class ShardCounters:
    """A view of a ``Counters`` for one shard: ``c[k] += n`` adds ``n`` to
    ``shard.<i>.<k>`` and to the total ``<k>``, so the totals keep their
    meaning and each shard has its own figures."""

    def __init__(self, counters, index: int):
        self.total = counters
        self.prefix = f"shard.{index}."

    def __getitem__(self, k: str) -> int:
        return self.total.get(self.prefix + k, 0)

    def __setitem__(self, k: str, v: int) -> None:
        delta = v - self.total.get(self.prefix + k, 0)
        self.total[self.prefix + k] = v
        self.total[k] = self.total.get(k, 0) + delta

    def setdefault(self, k: str, v: int = 0) -> int:
        self.total.setdefault(k, v)
        return self.total.setdefault(self.prefix + k, v)

    def add(self, k: str, n: int = 1) -> None:
        self[k] = self[k] + n

    def get(self, k: str, default: int = 0) -> int:
        return self.total.get(self.prefix + k, default)


class Splitter:
    """Splits validated record areas into ``n`` shards, in C, once per frame."""

    def __init__(self, n: int, key: str = "addr"):
        if not 1 <= n <= MAX_SHARDS:
            raise ValueError(f"1 to {MAX_SHARDS} shards")
        self.n = n
        self.key = KEYS[key]
        self._len = _ffi.new("size_t[]", n)
        self._count = _ffi.new("uint32_t[]", n)
        self._which = _ffi.new("uint8_t[]", 1024)

    def split(self, records: memoryview, count: int) -> list[tuple[memoryview, int]]:
        """(region, records) per shard; the regions are views of one fresh
        buffer (outputs keep them queued, so it is never reused)."""
        if len(self._which) < count:
            self._which = _ffi.new("uint8_t[]", count)
        out = bytearray(len(records))
        _lib.nzp_split(_ffi.from_buffer(records), len(records), count, self.key, self.n,
                       _ffi.from_buffer(out), self._which, self._len, self._count)
        mv = memoryview(out)
        parts, at = [], 0
        for i in range(self.n):
            ln = self._len[i]
            parts.append((mv[at : at + ln], self._count[i]))
            at += ln
        return parts
