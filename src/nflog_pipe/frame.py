"""The wire format: self-describing frames carrying batches of pcap records.

Byte-level description in ``docs/frame-format.md``.  ``decode`` is the only
way bytes from the network become records: it checks the header, bounds every
length before allocating, decompresses within the announced size and has the
C helper verify that the records add up exactly, so a frame is accepted whole
or rejected whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from . import codec as _codec
from . import pcap
from ._records import ffi as _rffi
from ._records import lib as _rlib
from .errors import PipeError

MAGIC = b"NZPF"
VERSION = 1
#: the frame header, little-endian, in wire order (docs/frame-format.md); ``Header`` names
#: its fields. The one definition: the sender packs it in place with it, the relays pack
#: it through ``Header.pack``, ``read_header`` and ``decode`` read it.
HEADER = struct.Struct("<4sBBBBIIQQII")
HEADER_SIZE = HEADER.size  # 40

FLAG_COMPRESSED = 0x01
KNOWN_FLAGS = FLAG_COMPRESSED

CODEC_NONE = _codec.NONE
CODEC_ZLIB = _codec.ZLIB
CODEC_ZSTD = _codec.ZSTD

MAX_SENDER_ID = 255
#: Largest frame a receiver accepts (also ZMQ_MAXMSGSIZE on its sockets).
MAX_FRAME = 64 * 1024 * 1024
#: what receivers and relays tune malloc for (``keep_frame_memory``): a sender's
#: largest frame at the default --batch-size (256 KiB + 256 KiB of records), rounded up
COMMON_FRAME = 1 << 20
#: Largest record area a frame may announce (bounds decompression).
MAX_RAW = 64 * 1024 * 1024
MAX_RECORDS = MAX_RAW // pcap.RECORD_HEADER_SIZE
#: the most a compressed payload can expand (deflate's limit, 1032:1): bounds
#: the records a rejected compressed frame is counted for
MAX_EXPANSION = 1032


class FrameError(PipeError, ValueError):
    """A frame that must be rejected whole.  ``kind`` names the check."""

    def __init__(self, kind: str, message: str, count: int | None = None):
        super().__init__(message, kind)
        #: records the frame announced, when its header could be read
        self.count = count


@dataclass(slots=True)
class Frame:
    sender_id: str
    instance: int
    seq: int
    pkt_seq: int
    count: int
    flags: int
    codec: int
    #: the record area, uncompressed and validated
    records: memoryview

    @property
    def size(self) -> int:
        return len(self.records)


class Header(NamedTuple):
    """The fields of ``HEADER``, in wire order; the sender id follows on the wire."""

    magic: bytes
    version: int
    flags: int
    codec: int
    id_len: int
    instance: int
    count: int
    seq: int
    pkt_seq: int
    raw_len: int
    payload_len: int

    @classmethod
    def new(cls, sender_id: bytes, *, instance: int, count: int, seq: int, pkt_seq: int,
            raw_len: int, payload_len: int, flags: int = 0, codec: int = CODEC_NONE) -> Header:
        return cls(MAGIC, VERSION, flags, codec, len(sender_id), instance, count, seq, pkt_seq,
                   raw_len, payload_len)

    def pack(self, sender_id: bytes) -> bytes:
        """The header and the sender id, as they go on the wire."""
        return HEADER.pack(*self) + sender_id


def read_header(data) -> Header:
    """The header's fields, unchecked (``decode`` checks them)."""
    return Header._make(HEADER.unpack_from(data))


def pack_header(
    sender_id: bytes,
    instance: int,
    seq: int,
    pkt_seq: int,
    count: int,
    raw_len: int,
    payload_len: int,
    flags: int = 0,
    codec: int = CODEC_NONE,
) -> bytes:
    """Positional form of ``Header.new(...).pack`` (argument order is not wire order)."""
    return Header.new(sender_id, instance=instance, count=count, seq=seq, pkt_seq=pkt_seq,
                      raw_len=raw_len, payload_len=payload_len, flags=flags,
                      codec=codec).pack(sender_id)


def encode(
    sender_id: str | bytes,
    instance: int,
    seq: int,
    pkt_seq: int,
    count: int,
    records: bytes | memoryview,
    codec: int = CODEC_NONE,
    level: int | None = None,
) -> bytes:
    """A whole frame (tests, relays).  The sender packs headers in place."""
    sid = sender_id.encode() if isinstance(sender_id, str) else sender_id
    if len(sid) > MAX_SENDER_ID:
        raise ValueError("sender id longer than 255 bytes")
    if codec == CODEC_NONE:
        payload, flags = bytes(records), 0
    else:
        payload, flags = _codec.compress(codec, records, level), FLAG_COMPRESSED
    return pack_header(sid, instance, seq, pkt_seq, count, len(records), len(payload),
                       flags, codec) + payload


