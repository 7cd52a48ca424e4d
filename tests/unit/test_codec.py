"""Codecs: byte-identical round trips; corrupt, lying or oversized compressed
payloads rejected, and decompression never producing more than announced."""

import os
import random
import struct
import tracemalloc
import zlib

import pytest
import zstandard

from nflog_pipe import codec, frame, pcap

CODECS = [(codec.ZLIB, lvl) for lvl in (1, 6, 9)] + [(codec.ZSTD, lvl) for lvl in (1, 3, 19)]


def realistic_area(n: int = 200, seed: int = 1) -> bytes:
    """Records with HTTP-like text and random payloads behind IPv4 headers."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3:
            body = (f"GET /item/{rnd.randrange(10**6)} HTTP/1.1\r\nHost: shop.example\r\n"
                    f"User-Agent: test/{i % 5}\r\nAccept: */*\r\n\r\n").encode() * rnd.randint(1, 8)
        else:
            body = rnd.randbytes(rnd.randint(1, 1400))
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + len(body), i, 0, 64, 17, 0,
                         b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02") + struct.pack(
            ">HHHH", 40000, 80, 8 + len(body), 0)
        out.append(pcap.record(1700000000 + i, i, ip + body))
    return b"".join(out)


AREA = realistic_area()


@pytest.mark.parametrize("cdc,level", CODECS)
@pytest.mark.parametrize("data", [b"", b"x", AREA, os.urandom(70000), bytes(300000)])
def test_round_trip_is_byte_identical(cdc, level, data):
    payload = codec.Compressor(cdc, level).compress(data)
    assert codec.decompress(cdc, payload, len(data)) == data


@pytest.mark.parametrize("cdc,level", CODECS)
def test_frame_round_trip(cdc, level):
    count = len(list(pcap.iter_records(AREA)))
    data = frame.encode("gw", 9, 3, 77, count, AREA, codec=cdc, level=level)
    f = frame.decode(data)
    assert f.flags == frame.FLAG_COMPRESSED and f.codec == cdc
    assert bytes(f.records) == AREA and f.count == count and f.pkt_seq == 77
    assert len(data) < len(AREA)


def test_text_compresses_well_random_does_not_grow_much():
    text = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>" * 150
    for cdc, level in CODECS:
        assert len(codec.compress(cdc, text, level)) < len(text) / 10
        rnd = os.urandom(100000)
        assert len(codec.compress(cdc, rnd, level)) < len(rnd) * 1.01


# -- hostile payloads --------------------------------------------------------------

def _rejects(cdc, payload, raw_len, kind="decompress"):
    with pytest.raises(codec.CodecError) as e:
        codec.decompress(cdc, payload, raw_len)
    assert e.value.kind == kind
    return e.value


@pytest.mark.parametrize("cdc", [codec.ZLIB, codec.ZSTD])
def test_every_single_byte_corruption_is_rejected_or_harmless(cdc):
    payload = codec.compress(cdc, AREA[:4000])
    rejected = 0
    for i in range(len(payload)):
        bad = bytearray(payload)
        bad[i] ^= 0x5A
        try:
            out = codec.decompress(cdc, bytes(bad), 4000)
        except codec.CodecError:
            rejected += 1
        else:  # a padding bit: never different data (both formats carry a checksum)
            assert out == AREA[:4000]
    assert rejected >= len(payload) - 2


@pytest.mark.parametrize("cdc", [codec.ZLIB, codec.ZSTD])
def test_truncated_trailing_and_wrong_size_are_rejected(cdc):
    payload = codec.compress(cdc, AREA)
    _rejects(cdc, payload[:-1], len(AREA))
    _rejects(cdc, payload[: len(payload) // 2], len(AREA))
    _rejects(cdc, payload + b"\0", len(AREA))
    _rejects(cdc, payload + payload, len(AREA))
    _rejects(cdc, payload, len(AREA) - 1)
    _rejects(cdc, payload, len(AREA) + 1)
    _rejects(cdc, b"", len(AREA))
    _rejects(cdc, b"not compressed at all", 21)


@pytest.mark.parametrize("cdc", [codec.ZLIB, codec.ZSTD])
def test_decompression_bomb_is_bounded(cdc):
    """64 MiB of zeros announced as 1000 bytes: rejected without ever
    holding more than a little memory."""
    bomb = codec.compress(cdc, bytes(64 << 20), 1)
    tracemalloc.start()
    try:
        _rejects(cdc, bomb, 1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def _set_zstd_content_size(payload: bytes, size: int) -> bytes:
    """Rewrite the Frame_Content_Size field of a zstd frame header."""
    fhd = payload[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    off = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    assert width == 4, "test expects a 4-byte content size field"
    return payload[:off] + size.to_bytes(4, "little") + payload[off + 4:]


def test_zstd_frame_lying_about_its_size_is_bounded():
    real = codec.compress(codec.ZSTD, bytes(4 << 20), 1)
    lying = _set_zstd_content_size(real, 70000)
    assert zstandard.frame_content_size(lying) == 70000
    tracemalloc.start()
    try:
        _rejects(codec.ZSTD, lying, 70000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_zstd_without_content_size_is_rejected():
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(AREA)
    assert "announces -1" in str(_rejects(codec.ZSTD, no_size, len(AREA)))


def test_zstd_frame_asking_for_a_huge_window_costs_no_more_than_raw_len():
    params = zstandard.ZstdCompressionParameters(window_log=27, compression_level=1)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = bytes(1 << 20)
    streamed = cobj.compress(data) + cobj.flush()  # 128 MiB window, no content size
    assert streamed[4] == 0  # frame header descriptor: no size field, window byte follows
    crafted = (streamed[:4] + bytes([2 << 6]) + streamed[5:6] + len(data).to_bytes(4, "little")
               + streamed[6:])
    assert zstandard.get_frame_parameters(crafted).window_size == 1 << 27
    tracemalloc.start()
    try:
        assert codec.decompress(codec.ZSTD, crafted, len(data)) == data
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(data) + (64 << 10), peak


def test_unknown_codec():
    assert _rejects(7, b"xx", 2, kind="codec")


def test_frame_decode_maps_codec_errors():
    payload = codec.compress(codec.ZSTD, AREA)
    count = len(list(pcap.iter_records(AREA)))
    hdr = frame.pack_header(b"gw", 1, 0, 0, count, len(AREA) + 5, len(payload),
                            frame.FLAG_COMPRESSED, frame.CODEC_ZSTD)
    with pytest.raises(frame.FrameError) as e:
        frame.decode(hdr + payload)
    assert e.value.kind == "decompress" and e.value.count == count
    hdr = frame.pack_header(b"gw", 1, 0, 0, count, len(AREA), len(payload),
                            frame.FLAG_COMPRESSED, 9)
    with pytest.raises(frame.FrameError) as e:
        frame.decode(hdr + payload)
    assert e.value.kind == "codec"
    # records that do not add up after a correct decompression
    bad_area = AREA[:-1]
    payload = codec.compress(codec.ZLIB, bad_area)
    hdr = frame.pack_header(b"gw", 1, 0, 0, count, len(bad_area), len(payload),
                            frame.FLAG_COMPRESSED, frame.CODEC_ZLIB)
    with pytest.raises(frame.FrameError) as e:
        frame.decode(hdr + payload)
    assert e.value.kind == "records"


@pytest.mark.parametrize("text,ok", [("zlib", codec.ZLIB), ("zstd", codec.ZSTD),
                                     ("none", None), ("lz4", None)])
def test_parse_name(text, ok):
    if ok is None:
        with pytest.raises(ValueError):
            codec.parse_name(text)
    else:
        assert codec.parse_name(text) == ok


def test_levels():
    assert codec.check(codec.ZLIB, None) == 6 and codec.check(codec.ZSTD, None) == 3
    for cdc, bad in ((codec.ZLIB, 0), (codec.ZLIB, 10), (codec.ZSTD, 20)):
        with pytest.raises(ValueError, match="out of range"):
            codec.check(cdc, bad)


def test_zlib_stream_is_plain_zlib():
    """Frames are readable by any zlib implementation (documented format)."""
    assert zlib.decompress(codec.compress(codec.ZLIB, AREA)) == AREA
    assert zstandard.ZstdDecompressor().decompress(codec.compress(codec.ZSTD, AREA)) == AREA
