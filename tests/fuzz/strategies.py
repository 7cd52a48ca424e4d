"""Hypothesis strategies: frames that are valid, nearly valid, or broken in
one chosen place, so that every check of ``frame.decode`` is reached (plain
random bytes would stop at the magic)."""

from __future__ import annotations

from hypothesis import strategies as st
from lab import PKT  # the sample packet (tools/lib/testkit.py)

from nflog_pipe import pcap

from . import wire

u32 = st.one_of(st.sampled_from(wire.U32_EDGES), st.integers(0, 0xFFFFFFFF))
u64 = st.one_of(st.sampled_from((0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)),
                st.integers(0, (1 << 64) - 1))

ip_headers = st.sampled_from((
    PKT,  # IPv4 UDP
    bytes.fromhex("4500002800004000400600007f0000017f000001") + bytes(20),  # IPv4 TCP
    bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(15) + b"\x01" + bytes(15) + b"\x01"
    + bytes(8),  # IPv6 UDP
    b"",
))


@st.composite
def packet_data(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:  # big and compressible: makes small frames expand a lot
        return bytes(draw(st.sampled_from((65535, 200000, pcap.SNAPLEN, pcap.SNAPLEN + 1))))
    head = draw(ip_headers)
    return head + draw(st.binary(max_size=48))


@st.composite
def records(draw) -> tuple[int, int, bytes, int]:
    data = draw(packet_data())
    delta = draw(st.one_of(st.just(0), st.integers(0, 1 << 16), st.integers(-2, -1)))
    origlen = max(0, len(data) + delta) if draw(st.integers(0, 19)) else draw(u32)
    return draw(u32), draw(st.integers(0, 999999)), data, origlen


sender_ids = st.one_of(
    st.text(max_size=24).map(lambda s: s.encode()[:255]),
    st.binary(max_size=8),
    st.sampled_from((b"\xff", b"gw\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"x" * 255)),
)


@st.composite
def frames(draw) -> bytes:
    """One frame: consistent by default, then (sometimes) broken in places."""
    recs = draw(st.lists(records(), max_size=5))
    area = wire.area_of(recs)
    encoding = draw(st.sampled_from(sorted(wire.ENCODINGS)))
    count = len(recs)
    override = {}
    for name in ("count", "raw_len", "payload_len", "id_len", "flags", "codec", "version"):
        if draw(st.integers(0, 11)) == 0:
            value = draw(st.one_of(u32, st.integers(-1, 1).map(
                lambda d, name=name: _consistent(name, area, count) + d)))
            override[name] = value
    data = wire.build(area, count, draw(sender_ids), encoding,
                      level=draw(st.sampled_from((0, 1, 6, 9))),
                      instance=draw(u32), seq=draw(u64), pkt_seq=draw(u64))
    data = wire.patch(data, **override)
    damage = draw(st.integers(0, 9))
    if damage == 0:  # flip bytes
        b = bytearray(data)
        for pos, val in draw(st.lists(st.tuples(st.integers(0, max(0, len(b) - 1)),
                                                st.integers(0, 255)), max_size=4)):
            if b:
                b[pos] = val
        data = bytes(b)
    elif damage == 1:  # cut
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == 2:  # extra bytes
        data += draw(st.binary(min_size=1, max_size=16))
    return data


def _consistent(name: str, area: bytes, count: int) -> int:
    return {"count": count, "raw_len": len(area), "payload_len": len(area)}.get(name, 1)


#: a sequence of messages for the receiver: frames of a few senders, some
#: continuing each other's sequence numbers, some broken, concatenated
frame_sequences = st.lists(frames(), min_size=1, max_size=4).map(b"".join)
