"""Hand-made inputs for the regression corpus: each one aims at one check or
one way a parser could be made to over-allocate.

    .venv/bin/python -m tests.fuzz.seeds     # (re)writes corpus/*/seed-*

Deterministic: running it again rewrites the same bytes.  Inputs found by the
fuzzers are named crash-<sha1> (oom-, timeout-, ...) and never rewritten here.
"""

from __future__ import annotations

import zlib

from lab import PKT as V4  # the sample packet (tools/lib/testkit.py)

from nflog_pipe import frame, pcap

from . import wire
from .harness import CORPUS

V6 = bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(15) + b"\x01" + bytes(15) + b"\x01" \
    + bytes.fromhex("303900350008abcd")
RECS = [(1700000000, 1, V4, 29), (1700000001, 2, V6, 48)]
AREA = wire.area_of(RECS)


def _zlib_frame(payload: bytes, raw_len: int, count: int = 0, sid: bytes = b"gw") -> bytes:
    return frame.pack_header(sid, 1, 0, 0, count, raw_len, len(payload),
                             frame.FLAG_COMPRESSED, frame.CODEC_ZLIB) + payload


def frame_seeds() -> dict[str, bytes]:
    good = wire.build(AREA, 2)
    big = wire.area_of([(1, 0, bytes(pcap.SNAPLEN), pcap.SNAPLEN)] * 255)  # just under 64 MiB
    s = {
        "valid-uncompressed": good,
        "valid-zlib": wire.build(AREA, 2, encoding="zlib"),
        "valid-zlib-level0": wire.build(AREA, 2, encoding="zlib", level=0),
        "valid-empty": wire.build(b"", 0),
        "valid-empty-zlib": wire.build(b"", 0, encoding="zlib"),
        "valid-caplen-snaplen": wire.build(wire.area_of([(1, 2, bytes(pcap.SNAPLEN),
                                                          pcap.SNAPLEN)]), 1),
        "valid-caplen-0": wire.build(wire.area_of([(1, 2, b"", 0)]), 1),
        "valid-max-id": wire.build(AREA, 2, b"\xc3\xa9" * 127 + b"x"),
        "valid-zlib-64mib": wire.build(big, 255, encoding="zlib", level=9),
        "empty": b"",
        "truncated-header": good[:39],
        "header-only": good[:40],
        "truncated-records": good[:-5],
        "trailing-byte": good + b"\0",
        "bad-magic": wire.patch(good, magic=b"NZPG"),
        "pcap-magic": pcap.GLOBAL_HEADER_BYTES + bytes(20),
        "version-0": wire.patch(good, version=0),
        "version-2": wire.patch(good, version=2),
        "version-2-huge-count": wire.patch(good, version=2, count=0xFFFFFFFF),
        "unknown-flags": wire.patch(good, flags=0x82),
        "unknown-flags-huge-count": wire.patch(good, flags=0x02, count=0xFFFFFFFF),
        "raw-len-over-limit": wire.patch(good, raw_len=frame.MAX_RAW + 1),
        "raw-len-max-u32": wire.patch(good, raw_len=0xFFFFFFFF),
        "payload-len-max-u32": wire.patch(good, payload_len=0xFFFFFFFF),
        "payload-len-short": wire.patch(good, payload_len=len(AREA) - 1),
        "id-len-past-end": wire.patch(good, id_len=255),
        "count-overflow": wire.patch(good, count=0xFFFFFFFF),
        "count-times-16-wraps-32bit": wire.patch(good, count=0x10000000),
        "count-too-many": wire.patch(good, count=3),
        "count-too-few": wire.patch(good, count=1),
        "count-zero-with-records": wire.patch(good, count=0),
        "bad-utf8-id": wire.build(AREA, 2, b"gw\xff"),
        "surrogate-id": wire.build(AREA, 2, b"\xed\xa0\x80"),
        "overlong-utf8-id": wire.build(AREA, 2, b"\xc0\xaf"),
        "truncated-utf8-id": wire.build(AREA, 2, b"gw\xc3"),
        "caplen-gt-origlen": wire.build(wire.area_of([(1, 2, V4, 28)]), 1),
        "origlen-0": wire.build(wire.area_of([(1, 2, V4, 0)]), 1),
        "caplen-gt-snaplen": wire.build(wire.area_of([(1, 2, bytes(pcap.SNAPLEN + 1),
                                                       pcap.SNAPLEN + 1)]), 1),
        "caplen-past-end": wire.build(AREA[:8] + (1000).to_bytes(4, "little")
                                      + (1000).to_bytes(4, "little") + AREA[16:], 2),
        "caplen-max-u32": wire.build(AREA[:8] + b"\xff\xff\xff\xff" * 2 + AREA[16:], 2),
        "caplen-wraps-offset": wire.build(AREA[:8] + b"\xf0\xff\xff\xff" * 2 + AREA[16:], 2),
        "record-header-cut": wire.build(AREA + bytes(8), 3),
        "codec-on-uncompressed": wire.patch(good, codec=frame.CODEC_ZLIB),
        "unknown-codec": wire.patch(wire.build(AREA, 2, encoding="zlib"), codec=0x7F),
        "compressed-garbage": _zlib_frame(b"\x78\x9c" + bytes(30), len(AREA), 2),
        "compressed-not-zlib": _zlib_frame(AREA, len(AREA), 2),
        "compressed-truncated-stream": _zlib_frame(zlib.compress(AREA)[:-6], len(AREA), 2),
        "compressed-trailing-data": _zlib_frame(zlib.compress(AREA) + b"junk", len(AREA), 2),
        "compressed-two-streams": _zlib_frame(zlib.compress(AREA) + zlib.compress(AREA),
                                              len(AREA), 2),
        "compressed-short-of-raw-len": _zlib_frame(zlib.compress(AREA), len(AREA) + 16, 2),
        "compressed-beyond-raw-len": _zlib_frame(zlib.compress(AREA + bytes(16)), len(AREA), 2),
        # 1 KiB on the wire announcing 64 MiB: must not allocate 64 MiB
        "small-frame-announces-64mib": _zlib_frame(zlib.compress(bytes(1 << 20), 9),
                                                   frame.MAX_RAW, 1),
        # zip bombs: a small payload that expands far beyond the announced size
        "zip-bomb-raw-len-1000": _zlib_frame(zlib.compress(bytes(50 << 20), 9), 1000, 1),
        "zip-bomb-raw-len-0": _zlib_frame(zlib.compress(bytes(8 << 20), 9), 0, 0),
        "zip-bomb-raw-len-1": _zlib_frame(zlib.compress(bytes(8 << 20), 9), 1, 0),
    }
    if "zstd" in wire.ENCODINGS:
        s.update(zstd_seeds())
    return s


