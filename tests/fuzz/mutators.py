"""Structure-aware mutators for the atheris campaign.

Byte-level mutation alone almost never gets past a compressed payload (a
flipped bit fails the zlib checksum) or a consistent set of lengths, so most
of the time these mutators edit a frame where it matters: one header field
set to an edge value, one record's caplen/origlen, records added, removed or
duplicated, the record area expanded, mutated and re-compressed with another
codec or level.  The rest of the time they let the engine mutate raw bytes.

``set_engine(atheris.Mutate)`` plugs libFuzzer's own byte mutator in; without
it (unit tests) a small random mutator stands in.
"""

from __future__ import annotations

import random

from nflog_pipe import frame, pcap

from . import wire

_engine = None


def set_engine(fn) -> None:
    """Use ``fn(data, max_size) -> bytes`` (atheris.Mutate) for byte mutations."""
    global _engine
    _engine = fn


def mutate_bytes(data: bytes, max_size: int, rng: random.Random) -> bytes:
    if _engine is not None:
        return _engine(data, max_size)
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        pos = rng.randint(0, len(b))
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and b:
            del b[pos:pos + rng.randint(1, 8)]
        elif b:
            b[min(pos, len(b) - 1)] = rng.choice((0, 0xFF, 0x7F, 0x80))
    return bytes(b[:max_size])


_BAD_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80")


def _record_edit(area: bytes, rng: random.Random) -> bytes:
    recs = wire.walk_records(area)
    if not recs:
        return area
    off, _, _, caplen, origlen = rng.choice(recs)
    left = len(area) - off - wire.REC.size
    field = rng.choice((8, 12, 0, 4))
    if field == 8:
        value = rng.choice((0, 1, origlen, origlen + 1, left, left + 1, pcap.SNAPLEN,
                            pcap.SNAPLEN + 1, 0xFFFFFFFF, 0xFFFFFFF0))
    elif field == 12:
        value = rng.choice((0, caplen, caplen - 1, caplen + 1, 65535, 0xFFFFFFFF))
    else:
        value = rng.choice((0, 999999, 1000000, 0xFFFFFFFF, rng.getrandbits(32)))
    b = bytearray(area)
    b[off + field:off + field + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(b)


def _structure_edit(area: bytes, rng: random.Random) -> bytes:
    recs = wire.walk_records(area)
    spans = [(off, off + wire.REC.size + caplen) for off, _, _, caplen, _ in recs]
    op = rng.randrange(4)
    if op == 0 and spans:  # duplicate one
        a, b = rng.choice(spans)
        pos = rng.choice(spans)[0]
        return area[:pos] + area[a:b] + area[pos:]
    if op == 1 and spans:  # remove one
        a, b = rng.choice(spans)
        return area[:a] + area[b:]
    size = rng.choice((0, 1, 20, 40, 1500, 65535, pcap.SNAPLEN))
    data = bytes(rng.getrandbits(8) for _ in range(min(size, 64))).ljust(size, b"\0")
    origlen = size + rng.choice((0, 0, 1, 1000, -1 if size else 0))
    return area + wire.REC.pack(rng.getrandbits(32), rng.randrange(1000000), size, origlen) + data


def mutate_frame(data: bytes, max_size: int, seed: int) -> bytes:
    """atheris custom mutator for one frame."""
    rng = random.Random(seed)
    h = wire.header(data)
    if h is None or h.magic != frame.MAGIC or rng.random() < 0.15:
        out = mutate_bytes(data, max_size, rng)
        if len(out) >= wire.HDR.size and rng.random() < 0.5:
            out = wire.patch(out, magic=frame.MAGIC, version=frame.VERSION)
        return out[:max_size]
    sid = data[wire.HDR.size:wire.HDR.size + h.id_len]
    op = rng.randrange(9)
    if op == 8:  # a decompression bomb, announcing some size
        return _bomb(sid, h, rng)[:max_size]
    if op == 0:  # one header field to an edge value
        name = rng.choice([f for f in wire.FIELDS if f != "magic"])
        value = rng.choice(wire.U32_EDGES + (h.raw_len + 1, h.raw_len - 1, h.count + 1,
                                             h.count - 1, len(data), h.payload_len + 1, 2, 3))
        return wire.patch(data, **{name: value})[:max_size]
    if op == 1:  # the sender identity
        if rng.random() < 0.5:
            sid = mutate_bytes(sid, 255, rng)
        else:
            pos = rng.randint(0, len(sid))
            sid = (sid[:pos] + rng.choice(_BAD_UTF8) + sid[pos:])[:255]
        rest = data[wire.HDR.size + h.id_len:]
        return (wire.patch(data[:wire.HDR.size], id_len=len(sid)) + sid + rest)[:max_size]
    if op == 2:  # truncate or extend
        if rng.random() < 0.5 and data:
            return data[:rng.randrange(len(data))]
        return (data + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16))))[:max_size]
    area = wire.payload_area(data, 1 << 18) or b""
    if op in (3, 4):
        area = _record_edit(area, rng)
    elif op == 5:
        area = _structure_edit(area, rng)
    elif op == 6:
        area = mutate_bytes(area, max(len(area) * 2, 64), rng)
    count = len(wire.walk_records(area)) if rng.random() < 0.85 else h.count
    same = {codec: name for name, (codec, _) in reversed(wire.ENCODINGS.items())}
    if rng.random() < 0.6 and (h.flags & frame.FLAG_COMPRESSED or not h.codec) \
            and h.codec in same:
        encoding = same[h.codec]
    else:
        encoding = rng.choice([*wire.ENCODINGS, *wire.UNKNOWN_CODECS])
    out = wire.build(area, count, sid, encoding, level=rng.choice((0, 1, 6, 9)),
                     instance=h.instance, seq=h.seq, pkt_seq=h.pkt_seq)
    return out[:max_size]


