"""Flow sharding: the symmetric flow hash, fragments, consistent hashing, the
sender's walker writing each record into its shard's area, the receiver's
splitter (both in C, _native/flowhash.h)."""

import ipaddress
import json
import random
import struct
from pathlib import Path

import pytest
from nflog_pipe._nflog import ffi, lib

from nflog_pipe import pcap, shard

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "nflog"
MANIFEST = json.loads((FIX / "manifest.json").read_text())


def v4(src, dst, proto=17, sport=1000, dport=53, frag_off=0, mf=False, payload=b"x" * 20):
    l4 = struct.pack("!HH", sport, dport) + payload if frag_off == 0 else payload
    flags = (0x2000 if mf else 0) | frag_off
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, flags, 64, proto, 0,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + l4


def v6(src, dst, nh=17, sport=1000, dport=53, frag=None, payload=b"x" * 20):
    """frag: None, or (offset in 8-byte units, more fragments)."""
    body = struct.pack("!HH", sport, dport) + payload if not frag or frag[0] == 0 else payload
    if frag is not None:
        body = struct.pack("!BBHI", nh, 0, (frag[0] << 3) | int(frag[1]), 99) + body
        nh = 44
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), nh, 64,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + body


@pytest.mark.parametrize("key", ["addr", "ports"])
def test_both_directions_hash_alike(key):
    rnd = random.Random(1)
    for _ in range(500):
        a, b = (str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(2))
        p, q = rnd.randrange(1, 65536), rnd.randrange(1, 65536)
        assert shard.flow_hash(v4(a, b, 6, p, q), key) == shard.flow_hash(v4(b, a, 6, q, p), key)
        a6, b6 = (str(ipaddress.IPv6Address(rnd.getrandbits(128))) for _ in range(2))
        assert shard.flow_hash(v6(a6, b6, 17, p, q), key) == shard.flow_hash(v6(b6, a6, 17, q, p), key)


def test_addr_key_ignores_ports_and_keeps_the_protocol():
    assert shard.flow_hash(v4("10.0.0.1", "10.0.0.2", 17, 1, 2)) == \
        shard.flow_hash(v4("10.0.0.1", "10.0.0.2", 17, 3, 4))
    assert shard.flow_hash(v4("10.0.0.1", "10.0.0.2", 17)) != \
        shard.flow_hash(v4("10.0.0.1", "10.0.0.2", 6))
    assert shard.flow_hash(v4("10.0.0.1", "10.0.0.2", 17, 1, 2), "ports") != \
        shard.flow_hash(v4("10.0.0.1", "10.0.0.2", 17, 3, 4), "ports")


@pytest.mark.parametrize("key", ["addr", "ports"])
def test_every_fragment_of_a_datagram_hashes_alike(key):
    # IPv4: first fragment (MF, offset 0, carries the ports), middle, last
    frags = [v4("192.0.2.1", "198.51.100.2", 17, 5000, 53, 0, True),
             v4("192.0.2.1", "198.51.100.2", 17, frag_off=185, mf=True),
             v4("192.0.2.1", "198.51.100.2", 17, frag_off=370, mf=False)]
    assert len({shard.flow_hash(f, key) for f in frags}) == 1
    f6 = [v6("2001:db8::1", "2001:db8::2", 17, 5000, 53, (0, True)),
          v6("2001:db8::1", "2001:db8::2", 17, frag=(181, True)),
          v6("2001:db8::1", "2001:db8::2", 17, frag=(362, False))]
    assert len({shard.flow_hash(f, key) for f in f6}) == 1
    if key == "addr":  # and with the unfragmented packets of the flow, both directions
        assert shard.flow_hash(frags[0]) == shard.flow_hash(v4("198.51.100.2", "192.0.2.1", 17))
        assert shard.flow_hash(f6[2]) == shard.flow_hash(v6("2001:db8::2", "2001:db8::1", 17))


def test_recorded_kernel_fragments_stay_together():
    """What NFLOG really delivered (tests/fixtures/nflog/*frag*)."""
    for name, meta in MANIFEST["buffers"].items():
        if "frag" not in name:
            continue
        pkts = [bytes.fromhex(p["payload_hex"]) for p in meta["packets"]]
        assert len(pkts) > 1
        assert len({shard.shard_of(p, 3) for p in pkts}) == 1, name


def test_not_ip_goes_to_shard_0():
    assert shard.shard_of(b"", 4) == 0
    assert shard.shard_of(b"\x45" * 10, 4) == 0
    assert shard.shard_of(b"\x00" * 60, 4) == 0


def test_spread_and_consistency():
    rnd = random.Random(2)
    pkts = [v4(f"10.1.{i // 250}.{i % 250}", "10.2.0.1") for i in range(4000)] + \
           [v6(str(ipaddress.IPv6Address(rnd.getrandbits(128))), "fd00::1") for _ in range(4000)]
    for n in (2, 3, 4):
        counts = [0] * n
        for p in pkts:
            counts[shard.shard_of(p, n)] += 1
        assert all(abs(c - len(pkts) / n) < 0.06 * len(pkts) / n for c in counts), counts
    # adding a shard moves only the flows that go to it: about 1/(N+1)
    for n in (2, 3, 7):
        moved = [(shard.shard_of(p, n), shard.shard_of(p, n + 1)) for p in pkts]
        assert all(b == a or b == n for a, b in moved)
        frac = sum(a != b for a, b in moved) / len(pkts)
        assert abs(frac - 1 / (n + 1)) < 0.03, (n, frac)


