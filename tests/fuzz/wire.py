"""Frame-level helpers for the fuzz targets: building frames field by field
(valid or deliberately not), reading headers loosely, and an independent
Python reference of the checks in docs/frame-format.md.

The reference is written from the document, not from frame.py, so a target
can compare the two (differential fuzzing): same verdict, same check name.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from nflog_pipe import frame, pcap

HDR = struct.Struct("<4sBBBBIIQQII")
REC = struct.Struct("<IIII")
# field name -> (struct format, offset) in the 40-byte header
FIELDS = {
    "magic": ("<4s", 0), "version": ("<B", 4), "flags": ("<B", 5), "codec": ("<B", 6),
    "id_len": ("<B", 7), "instance": ("<I", 8), "count": ("<I", 12), "seq": ("<Q", 16),
    "pkt_seq": ("<Q", 24), "raw_len": ("<I", 32), "payload_len": ("<I", 36),
}
U32_EDGES = (0, 1, 15, 16, 17, 255, 256, 65535, 65536, 262144, 262145,
             frame.MAX_RAW - 1, frame.MAX_RAW, frame.MAX_RAW + 1,
             0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF)


# -- codecs the harness can produce and check --------------------------------------
# Written from the codec table of docs/frame-format.md / nflog_pipe.codec's
# docstring, with the libraries' streaming interfaces (not the one-shot calls
# codec.py uses), so that the two can disagree.
try:
    import zstandard
except ImportError:
    zstandard = None


def _zlib_expand(payload: bytes, raw_len: int) -> bytes | None:
    """Exactly ``raw_len`` bytes from one complete zlib stream, or None."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, raw_len + 1)
    except zlib.error:
        return None
    clean = d.eof and not d.unused_data and not d.unconsumed_tail
    return out if clean and len(out) == raw_len else None


def _zlib_peek(payload: bytes, limit: int) -> bytes:
    try:
        return zlib.decompressobj().decompress(payload, limit)
    except zlib.error:
        return b""


def _zstd_compress(data: bytes, level: int = 3, size: bool = True, check: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=level, write_content_size=size,
                                    write_checksum=check).compress(data)


def _zstd_expand(payload: bytes, raw_len: int) -> bytes | None:
    """One zstd frame announcing exactly ``raw_len`` bytes, decoding to them,
    nothing after it; or None."""
    try:
        if zstandard.frame_content_size(payload) != raw_len:
            return None
        d = zstandard.ZstdDecompressor().decompressobj()
        out = d.decompress(payload)  # bounded: the decoder holds it to the content size
    except zstandard.ZstdError:
        return None
    return out if d.eof and not d.unused_data and len(out) == raw_len else None


def _zstd_peek(payload: bytes, limit: int) -> bytes:
    try:
        return zstandard.ZstdDecompressor().stream_reader(payload).read(limit)
    except zstandard.ZstdError:
        return b""


class Codec(NamedTuple):
    expand: object  # (payload, raw_len) -> bytes | None: the reference verdict
    peek: object  # (payload, limit) -> whatever comes out, at most limit bytes (mutators)
    #: largest output per payload byte the format allows (bounds the budget)
    max_ratio: int


CODECS: dict[int, Codec] = {frame.CODEC_ZLIB: Codec(_zlib_expand, _zlib_peek, 1032)}
#: ways to make a payload: name -> (codec number, (area, level) -> payload)
ENCODINGS: dict[str, tuple[int, object]] = {
    "none": (frame.CODEC_NONE, lambda a, lvl: a),
    "zlib": (frame.CODEC_ZLIB, lambda a, lvl: zlib.compress(a, min(lvl, 9))),
}
if zstandard is not None and hasattr(frame, "CODEC_ZSTD"):
    # RLE blocks: 128 KiB from 4 bytes
    CODECS[frame.CODEC_ZSTD] = Codec(_zstd_expand, _zstd_peek, 32768)
    ENCODINGS.update({
        "zstd": (frame.CODEC_ZSTD, lambda a, lvl: _zstd_compress(a, lvl)),
        "zstd-no-size": (frame.CODEC_ZSTD, lambda a, lvl: _zstd_compress(a, lvl, size=False)),
        "zstd-no-checksum": (frame.CODEC_ZSTD,
                             lambda a, lvl: _zstd_compress(a, lvl, check=False)),
    })
#: codec numbers no receiver knows
UNKNOWN_CODECS = (0x7F, 0xFF)


# -- reading ------------------------------------------------------------------------
class Header(NamedTuple):
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


def header(data: bytes) -> Header | None:
    """The 40-byte header read as is (no check), or None when too short."""
    if len(data) < HDR.size:
        return None
    return Header(*HDR.unpack_from(data))


def expansion_limit(codec: int, raw_len: int, payload_len: int) -> int:
    """Bytes a correct decoder may allocate expanding a payload: at most 4x
    its output (CPython's growing output blocks, then one join), the output
    being bounded both by raw_len and by what the payload can expand to."""
    if codec not in CODECS:
        return 0
    out = min(raw_len, frame.MAX_RAW) + 1
    return 4 * min(out, CODECS[codec].max_ratio * payload_len + 64)


def expansion_budget(data: bytes) -> int:
    """``expansion_limit`` of a frame (0 when it is not compressed)."""
    h = header(data)
    if h is None or not h.flags & frame.FLAG_COMPRESSED:
        return 0
    return expansion_limit(h.codec, h.raw_len, max(0, len(data) - HDR.size - h.id_len))


