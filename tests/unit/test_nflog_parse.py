"""The C netlink walker, replaying real NFLOG buffers recorded from the kernel
(tests/fixtures/nflog, truth from tcpdump's own NFLOG reader)."""

import json
import struct
from pathlib import Path

import pytest
from nflog_pipe._nflog import ffi, lib

from nflog_pipe import pcap

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "nflog"
MANIFEST = json.loads((FIX / "manifest.json").read_text())
BUFFERS = sorted(MANIFEST["buffers"])


class Batch:
    def __init__(self, groups, cap=1 << 20, now=(1700000000, 123456)):
        self.mem = ffi.new("unsigned char[]", cap)
        self.b = ffi.new("struct nzp_batch *")
        self.b.out, self.b.cap = self.mem, cap
        self.b.now_sec, self.b.now_usec = now
        self.b.ngroups = len(groups)
        for i, g in enumerate(groups):
            self.b.groups[i] = g

    def parse(self, data: bytes) -> int:
        return lib.nzp_parse(data, len(data), self.b)

    def records(self):
        return list(pcap.iter_records(bytes(ffi.buffer(self.mem, self.b.len))))


def test_every_recorded_buffer_is_in_the_manifest():
    assert BUFFERS and {p.name for p in FIX.glob("*.bin")} == set(BUFFERS)


@pytest.mark.parametrize("name", BUFFERS)
def test_records_match_tcpdump(name):
    meta = MANIFEST["buffers"][name]
    batch = Batch(MANIFEST["recorded_groups"])
    produced = batch.parse((FIX / name).read_bytes())
    expected = meta["packets"]
    assert produced == len(expected) == batch.b.count
    recs = batch.records()
    for rec, exp in zip(recs, expected, strict=True):
        assert rec.data == bytes.fromhex(exp["payload_hex"])
        assert len(rec.data) == exp["payload_len"]
        assert rec.origlen == exp["orig_len"]
        if exp["has_timestamp"]:
            assert (rec.ts_sec, rec.ts_usec) == (exp["timestamp"]["sec"], exp["timestamp"]["usec"])
        else:  # locally generated: the time the buffer was read
            assert (rec.ts_sec, rec.ts_usec) == (1700000000, 123456)
    assert batch.b.no_timestamp == sum(not e["has_timestamp"] for e in expected)
    assert batch.b.malformed == 0 and batch.b.nl_errors == 0
    assert batch.b.len == sum(16 + e["payload_len"] for e in expected)


def test_truncated_packets_keep_original_length():
    exp = [p for b in MANIFEST["buffers"].values() for p in b["packets"] if p["truncated"]]
    assert exp, "the fixtures include packets cut by --nflog-size"
    batch = Batch(MANIFEST["recorded_groups"])
    for name in BUFFERS:
        batch.parse((FIX / name).read_bytes())
    cut = [r for r in batch.records() if len(r.data) < r.origlen]
    assert sorted(r.origlen for r in cut) == sorted(p["orig_len"] for p in exp)


def test_sequence_gap_counts_kernel_losses():
    """Replaying a group's buffers with one left out: the missing packets are
    counted exactly from NFULA_SEQ."""
    by_group = {}
    for name in BUFFERS:
        pk = MANIFEST["buffers"][name]["packets"]
        if len({p["group"] for p in pk}) == 1 and all(p["seq"] is not None for p in pk):
            by_group.setdefault((MANIFEST["buffers"][name]["scenario"], pk[0]["group"]), []).append(name)
    runs = [names for names in by_group.values() if len(names) >= 2]
    assert runs, "fixtures hold a scenario with two buffers of one group"
    names = runs[0]
    batch = Batch(MANIFEST["recorded_groups"])
    skipped = MANIFEST["buffers"][names[0]]["packets"]
    # first packet of the first buffer, then the second buffer: a gap
    first = (FIX / names[0]).read_bytes()
    nlen = struct.unpack_from("<I", first)[0]
    batch.parse(first[:nlen])
    batch.parse((FIX / names[1]).read_bytes())
    assert batch.b.seq_lost == len(skipped) - 1


def test_cut_buffer_is_malformed_not_a_crash():
    data = (FIX / BUFFERS[0]).read_bytes()
    n = len(MANIFEST["buffers"][BUFFERS[0]]["packets"])
    batch = Batch(MANIFEST["recorded_groups"])
    batch.parse(data[: len(data) - 30])
    assert batch.b.malformed == 1
    assert batch.b.count < n
    for r in batch.records():  # what was produced is whole
        assert len(r.data) <= r.origlen


def test_attribute_length_overflow_is_rejected():
    """An nlattr claiming more than its message holds must not be read."""
    data = bytearray((FIX / "ipv4-big-out-1.bin").read_bytes())
    nlen = struct.unpack_from("<I", data)[0]
    # first attribute after nlmsghdr (16) + nfgenmsg (4)
    struct.pack_into("<H", data, 20, 0xFFF0)
    batch = Batch(MANIFEST["recorded_groups"])
    batch.parse(bytes(data[:nlen]))
    assert batch.b.count == 0 and batch.b.malformed == 1


def test_capacity_contract_is_enforced_in_c():
    """If the caller's buffer is too small, the record is refused, not written
    past the end."""
    batch = Batch(MANIFEST["recorded_groups"], cap=64)
    batch.parse((FIX / "ipv4-big-out-0.bin").read_bytes())
    assert batch.b.count == 0 and batch.b.len == 0 and batch.b.malformed == 1


def test_error_and_unknown_messages_are_counted():
    err = struct.pack("<IHHII", 36, 2, 0, 0, 0) + struct.pack("<i", -1) + bytes(16)
    other = struct.pack("<IHHII", 20, (4 << 8) | 1, 0, 0, 0) + bytes(4)
    batch = Batch([0])
    batch.parse(err + other)
    assert batch.b.nl_errors == 1 and batch.b.other_msgs == 1 and batch.b.count == 0

