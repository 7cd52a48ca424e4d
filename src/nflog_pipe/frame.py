"""The wire format: self-describing frames carrying batches of pcap records.

Byte-level description in ``docs/frame-format.md``.  ``decode`` is the only
way bytes from the network become records: it checks the header, bounds every
length before allocating, decompresses within the announced size and has the
C helper verify that the records add up exactly, so a frame is accepted whole
or rejected whole.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from . import pcap
from ._records import ffi as _rffi
from ._records import lib as _rlib

MAGIC = b"NZPF"
VERSION = 1
HEADER = struct.Struct("<4sBBBBIIQQII")
HEADER_SIZE = HEADER.size  # 40

FLAG_COMPRESSED = 0x01
KNOWN_FLAGS = FLAG_COMPRESSED

CODEC_NONE = 0
CODEC_ZLIB = 1

MAX_SENDER_ID = 255
#: Largest frame a receiver accepts (also ZMQ_MAXMSGSIZE on its sockets).
MAX_FRAME = 64 * 1024 * 1024
#: Largest record area a frame may announce (bounds decompression).
MAX_RAW = 64 * 1024 * 1024
MAX_RECORDS = MAX_RAW // pcap.RECORD_HEADER.size


class FrameError(ValueError):
    """A frame that must be rejected whole.  ``kind`` names the check."""

    def __init__(self, kind: str, message: str, count: int | None = None):
        super().__init__(message)
        self.kind = kind
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
    return HEADER.pack(
        MAGIC, VERSION, flags, codec, len(sender_id), instance, count, seq, pkt_seq,
        raw_len, payload_len,
    ) + sender_id


def encode(
    sender_id: str | bytes,
    instance: int,
    seq: int,
    pkt_seq: int,
    count: int,
    records: bytes | memoryview,
    codec: int = CODEC_NONE,
    level: int = 6,
) -> bytes:
    """A whole frame (tests, relays).  The sender packs headers in place."""
    sid = sender_id.encode() if isinstance(sender_id, str) else sender_id
    if len(sid) > MAX_SENDER_ID:
        raise ValueError("sender id longer than 255 bytes")
    if codec == CODEC_NONE:
        payload, flags = bytes(records), 0
    elif codec == CODEC_ZLIB:
        payload, flags = zlib.compress(records, level), FLAG_COMPRESSED
    else:
        raise ValueError(f"unknown codec {codec}")
    return pack_header(sid, instance, seq, pkt_seq, count, len(records), len(payload),
                       flags, codec) + payload


_bad_index = _rffi.new("uint32_t *")
_RECORD_ERRORS = {
    _rlib.NZP_E_SHORT: "a record runs past the end of the frame",
    _rlib.NZP_E_CAPLEN: "a record is longer than the snapshot length",
    _rlib.NZP_E_ORIGLEN: "a record's original length is below its captured length",
    _rlib.NZP_E_COUNT: "fewer records than the header announces",
    _rlib.NZP_E_TRAILING: "bytes left after the announced records",
}


def _decompress(codec: int, payload: memoryview, raw_len: int, count: int) -> memoryview:
    if codec == CODEC_ZLIB:
        d = zlib.decompressobj()
        try:
            out = d.decompress(payload, raw_len)
        except zlib.error as e:
            raise FrameError("decompress", f"zlib payload does not decompress: {e}", count) from None
        if len(out) != raw_len or d.unconsumed_tail or not d.eof or d.unused_data:
            raise FrameError(
                "decompress", "compressed payload does not expand to the announced size", count)
        return memoryview(out)
    raise FrameError("codec", f"unknown codec {codec}", count)


def decode(buf: bytes | memoryview) -> Frame:
    """Validate a frame and return it, or raise FrameError."""
    mv = memoryview(buf)
    n = len(mv)
    if n < HEADER_SIZE:
        raise FrameError("short", f"frame of {n} bytes is shorter than the {HEADER_SIZE}-byte header")
    (magic, version, flags, codec, id_len, instance, count, seq, pkt_seq, raw_len,
     payload_len) = HEADER.unpack_from(mv)
    if magic != MAGIC:
        raise FrameError("magic", f"bad magic {bytes(magic)!r} (not an nflog-pipe frame)")
    if version != VERSION:
        raise FrameError(
            "version", f"frame version {version}, this receiver speaks version {VERSION}", count)
    if flags & ~KNOWN_FLAGS:
        raise FrameError("flags", f"unknown flags {flags:#x}", count)
    if n > MAX_FRAME or raw_len > MAX_RAW:
        raise FrameError("oversize", f"frame announces {raw_len} bytes of records, limit {MAX_RAW}", count)
    if n != HEADER_SIZE + id_len + payload_len:
        raise FrameError(
            "length", f"frame is {n} bytes, header announces {HEADER_SIZE + id_len + payload_len}", count)
    if count * pcap.RECORD_HEADER.size > raw_len:
        raise FrameError("count", f"{count} records cannot fit in {raw_len} bytes", count)
    try:
        sender_id = bytes(mv[HEADER_SIZE : HEADER_SIZE + id_len]).decode()
    except UnicodeDecodeError:
        raise FrameError("sender_id", "sender id is not UTF-8", count) from None
    payload = mv[HEADER_SIZE + id_len :]
    if flags & FLAG_COMPRESSED:
        records = _decompress(codec, payload, raw_len, count)
    else:
        if codec != CODEC_NONE:
            raise FrameError("codec", f"codec {codec} on an uncompressed frame", count)
        if payload_len != raw_len:
            raise FrameError("length", "uncompressed frame with payload length != record length", count)
        records = payload
    rc = _rlib.nzp_validate(_rffi.from_buffer(records), raw_len, count, pcap.SNAPLEN, _bad_index)
    if rc:
        raise FrameError(
            "records", f"{_RECORD_ERRORS.get(rc, rc)} (record {_bad_index[0]} of {count})", count)
    return Frame(sender_id, instance, seq, pkt_seq, count, flags, codec, records)
