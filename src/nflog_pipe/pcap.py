"""pcap encoding: one well-defined header, records as the C helpers write them.

Every output is little-endian, microsecond resolution, LINKTYPE_RAW (101):
the packet data starts with the IPv4 or IPv6 header, which Snort, Suricata,
tcpdump and tshark all read.  The record layout is the one of the "record
area" produced by the sender (see ``_native/nflog.h``), so frames are written
to the output as they are, without per-packet work.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

MAGIC_USEC = 0xA1B2C3D4
LINKTYPE_RAW = 101
SNAPLEN = 262144
RECORD_HEADER = struct.Struct("<IIII")  # ts_sec, ts_usec, caplen, origlen
#: the record header size; in C, NZP_REC_HDR (_native/record.h)
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 16
GLOBAL_HEADER = struct.Struct("<IHHiIII")


def global_header(snaplen: int = SNAPLEN, linktype: int = LINKTYPE_RAW) -> bytes:
    """The 24-byte pcap file header, always little-endian."""
    return GLOBAL_HEADER.pack(MAGIC_USEC, 2, 4, 0, 0, snaplen, linktype)


GLOBAL_HEADER_BYTES = global_header()


def ip_original_length(data: bytes | memoryview) -> int:
    """Original length of an IP packet from its header (the C helper's rule)."""
    n = len(data)
    if n >= 4 and data[0] >> 4 == 4:
        ol = (data[2] << 8) | data[3]
    elif n >= 6 and data[0] >> 4 == 6 and ((data[4] << 8) | data[5]):
        ol = ((data[4] << 8) | data[5]) + 40
    else:
        ol = n
    return max(ol, n)


def record(ts_sec: int, ts_usec: int, data: bytes, origlen: int | None = None) -> bytes:
    """One pcap record (header and data)."""
    if origlen is None:
        origlen = ip_original_length(data)
    return RECORD_HEADER.pack(ts_sec, ts_usec, len(data), origlen) + bytes(data)


@dataclass(frozen=True, slots=True)
class Record:
    ts_sec: int
    ts_usec: int
    origlen: int
    data: bytes

    @property
    def ts(self) -> float:
        return self.ts_sec + self.ts_usec / 1e6


def iter_records(area: bytes | memoryview, swap: bool = False) -> Iterator[Record]:
    """Records of a record area (or of a pcap body).  Not for the data path."""
    fmt = struct.Struct(">IIII") if swap else RECORD_HEADER
    mv = memoryview(area)
    off = 0
    while off + RECORD_HEADER_SIZE <= len(mv):
        sec, usec, caplen, origlen = fmt.unpack_from(mv, off)
        off += RECORD_HEADER_SIZE
        if off + caplen > len(mv):
            raise ValueError(f"truncated record at offset {off - RECORD_HEADER_SIZE}")
        yield Record(sec, usec, origlen, bytes(mv[off : off + caplen]))
        off += caplen
    if off != len(mv):
        raise ValueError(f"{len(mv) - off} trailing bytes after the last record")


def parse(blob: bytes) -> tuple[dict, list[Record]]:
    """Parse a whole pcap file (tests, the query client)."""
    if len(blob) < 24:
        raise ValueError("shorter than a pcap header")
    magic = struct.unpack_from("<I", blob)[0]
    if magic == MAGIC_USEC:
        swap = False
    elif magic == 0xD4C3B2A1:
        swap = True
    else:
        raise ValueError(f"not a microsecond pcap (magic {magic:#x})")
    hdr = struct.unpack_from(">IHHiIII" if swap else "<IHHiIII", blob)
    info = {"version": (hdr[1], hdr[2]), "snaplen": hdr[5], "linktype": hdr[6]}
    return info, list(iter_records(memoryview(blob)[24:], swap))