def keep_frame_memory(frame_bytes: int) -> bool:
    """Frames travel in ZeroMQ messages of their size, allocated in one thread and
    freed in another, which glibc may map and unmap one by one above 128 KiB (an
    mmap, a page fault per 4 KiB, an munmap per frame: with 2 shards at 1400 B
    the sender cost 30-70 % more per packet without this, bench/RESULTS.md).
    Raise malloc's mmap and trim thresholds above ``frame_bytes``; whether
    glibc took them."""
    return _rlib.nzp_keep_frame_memory(frame_bytes) == 0


_bad_index = _rffi.new("uint32_t *")
_RECORD_ERRORS = {
    _rlib.NZP_E_SHORT: "a record runs past the end of the frame",
    _rlib.NZP_E_CAPLEN: "a record is longer than the snapshot length",
    _rlib.NZP_E_ORIGLEN: "a record's original length is below its captured length",
    _rlib.NZP_E_COUNT: "fewer records than the header announces",
    _rlib.NZP_E_TRAILING: "bytes left after the announced records",
}


def _decompress(codec: int, payload: memoryview, raw_len: int, count: int) -> memoryview:
    """Bounded by raw_len (``codec.decompress``)."""
    try:
        return memoryview(_codec.decompress(codec, payload, raw_len))
    except _codec.CodecError as e:
        raise FrameError(e.kind, str(e), count) from None


def decode(buf: bytes | memoryview) -> Frame:
    """Validate a frame and return it, or raise FrameError."""
    mv = memoryview(buf)
    n = len(mv)
    if n < HEADER_SIZE:
        raise FrameError("short", f"frame of {n} bytes is shorter than the {HEADER_SIZE}-byte header")
    (magic, version, flags, codec, id_len, instance, count, seq, pkt_seq, raw_len,
     payload_len) = read_header(mv)
    # the count reported with a rejection (packets known lost): only one that
    # fits the announced area, and at most the records the bytes actually
    # received could hold: a forged header must not inflate the counters
    told = None
    if count * pcap.RECORD_HEADER_SIZE <= raw_len <= MAX_RAW:
        room = max(0, n - HEADER_SIZE - id_len)
        if flags & FLAG_COMPRESSED:
            room *= MAX_EXPANSION
        told = min(count, room // pcap.RECORD_HEADER_SIZE)
    if magic != MAGIC:
        raise FrameError("magic", f"bad magic {bytes(magic)!r} (not an nflog-pipe frame)")
    if version != VERSION:
        raise FrameError(
            "version", f"frame version {version}, this receiver speaks version {VERSION}", told)
    if flags & ~KNOWN_FLAGS:
        raise FrameError("flags", f"unknown flags {flags:#x}", told)
    if n > MAX_FRAME or raw_len > MAX_RAW:
        raise FrameError("oversize", f"frame announces {raw_len} bytes of records, limit {MAX_RAW}", told)
    if n != HEADER_SIZE + id_len + payload_len:
        raise FrameError(
            "length", f"frame is {n} bytes, header announces {HEADER_SIZE + id_len + payload_len}", told)
    if count * pcap.RECORD_HEADER_SIZE > raw_len:
        raise FrameError("count", f"{count} records cannot fit in {raw_len} bytes", told)
    try:
        sender_id = bytes(mv[HEADER_SIZE : HEADER_SIZE + id_len]).decode()
    except UnicodeDecodeError:
        raise FrameError("sender_id", "sender id is not UTF-8", told) from None
    payload = mv[HEADER_SIZE + id_len :]
    if flags & FLAG_COMPRESSED:
        records = _decompress(codec, payload, raw_len, told)
    else:
        if codec != CODEC_NONE:
            raise FrameError("codec", f"codec {codec} on an uncompressed frame", told)
        if payload_len != raw_len:
            raise FrameError("length", "uncompressed frame with payload length != record length", told)
        records = payload
    rc = _rlib.nzp_validate(_rffi.from_buffer(records), raw_len, count, pcap.SNAPLEN, _bad_index)
    if rc:
        raise FrameError(
            "records", f"{_RECORD_ERRORS.get(rc, rc)} (record {_bad_index[0]} of {count})", count)
    return Frame(sender_id, instance, seq, pkt_seq, count, flags, codec, records)