_bombs: dict[tuple[str, int], bytes] = {}


def _bomb(sid: bytes, h: wire.Header, rng: random.Random) -> bytes:
    """A small payload of a compressed run of zeros (which reads as records
    with caplen 0) in a header announcing an edge-case size."""
    encoding = rng.choice([e for e in wire.ENCODINGS if e != "none"])
    size = rng.choice((1 << 12, 1 << 16, 1 << 20))
    key = (encoding, size)
    if key not in _bombs:
        _bombs[key] = wire.ENCODINGS[encoding][1](bytes(size), 9)
    payload = _bombs[key]
    raw_len = rng.choice((0, 1, 16, size - 16, size - 1, size, size + 16, frame.MAX_RAW,
                          frame.MAX_RAW + 1, rng.randrange(size)))
    count = rng.choice((0, 1, raw_len // 16, size // 16))
    codec = wire.ENCODINGS[encoding][0]
    return wire.patch(wire.build(b"", 0, sid, "none", instance=h.instance, seq=h.seq,
                                 pkt_seq=h.pkt_seq),
                      flags=frame.FLAG_COMPRESSED, codec=codec, raw_len=raw_len, count=count,
                      payload_len=len(payload)) + payload


def mutate_frames(data: bytes, max_size: int, seed: int) -> bytes:
    """atheris custom mutator for a sequence of frames (receiver target)."""
    rng = random.Random(seed)
    frames = wire.split_frames(data) or [b""]
    op = rng.randrange(6)
    i = rng.randrange(len(frames))
    if op <= 2:
        frames[i] = mutate_frame(frames[i], max_size, rng.getrandbits(32))
    elif op == 3:
        frames.insert(rng.randrange(len(frames) + 1), frames[i])
    elif op == 4 and len(frames) > 1:
        del frames[i]
    else:  # the next frame of the same sender, with or without a gap
        h = wire.header(frames[-1])
        if h is not None:
            sid = frames[-1][wire.HDR.size:wire.HDR.size + h.id_len]
            area = wire.area_of([(1, 2, b"\x45" + bytes(19), 20)])
            gap = rng.choice((0, 0, 1, 100, 1 << 40))
            frames.append(wire.build(area, 1, sid, instance=h.instance, seq=h.seq + 1,
                                     pkt_seq=h.pkt_seq + h.count + gap))
    return b"".join(frames)[:max_size]