def split_frames(data: bytes, limit: int = 32) -> list[bytes]:
    """Cut a byte string into the frames its headers announce (receiver
    target: one input is a sequence of messages); the rest is a last message,
    as is everything after ``limit`` messages."""
    out, off, n = [], 0, len(data)
    while off < n:
        h = header(data[off:off + HDR.size])
        size = HDR.size + h.id_len + h.payload_len if h else n - off
        if h is None or size > n - off or len(out) == limit - 1:
            size = n - off
        out.append(data[off:off + size])
        off += size
    return out


def walk_records(area: bytes, limit: int = 4096) -> list[tuple[int, int, int, int, int]]:
    """(offset, ts_sec, ts_usec, caplen, origlen) of the first ``limit`` whole
    record headers that fit, without judging them (mutators)."""
    out, off = [], 0
    while off + REC.size <= len(area) and len(out) < limit:
        sec, usec, caplen, origlen = REC.unpack_from(area, off)
        out.append((off, sec, usec, caplen, origlen))
        off += REC.size + caplen
    return out


def records_problem(area: bytes | memoryview, count: int) -> str | None:
    """Why a record area is not exactly ``count`` valid records, or None."""
    area = bytes(area)
    off = 0
    for i in range(count):
        if len(area) - off < REC.size:
            return f"record {i}: header past the end"
        _, _, caplen, origlen = REC.unpack_from(area, off)
        if caplen > pcap.SNAPLEN:
            return f"record {i}: caplen {caplen} > snaplen"
        if origlen < caplen:
            return f"record {i}: origlen {origlen} < caplen {caplen}"
        if len(area) - off - REC.size < caplen:
            return f"record {i}: data past the end"
        off += REC.size + caplen
    if off != len(area):
        return f"{len(area) - off} bytes after record {count}"
    return None


def reference_verdict(data: bytes) -> str | None:
    """The check (kind) that rejects ``data`` per docs/frame-format.md, or None."""
    n = len(data)
    h = header(data)
    if h is None:
        return "short"
    if h.magic != frame.MAGIC:
        return "magic"
    if h.version != frame.VERSION:
        return "version"
    if h.flags & ~frame.FLAG_COMPRESSED:
        return "flags"
    if n > frame.MAX_FRAME or h.raw_len > frame.MAX_RAW:
        return "oversize"
    if n != HDR.size + h.id_len + h.payload_len:
        return "length"
    if h.count * REC.size > h.raw_len:
        return "count"
    try:
        data[HDR.size:HDR.size + h.id_len].decode("utf-8")
    except UnicodeDecodeError:
        return "sender_id"
    payload = data[HDR.size + h.id_len:]
    if h.flags & frame.FLAG_COMPRESSED:
        if h.codec not in CODECS:
            return "codec"
        area = CODECS[h.codec].expand(payload, h.raw_len)
        if area is None:
            return "decompress"
    else:
        if h.codec != frame.CODEC_NONE:
            return "codec"
        if h.payload_len != h.raw_len:
            return "length"
        area = payload
    return "records" if records_problem(area, h.count) else None


# -- building -----------------------------------------------------------------------
def area_of(records: list[tuple[int, int, bytes, int]]) -> bytes:
    """A record area from (ts_sec, ts_usec, data, origlen) tuples, as given."""
    return b"".join(REC.pack(s & 0xFFFFFFFF, u & 0xFFFFFFFF, len(d), o & 0xFFFFFFFF) + d
                    for s, u, d, o in records)


def build(area: bytes, count: int, sender_id: bytes = b"gw", encoding: str = "none",
          level: int = 6, instance: int = 1, seq: int = 0, pkt_seq: int = 0,
          **override) -> bytes:
    """A frame around ``area``, its payload made by ``encoding`` (ENCODINGS; or
    an unknown codec number, payload left as is), consistent unless header
    fields are overridden (``override`` names fields of FIELDS)."""
    if isinstance(encoding, int):
        codec, payload = encoding, area
    else:
        codec, make = ENCODINGS[encoding]
        payload = make(area, level)
    flags = frame.FLAG_COMPRESSED if codec != frame.CODEC_NONE else 0
    m32, m64 = 0xFFFFFFFF, (1 << 64) - 1
    out = bytearray(HDR.pack(frame.MAGIC, frame.VERSION, flags, codec & 0xFF,
                             len(sender_id) & 0xFF, instance & m32, count & m32, seq & m64,
                             pkt_seq & m64, len(area) & m32, len(payload) & m32))
    out += sender_id + payload
    return patch(bytes(out), **override)


def patch(data: bytes, **fields) -> bytes:
    """``data`` with header fields replaced (frames shorter than 40 bytes: as is)."""
    if len(data) < HDR.size:
        return data
    out = bytearray(data)
    for name, value in fields.items():
        fmt, off = FIELDS[name]
        if fmt == "<4s":
            out[off:off + 4] = bytes(value)[:4].ljust(4, b"\0")
        else:
            struct.pack_into(fmt, out, off, value & ((1 << (8 * struct.calcsize(fmt))) - 1))
    return bytes(out)


def payload_area(data: bytes, limit: int = 1 << 20) -> bytes | None:
    """The record area of a frame (expanded when compressed), read loosely."""
    h = header(data)
    if h is None:
        return None
    payload = data[HDR.size + h.id_len:]
    if not h.flags & frame.FLAG_COMPRESSED:
        return payload
    if h.codec not in CODECS:
        return None
    return CODECS[h.codec].peek(payload, limit) or None
