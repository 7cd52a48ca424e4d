"""Fuzz targets of the modules around the frame path: payload codecs, the
relays, query requests and BPF filter expressions (both from the network).

Each target is one function; its input format, strategy and mutator are next
to it.  ``isolate=True``: libpcap resolves host and network names while it
compiles a filter, so these targets run only without network (``unshare -n``,
see run.py and bench/fuzz.py): no fuzzed name ever reaches a DNS server.
"""

from __future__ import annotations

import json
import random
import struct

from hypothesis import strategies as st
from lab import PKT  # the sample packet (tools/lib/testkit.py)

from nflog_pipe import bpf, codec, frame, pcap, query, ring
from nflog_pipe.metrics import Counters
from nflog_pipe.ratecontrol import RateController
from nflog_pipe.relay import COMPRESS, DECOMPRESS, Relay

from . import mutators, strategies, wire
from .harness import budget, target
from .targets import check_frame, strict_logs

# -- codec.decompress -------------------------------------------------------------------
# input: codec number (1 byte), raw_len (4 bytes LE, taken modulo MAX_RAW + 1:
# frame.decode never passes more), payload
CODEC_IN = struct.Struct("<BI")


def codec_input(cid: int, raw_len: int, payload: bytes) -> bytes:
    return CODEC_IN.pack(cid & 0xFF, raw_len & 0xFFFFFFFF) + payload


@st.composite
def codec_inputs(draw) -> bytes:
    area = draw(st.one_of(st.binary(max_size=300),
                          st.sampled_from((1 << 10, 1 << 16, 1 << 20)).map(bytes)))
    name = draw(st.sampled_from(sorted(wire.ENCODINGS)))
    cid, make = wire.ENCODINGS[name]
    payload = make(area, draw(st.sampled_from((1, 6, 9))))
    if draw(st.integers(0, 5)) == 0:
        cid = draw(st.integers(0, 255))
    raw_len = len(area) + draw(st.sampled_from((0, 0, 0, -1, 1, 16)))
    if draw(st.integers(0, 5)) == 0:
        raw_len = draw(st.sampled_from(wire.U32_EDGES))
    if draw(st.integers(0, 4)) == 0 and payload:
        b = bytearray(payload)
        b[draw(st.integers(0, len(b) - 1))] ^= draw(st.integers(1, 255))
        payload = bytes(b)
    if draw(st.integers(0, 6)) == 0:
        payload = payload[:draw(st.integers(0, len(payload)))] + draw(st.binary(max_size=8))
    return codec_input(cid, max(raw_len, 0), payload)