def _batch(cap: int, nshards: int):
    """An nzp_batch for the recorded groups with ``nshards`` areas of ``cap`` bytes
    (one: the one-destination area)."""
    mems = [ffi.new("unsigned char[]", cap) for _ in range(nshards)]
    b = ffi.new("struct nzp_batch *")
    b.cap = cap
    if nshards > 1:
        b.nshards = nshards
        for i, m in enumerate(mems):
            b.shard_out[i] = m
    else:
        b.out = mems[0]
    b.ngroups = len(MANIFEST["recorded_groups"])
    for i, g in enumerate(MANIFEST["recorded_groups"]):
        b.groups[i] = g
    return b, mems


def test_walker_writes_each_record_into_its_shard():
    """nzp_parse with 3 shards on recorded kernel buffers: every record once,
    in its flow's shard, in order."""
    b, mems = _batch(1 << 20, 3)
    expected: list[list[bytes]] = [[], [], []]
    for name in sorted(MANIFEST["buffers"]):
        data = (FIX / name).read_bytes()
        lib.nzp_parse(data, len(data), b)
        for p in MANIFEST["buffers"][name]["packets"]:
            pkt = bytes.fromhex(p["payload_hex"])
            expected[shard.shard_of(pkt, 3)].append(pkt)
    assert b.len == 0 and b.count == 0  # the one-destination area is untouched
    for i in range(3):
        recs = list(pcap.iter_records(bytes(ffi.buffer(mems[i], b.shard_len[i]))))
        assert [r.data for r in recs] == expected[i]
        assert b.shard_count[i] == len(expected[i])
    assert sum(b.shard_count[0:3]) == b.packets


def test_splitter_matches_the_walker():
    rnd = random.Random(3)
    pkts = [v4(f"10.9.{rnd.randrange(256)}.{rnd.randrange(256)}", "10.0.0.1", payload=bytes(
        rnd.randrange(100))) for _ in range(300)]
    area = b"".join(pcap.RECORD_HEADER.pack(1, i, len(p), len(p)) + p for i, p in enumerate(pkts))
    parts = shard.Splitter(3).split(memoryview(area), len(pkts))
    for i, (region, count) in enumerate(parts):
        recs = list(pcap.iter_records(bytes(region)))
        assert count == len(recs)
        assert [r.data for r in recs] == [p for p in pkts if shard.shard_of(p, 3) == i]
    assert sum(c for _, c in parts) == len(pkts)


def test_shard_counters_add_to_the_totals():
    from nflog_pipe.metrics import Counters
    c = Counters()
    a, b = shard.ShardCounters(c, 0), shard.ShardCounters(c, 1)
    a.setdefault("packets_out", 0)
    a["packets_out"] += 3
    b["packets_out"] += 4
    b.add("dropped.queue_full", 2)
    assert c == {"packets_out": 7, "shard.0.packets_out": 3, "shard.1.packets_out": 4,
                 "dropped.queue_full": 2, "shard.1.dropped.queue_full": 2}


def _replay(bufs):
    """A datagram socket pair holding ``bufs``, as the kernel hands NFLOG buffers over."""
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    b.setblocking(False)
    for data in bufs:
        a.send(data)
    return a, b


def test_a_full_shard_area_goes_out_and_the_rest_of_its_buffer_follows():
    """nzp_read with 2 shards whose areas are smaller than a buffer's records: a
    record that does not fit stops the walk (status 1, blocked_shard), that shard's
    area is emptied, and the next read goes on in the same buffer.  Every record
    once, in its shard, in order; the sequence tracking does not count the message
    walked again as a loss; nothing counted malformed."""
    names = sorted(MANIFEST["buffers"])
    bufs = [(FIX / n).read_bytes() for n in names] * 4
    expected: list[list[bytes]] = [[], []]
    for n in names * 4:
        for p in MANIFEST["buffers"][n]["packets"]:
            pkt = bytes.fromhex(p["payload_hex"])
            expected[shard.shard_of(pkt, 2)].append(pkt)
    biggest = max(len(d) for d in bufs)
    largest = max(16 + p["payload_len"] for n in names for p in MANIFEST["buffers"][n]["packets"])
    cap = max(biggest // 3, largest)
    b, mems = _batch(cap, 2)
    got: list[list[bytes]] = [[], []]
    ref, ref_mems = _batch(1 << 20, 1)  # the same buffers walked with room to spare
    for data in bufs:
        lib.nzp_parse(data, len(data), ref)
        ref.len = ref.count = 0

    def take(i):
        got[i] += [r.data for r in pcap.iter_records(bytes(ffi.buffer(mems[i], b.shard_len[i])))]
        b.shard_len[i] = b.shard_count[i] = 0

    rbuf = ffi.new("unsigned char[]", 256 * 1024)
    a, sock = _replay(bufs)
    blocked, drained = 0, False
    try:
        for _ in range(100 * len(bufs)):  # bounded: a walk that makes no progress fails
            status = lib.nzp_read(sock.fileno(), rbuf, 256 * 1024, b, 64)
            if status == 1:
                blocked += 1
                assert b.pending and b.pending_off < b.pending
                take(b.blocked_shard)
            elif status == 0:
                drained = True
                break
    finally:
        a.close()
        sock.close()
    take(0)
    take(1)
    assert drained and blocked > 2 and b.pending == 0
    assert got == expected
    # (the replay repeats the buffers: their sequence numbers jump back, the same
    # way for both walks; a message walked twice would count more)
    assert b.malformed == 0 and b.seq_lost == ref.seq_lost and b.recvs == len(bufs)