def _zstd_frame(payload: bytes, raw_len: int, count: int = 0) -> bytes:
    return frame.pack_header(b"gw", 1, 0, 0, count, raw_len, len(payload),
                             frame.FLAG_COMPRESSED, frame.CODEC_ZSTD) + payload


def zstd_seeds() -> dict[str, bytes]:
    import zstandard

    def z(data, level=3, **kw):
        return zstandard.ZstdCompressor(level=level, **kw).compress(data)

    one = z(AREA, write_checksum=True)
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
    return {
        "valid-zstd": wire.build(AREA, 2, encoding="zstd"),
        "valid-zstd-no-checksum": wire.build(AREA, 2, encoding="zstd-no-checksum"),
        "valid-empty-zstd": wire.build(b"", 0, encoding="zstd"),
        "zstd-no-content-size": wire.build(AREA, 2, encoding="zstd-no-size"),
        "zstd-content-size-lies": _zstd_frame(z(AREA + bytes(16)), len(AREA), 2),
        "zstd-small-frame-announces-64mib": _zstd_frame(z(bytes(frame.MAX_RAW), 19),
                                                        frame.MAX_RAW, 1),
        "zstd-bomb-raw-len-0": _zstd_frame(z(bytes(8 << 20), 19), 0, 0),
        "zstd-bomb-raw-len-1000": _zstd_frame(z(bytes(8 << 20), 19), 1000, 0),
        # 22 bytes claiming 64 MiB of content: must not allocate it
        "zstd-content-size-lies-64mib": _zstd_frame(
            bytes.fromhex("28b52ffda0") + frame.MAX_RAW.to_bytes(4, "little")
            + bytes.fromhex("510000") + b"0123456789", frame.MAX_RAW, 1),
        "zstd-two-frames": _zstd_frame(one + one, len(AREA), 2),
        "zstd-trailing-data": _zstd_frame(one + b"junk", len(AREA), 2),
        "zstd-skippable-first": _zstd_frame(skippable + one, len(AREA), 2),
        "zstd-truncated": _zstd_frame(one[:-5], len(AREA), 2),
        "zstd-bad-checksum": _zstd_frame(one[:-1] + bytes([one[-1] ^ 1]), len(AREA), 2),
        "zstd-garbage": _zstd_frame(b"\x28\xb5\x2f\xfd" + bytes(40), len(AREA), 2),
        "zstd-as-zlib": wire.patch(wire.build(AREA, 2, encoding="zstd"), codec=frame.CODEC_ZLIB),
        "zlib-as-zstd": wire.patch(wire.build(AREA, 2, encoding="zlib"), codec=frame.CODEC_ZSTD),
    }