def mutate_codec(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if len(data) < CODEC_IN.size or rng.random() < 0.2:
        return mutators.mutate_bytes(data, max_size, rng)
    cid, raw_len = CODEC_IN.unpack_from(data)
    payload = data[CODEC_IN.size:]
    op = rng.randrange(5)
    if op == 0:
        raw_len = rng.choice(wire.U32_EDGES + (raw_len + 1, raw_len - 1, 0))
    elif op == 1:
        cid = rng.choice((0, 1, 2, 3, 0x7F, 0xFF))
    elif op == 2:  # re-encode what it expands to, maybe changed
        area = wire.CODECS[cid].peek(payload, 1 << 18) if cid in wire.CODECS else payload
        area = mutators.mutate_bytes(area, max(2 * len(area), 64), rng)
        cid, make = wire.ENCODINGS[rng.choice([e for e in wire.ENCODINGS if e != "none"])]
        payload = make(area, rng.choice((1, 6, 9)))
        raw_len = len(area) + rng.choice((0, 0, 0, 1, -1))
    elif op == 3:
        size = rng.choice((1 << 12, 1 << 20, 4 << 20))
        name = rng.choice([e for e in wire.ENCODINGS if e != "none"])
        cid, make = wire.ENCODINGS[name]
        payload = make(bytes(size), 9)
        raw_len = rng.choice((0, 1, size - 1, size, size + 1, frame.MAX_RAW))
    else:
        payload = mutators.mutate_bytes(payload, max_size - CODEC_IN.size, rng)
    return codec_input(cid, max(raw_len, 0), payload)[:max_size]


@target("codec", strategy=codec_inputs(), mutator=mutate_codec, max_len=200_000)
def fuzz_codec(data: bytes) -> None:
    """codec.decompress: exactly raw_len bytes the reference agrees with, or
    CodecError; never more memory than the output can need."""
    if len(data) < CODEC_IN.size:
        return
    cid, raw_len = CODEC_IN.unpack_from(data)
    raw_len %= frame.MAX_RAW + 1
    payload = data[CODEC_IN.size:]
    out = err = None
    with budget(wire.expansion_limit(cid, raw_len, len(payload)), "codec.decompress"):
        try:
            out = codec.decompress(cid, payload, raw_len)
        except codec.CodecError as e:
            err = e
    ref = wire.CODECS[cid].expand(payload, raw_len) if cid in wire.CODECS else None
    if err is not None:
        assert err.kind in ("codec", "decompress"), err.kind
        assert err.kind == ("decompress" if cid in wire.CODECS else "codec"), \
            f"codec {cid}: {err.kind}"
        assert ref is None, f"codec {cid} rejected a payload the reference expands: {err}"
        return
    assert len(out) == raw_len, f"{len(out)} bytes out, {raw_len} announced"
    assert ref is not None, "codec accepted a payload the reference rejects"
    assert bytes(out) == ref


# -- the relays ---------------------------------------------------------------------------
class _Push:
    """Stands in for the relay's PUSH socket: keeps what is sent."""

    def __init__(self):
        self.sent: list[bytes] = []

    def send(self, data, flags=0, copy=True):
        self.sent.append(bytes(data))


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _relay_target(mode: str, data: bytes) -> None:
    c = Counters()
    clock = _Clock()
    rc = None
    if mode == COMPRESS:  # compress from the first byte on, no hwm drops
        rc = RateController(1.0, 0.0, 1 << 20, delay=0.05, batch_bytes=1 << 16, clock=clock)
    relay = Relay(mode, rc, c)
    relay.push = _Push()
    accepted: dict[str, list[bytes]] = {}
    for msg in wire.split_frames(data):
        clock.now += 0.01
        with strict_logs(), budget(wire.expansion_budget(msg) + (1 << 17), f"{mode} relay"):
            relay.handle(memoryview(msg), "fuzz")
            relay.tick(clock.now)
        try:
            f = frame.decode(msg)
        except frame.FrameError:
            continue
        accepted.setdefault(f.sender_id, []).append(bytes(f.records))
    if rc is not None:
        for out in rc.flush():
            relay._send(out)
    got: dict[str, list[bytes]] = {}
    packets = 0
    for out in relay.push.sent:
        f = frame.decode(out)  # every frame a relay sends is valid
        check_frame(out, f)
        assert f.instance == relay.out.instance
        got.setdefault(f.sender_id, []).append(bytes(f.records))
        packets += f.count
    for sid in set(accepted) | set(got):
        assert b"".join(got.get(sid, [])) == b"".join(accepted.get(sid, [])), \
            f"records of {sid!r} changed on the way through the {mode} relay"
    assert c["packets_out"] == packets and c["frames_out"] == len(relay.push.sent)


@target("relay_decompress", strategy=strategies.frame_sequences,
        mutator=mutators.mutate_frames, max_len=600_000)
def fuzz_relay_decompress(data: bytes) -> None:
    """Relay(decompress).handle: sends exactly the accepted records, as valid frames."""
    _relay_target(DECOMPRESS, data)


@target("relay_compress", strategy=strategies.frame_sequences,
        mutator=mutators.mutate_frames, max_len=600_000)
def fuzz_relay_compress(data: bytes) -> None:
    """Relay(compress) with rate control: the same records, squashed and compressed."""
    _relay_target(COMPRESS, data)


# -- BPF filter expressions ----------------------------------------------------------------
TOKENS = (
    "ip", "ip6", "tcp", "udp", "icmp", "icmp6", "sctp", "igmp", "pim", "esp", "ah", "vrrp",
    "host", "net", "port", "portrange", "src", "dst", "and", "or", "not", "&&", "||", "!",
    "(", ")", "[", "]", ":", "len", "less", "greater", "proto", "protochain", "broadcast",
    "multicast", "vlan", "mpls", "pppoes", "geneve", "ether", "arp", "rarp", "gateway",
    "mask", "ip[0]", "ip[2:2]", "tcp[13]", "tcp[tcpflags]", "tcp-syn", "tcp-ack",
    "icmp[icmptype]", "icmp-echo", "ip6[6]", "udp[8:4]", "&", "|", "+", "-", "*", "/", "%",
    "^", "<<", ">>", "=", "==", "!=", "<", ">", "<=", ">=", "0", "1", "8", "80", "65535",
    "65536", "4294967295", "4294967296", "0x45", "0xffffffff", "127.0.0.1", "10.0.0.0/8",
    "10/8", "192.168.1", "::1", "fe80::/10", "2001:db8::/129", "1.2.3.4/33", "ifname",
    "on", "reason", "rulenum", "action", "wlan", "type", "subtype", "inbound", "outbound",
    "localhost", "http", "domain", "ip proto \\tcp", "ip6 protochain 6", "len >= 0",
)
PACKETS = (
    PKT,
    bytes.fromhex("450000280000400040060000" "0a0000010a000002") + struct.pack(">HHIIBBHHH",
                                                                           40000, 80, 1, 0,
                                                                           0x50, 0x02,
                                                                           1024, 0, 0),
    bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(15) + b"\x01" + bytes(15) + b"\x01"
    + bytes.fromhex("303900350008abcd"),
    b"\x45", b"", bytes(60),
)

bpf_expressions = st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join) \
    .map(lambda s: s.encode())


