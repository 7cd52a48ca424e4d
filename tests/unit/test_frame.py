import struct
import zlib

import pytest

from nflog_pipe import frame, pcap

RECS = pcap.record(1, 2, b"\x45" + b"a" * 39) + pcap.record(3, 4, b"\x60" + b"b" * 59)


def test_round_trip_uncompressed():
    data = frame.encode("gw1", 0xDEADBEEF, 7, 100, 2, RECS)
    f = frame.decode(data)
    assert (f.sender_id, f.instance, f.seq, f.pkt_seq, f.count) == ("gw1", 0xDEADBEEF, 7, 100, 2)
    assert bytes(f.records) == RECS and f.flags == 0
    assert data[:4] == b"NZPF" and data[4] == 1
    assert len(data) == frame.HEADER_SIZE + 3 + len(RECS)


def test_round_trip_zlib():
    data = frame.encode("gw1", 1, 0, 0, 2, RECS, codec=frame.CODEC_ZLIB)
    f = frame.decode(data)
    assert f.flags & frame.FLAG_COMPRESSED and f.codec == frame.CODEC_ZLIB
    assert bytes(f.records) == RECS


def test_empty_frame_is_valid():
    f = frame.decode(frame.encode("", 1, 0, 0, 0, b""))
    assert f.count == 0 and bytes(f.records) == b""


def _kind(data):
    with pytest.raises(frame.FrameError) as e:
        frame.decode(data)
    return e.value.kind


GOOD = frame.encode("gw1", 1, 0, 0, 2, RECS)


def _patch(fmt, off, value, data=GOOD):
    b = bytearray(data)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


@pytest.mark.parametrize("data,kind", [
    (b"", "short"),
    (GOOD[:39], "short"),
    (b"XXXX" + GOOD[4:], "magic"),
    (_patch("<B", 4, 2), "version"),
    (_patch("<B", 5, 0x80), "flags"),
    (GOOD[:-1], "length"),
    (GOOD + b"x", "length"),
    (_patch("<I", 12, 3), "records"),          # count larger than records
    (_patch("<I", 12, 1), "records"),          # bytes left over
    (_patch("<I", 12, 1 << 30), "count"),      # cannot fit
    (_patch("<I", 32, 1 << 30), "oversize"),   # raw_len beyond the limit
    (_patch("<B", 6, 1), "codec"),             # codec on an uncompressed frame
    (_patch("<I", 43 + 8, 300000), "records"),  # caplen > snaplen (first record)
])
def test_rejections(data, kind):
    assert _kind(data) == kind


def test_origlen_below_caplen_rejected():
    bad = bytearray(GOOD)
    struct.pack_into("<I", bad, frame.HEADER_SIZE + 3 + 12, 10)
    assert _kind(bytes(bad)) == "records"


def test_compressed_payload_that_does_not_expand_to_raw_len():
    payload = zlib.compress(RECS + b"extra")
    data = frame.pack_header(b"x", 1, 0, 0, 2, len(RECS), len(payload),
                             frame.FLAG_COMPRESSED, frame.CODEC_ZLIB) + payload
    assert _kind(data) == "decompress"


def test_corrupt_compressed_payload_rejected():
    payload = bytearray(zlib.compress(RECS))
    payload[5] ^= 0xFF
    data = frame.pack_header(b"x", 1, 0, 0, 2, len(RECS), len(payload),
                             frame.FLAG_COMPRESSED, frame.CODEC_ZLIB) + bytes(payload)
    assert _kind(data) in ("decompress", "records")


def test_bomb_is_bounded_by_raw_len():
    """A small payload expanding far beyond what the header announces stops
    at raw_len and is rejected."""
    payload = zlib.compress(bytes(50 << 20))
    data = frame.pack_header(b"x", 1, 0, 0, 1, 1000, len(payload), frame.FLAG_COMPRESSED,
                             frame.CODEC_ZLIB) + payload
    assert _kind(data) == "decompress"


def test_malformed_error_keeps_announced_count():
    with pytest.raises(frame.FrameError) as e:
        frame.decode(_patch("<B", 4, 9))
    assert e.value.count == 2


def test_one_record_header_size_in_c_and_python():
    from nflog_pipe._records import lib

    from nflog_pipe import pcap
    assert lib.NZP_REC_HDR == pcap.RECORD_HEADER_SIZE == pcap.RECORD_HEADER.size


def test_header_fields_in_wire_order():
    h = frame.Header.new(b"gw", instance=7, count=2, seq=3, pkt_seq=4, raw_len=40, payload_len=40)
    data = h.pack(b"gw")
    assert frame.read_header(data) == h and data[frame.HEADER_SIZE:] == b"gw"
    assert data == frame.pack_header(b"gw", 7, 3, 4, 2, 40, 40)