def receiver_seeds() -> dict[str, bytes]:
    a = [wire.build(AREA, 2, b"gw1", instance=7, seq=i, pkt_seq=2 * i) for i in range(3)]
    b = wire.build(AREA, 2, b"gw2", encoding="zlib", instance=9)
    c = wire.build(AREA, 2, b"gw3", encoding="zstd" if "zstd" in wire.ENCODINGS else "zlib")
    bad = wire.patch(a[1], count=3)
    return {
        "three-senders": a[0] + b + a[1] + c + a[2],
        "gap": a[0] + a[2],
        "reorder": a[1] + a[0],
        "duplicate": a[0] + a[0],
        "bad-between-good": a[0] + bad + a[2],
        "restart-new-instance": a[0] + wire.build(AREA, 2, b"gw1", instance=8),
        "huge-pkt-seq-jump": a[0] + wire.build(AREA, 2, b"gw1", instance=7, seq=1,
                                               pkt_seq=(1 << 64) - 1),
        "bad-utf8-then-good": wire.build(AREA, 2, b"\xff") + a[0],
        "version-2-huge-count": wire.patch(a[0], version=2, count=0xFFFFFFFF),
        "unknown-flags-huge-count": wire.patch(a[0], flags=0x40, count=0xFFFFFFFF),
        "zip-bomb-raw-len-0": _zlib_frame(zlib.compress(bytes(8 << 20), 9), 0, 0),
        "log-injection-id": wire.build(AREA, 2, b"gw\n2024-01-01 ERROR forged\x1b[31m"),
        "truncated-last": a[0] + a[1][:30],
    }


def codec_seeds() -> dict[str, bytes]:
    from .more_targets import codec_input

    z = zlib.compress(AREA)
    out = {
        "zlib": codec_input(frame.CODEC_ZLIB, len(AREA), z),
        "zlib-empty": codec_input(frame.CODEC_ZLIB, 0, zlib.compress(b"")),
        "zlib-raw-len-0-bomb": codec_input(frame.CODEC_ZLIB, 0, zlib.compress(bytes(4 << 20), 9)),
        "zlib-short": codec_input(frame.CODEC_ZLIB, len(AREA) + 1, z),
        "zlib-long": codec_input(frame.CODEC_ZLIB, len(AREA) - 1, z),
        "zlib-raw-deflate": codec_input(frame.CODEC_ZLIB, len(AREA), z[2:-4]),
        "zlib-gzip": codec_input(frame.CODEC_ZLIB, 3, bytes.fromhex(
            "1f8b08000000000000034b4c4a06004b6b8ac203000000")),
        "zlib-preset-dictionary": codec_input(frame.CODEC_ZLIB, 4, bytes.fromhex("78bb") + bytes(8)),
        "unknown-codec": codec_input(0x7F, len(AREA), AREA),
        "codec-none": codec_input(0, len(AREA), AREA),
        "empty": b"",
    }
    if "zstd" in wire.ENCODINGS:
        import zstandard

        one = zstandard.ZstdCompressor(write_checksum=True).compress(AREA)
        out.update({
            "zstd": codec_input(frame.CODEC_ZSTD, len(AREA), one),
            "zstd-empty": codec_input(frame.CODEC_ZSTD, 0,
                                      zstandard.ZstdCompressor().compress(b"")),
            # content size 0 and a block that is not there (found by tests/fuzz)
            "zstd-size-0-garbage": codec_input(frame.CODEC_ZSTD, 0,
                                               bytes.fromhex("28b52ffd2000000100") + b"junk"),
            "zstd-no-size": codec_input(frame.CODEC_ZSTD, len(AREA), zstandard.ZstdCompressor(
                write_content_size=False).compress(AREA)),
            "zstd-window-max": codec_input(frame.CODEC_ZSTD, len(AREA), bytes.fromhex(
                "28b52ffd04f8") + one[6:]),
        })
    return out