def mutate_tokens(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = data.decode("latin-1").split(" ") if data else []
    op = rng.randrange(5)
    if op == 0 or not words:
        words.insert(rng.randint(0, len(words)), rng.choice(TOKENS))
    elif op == 1:
        words[rng.randrange(len(words))] = rng.choice(TOKENS)
    elif op == 2:
        del words[rng.randrange(len(words))]
    elif op == 3:
        i = rng.randrange(len(words))
        words[i:i] = words[i:i + rng.randint(1, 4)]
    else:
        return mutators.mutate_bytes(data, max_size, rng)
    return " ".join(words).encode("latin-1", "replace")[:max_size]


def _check_filter(expr: str) -> bpf.Filter | None:
    try:
        flt = bpf.Filter(expr)
    except bpf.FilterError:
        return None
    assert len(flt) > 0
    results = [flt.match(p) for p in PACKETS]
    assert all(isinstance(r, bool) for r in results)
    again = bpf.Filter(expr)
    assert len(again) == len(flt) and [again.match(p) for p in PACKETS] == results
    return flt


@target("bpf", strategy=bpf_expressions, mutator=mutate_tokens, max_len=4096, isolate=True)
def fuzz_bpf(data: bytes) -> None:
    """bpf.Filter on any expression: compiles or FilterError, and runs on packets."""
    with budget(1 << 20, "bpf.Filter"):
        _check_filter(data.decode("latin-1"))


# -- query requests -------------------------------------------------------------------------
NOW = 1_700_001_000.0
_ring = None


def query_ring() -> tuple[ring.Ring, list[tuple[int, pcap.Record, bytes]]]:
    """A receiver buffer holding 300 packets over 300 s (some evicted)."""
    global _ring
    if _ring is None:
        r = ring.Ring(48 << 10, Counters(), block=8192)
        rng = random.Random(7)
        for i in range(30):
            recs = []
            for j in range(10):
                pkt = rng.choice(PACKETS[:3] + (bytes(rng.randrange(1400)),))
                recs.append(pcap.record(int(NOW) - 300 + 10 * i + j, rng.randrange(10**6), pkt))
            r.append(b"".join(recs), len(recs))
        kept = []
        for v in r.snapshot().views:
            area = bytes(v.data)[v.offsets[v.first]:] if v.first < v.count else b""
            for rec in pcap.iter_records(area):
                raw = pcap.record(rec.ts_sec, rec.ts_usec, rec.data, rec.origlen)
                kept.append((rec.ts_sec * 10**6 + rec.ts_usec, rec, raw))
        _ring = (r, kept)
    return _ring


_VALUES = (None, 0, 1, -1, 0.5, 1e-300, 1e300, 2**32, 2**62, 2**64, 10**400, True, "", "x",
           [], {}, NOW - 100, NOW, NOW + 1, 24, 23, 25, 100, 1 << 20, 65, 64, float("nan"))
_FIELDS = ("version", "last", "since", "until", "max_bytes", "filter", "credit", "bogus")


@st.composite
def query_bodies(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:  # deep nesting, long strings
        n = draw(st.sampled_from((10, 1000, 100000)))
        return draw(st.sampled_from((b"[" * n + b"]" * n, b'{"filter": "' + b"a" * n + b'"}',
                                     b'{"a":' * n + b"1" + b"}" * n)))
    obj = {}
    for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=4, unique=True)):
        if name == "filter":
            obj[name] = draw(bpf_expressions).decode()
        else:
            obj[name] = draw(st.one_of(st.sampled_from(_VALUES), st.floats(), st.integers()))
    text = json.dumps(obj)
    if draw(st.integers(0, 9)) == 0:
        text = text.replace('"', "'", 1)
    return text.encode()


def mutate_query(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict) or rng.random() < 0.2:
        return mutators.mutate_bytes(data, max_size, rng)
    name = rng.choice(_FIELDS)
    if name == "filter" and rng.random() < 0.7:
        obj[name] = mutate_tokens(str(obj.get("filter", "")).encode(), 256,
                                  rng.getrandbits(32)).decode("latin-1")
    elif rng.random() < 0.2:
        obj.pop(name, None)
    else:
        obj[name] = rng.choice(_VALUES)
    return json.dumps(obj).encode()[:max_size]


def _expected(kept, lo: int | None, hi: int | None, flt, max_bytes: int | None) -> bytes:
    sel = [raw for ts, rec, raw in kept
           if (lo is None or ts >= lo) and (hi is None or ts < hi)
           and (flt is None or flt.match(rec.data, rec.origlen))]
    if max_bytes is not None:
        room, k = max_bytes - 24, len(sel)
        while k and len(sel[k - 1]) <= room:
            room -= len(sel[k - 1])
            k -= 1
        sel = sel[k:]
    return b"".join(sel)


@target("query", strategy=query_bodies(), mutator=mutate_query, max_len=8192, isolate=True)
def fuzz_query(data: bytes) -> None:
    """query.parse_request + filter + buffer selection: RequestError/FilterError,
    or exactly the buffered records the request names."""
    r, kept = query_ring()
    with budget(4 << 20, "query request"):
        try:
            req = query.parse_request(data)
            flt = bpf.Filter(req.filter) if req.filter else None
        except (query.RequestError, bpf.FilterError):
            return
        lo, hi = req.window_us(NOW)
        sel = ring.Selection(r.snapshot(), lo, hi, req.max_bytes, flt)
        while not sel.plan(budget=8192):
            pass
        pieces = []
        while (piece := sel.next_piece()) is not None:
            pieces.append(bytes(piece))
    assert query.parse_request(req.encode()) == req, "a request does not survive encode()"
    assert req.credit >= 1 and (req.max_bytes is None or req.max_bytes >= 24)
    got = b"".join(pieces)
    assert got == _expected(kept, lo, hi, flt, req.max_bytes), "wrong records selected"
    assert sel.bytes == len(got) and sel.records == len(list(pcap.iter_records(got)))