def bpf_seeds() -> dict[str, bytes]:
    exprs = {
        "ip": "ip", "udp-port": "udp and port 53", "tcp-syn": "tcp[tcpflags] & tcp-syn != 0",
        "ip6-protochain": "ip6 protochain 6", "net-33": "net 10.0.0.0/33",
        "div-zero": "ip[0] / 0 = 1", "mod-zero": "len % 0 = 1", "index-max": "ip[4294967295] = 1",
        "bad-size": "ip[0:3] = 1", "ether": "ether host 1:2:3:4:5:6", "vlan": "vlan and ip",
        "portrange": "portrange 1-65535", "not-chain": "not " * 200 + "ip",
        "parens": "(" * 300 + "ip" + ")" * 300, "unbalanced": "(" * 50 + "ip",
        "long": " or ".join(f"host 10.0.{i // 256}.{i % 256}" for i in range(120))[:2048],
        "too-long": "ip or " * 500, "nul": "ip\0", "non-ascii": "ip and host \u00e9",
        "empty": "", "spaces": "   ", "name": "host localhost", "service": "port http",
        "icmp-type": "icmp[icmptype] = icmp-echo", "shift": "ip[0] << 40 = 0",
        "gateway": "gateway 1.2.3.4",
    }
    return {k: v.encode("utf-8") for k, v in exprs.items()}


def query_seeds() -> dict[str, bytes]:
    from .more_targets import NOW

    bodies = {
        "empty": b"", "blank": b"  \n", "all": b"{}", "last": b'{"last": 60}',
        "since-until": f'{{"since": {NOW - 100}, "until": {NOW - 50}}}'.encode(),
        "since-after-until": f'{{"since": {NOW}, "until": {NOW - 50}}}'.encode(),
        "last-and-since": b'{"last": 5, "since": 1}', "max-bytes-24": b'{"max_bytes": 24}',
        "max-bytes-23": b'{"max_bytes": 23}', "max-bytes-1000": b'{"max_bytes": 1000}',
        "max-bytes-huge": b'{"max_bytes": 4611686018427387904}',
        "filter": b'{"filter": "udp"}', "filter-window": f'{{"filter": "ip6", "since": {NOW - 200}'
                                                        f', "max_bytes": 3000}}'.encode(),
        "filter-bad": b'{"filter": "ether host 1:2:3:4:5:6"}', "filter-number": b'{"filter": 5}',
        "filter-name": b'{"filter": "host localhost"}', "credit-0": b'{"credit": 0}',
        "credit-65": b'{"credit": 65}', "version-2": b'{"version": 2}',
        "version-true": b'{"version": true}', "nan": b'{"last": NaN}',
        "infinity": b'{"since": Infinity}', "overflow-float": b'{"last": 1e309}',
        "huge-int": b'{"max_bytes": ' + b"9" * 5000 + b"}", "bool": b'{"last": true}',
        "null": b"null", "list": b"[]", "string": b'"x"', "unknown-field": b'{"bogus": 1}',
        "deep-list": b"[" * 100000 + b"]" * 100000, "deep-object": b'{"a":' * 3000 + b"1"
        + b"}" * 3000, "not-utf8": b'{"filter": "\xff"}', "too-long": b" " * 5000 + b"{}",
        "duplicate-keys": b'{"last": 1, "last": -1}', "negative-last": b'{"last": -1}',
        "zero-last": b'{"last": 0}',
    }
    return bodies


SEEDS = {"frame": frame_seeds, "receiver": receiver_seeds, "relay_decompress": receiver_seeds,
         "relay_compress": receiver_seeds, "codec": codec_seeds, "bpf": bpf_seeds,
         "query": query_seeds}


def write_all() -> int:
    n = 0
    for name, make in SEEDS.items():
        d = CORPUS / name
        d.mkdir(parents=True, exist_ok=True)
        for seed, data in make().items():
            (d / f"seed-{seed}").write_bytes(data)
            n += 1
    return n


if __name__ == "__main__":
    print(f"wrote {write_all()} seeds under {CORPUS}")
