"""Rate control with the real kernel: iptables NFLOG in a gateway namespace,
nflog-zmq-send there, relays and nflog-pcap-recv in an ids namespace, a real
FIFO and a real reader.  The receiver is never told about compression."""

import random
import time

import pytest
from conftest import make_payloads, payload_file
from lab import send_udp, wait_until
from nflogref import nflog_payload_count, nflog_payloads, udp_payload

from nflog_pipe import pcap

COMPRESS_PORT, DECOMPRESS_PORT = 5556, 5557
#: queues deep enough for a test's whole burst (the kernel hands over small
#: frames when traffic starts; queue_full drops are counted, but here every
#: packet must arrive)
DEEP = ("--zmq-buffer", "5000")
DEEP_SENDER = ("--zmq-buffer-frames", "5000")


def records(reader) -> list:
    try:
        return pcap.parse(bytes(reader.data))[1]
    except ValueError:  # a record still on its way
        return []


def counters(daemon) -> dict:
    recs = [r for r in daemon.records() if r.get("event") in ("stats", "totals")]
    return recs[-1]["counters"] if recs else {}


def mixed_payloads(n: int, tag: bytes) -> list[bytes]:
    """HTTP-like text most of the time, random bytes (incompressible) too."""
    rnd = random.Random(n)
    text = make_payloads(n, 1400, tag)
    out = []
    for i, p in enumerate(text):
        if i % 4 == 3:
            out.append(tag + rnd.randbytes(rnd.randint(1, 1400)))
        elif i % 4 == 1:
            out.append(tag + (b"GET /x/%d HTTP/1.1\r\nHost: lab.example\r\n"
                              b"Accept: */*\r\n\r\n" % i))
        else:
            out.append(p)
    return out


def check_delivered(recs, payloads, hdr=28):
    assert len(recs) == len(payloads)
    for r, p in zip(recs, payloads, strict=True):
        assert udp_payload(r.data) == p
        assert len(r.data) == hdr + len(p) and r.origlen == hdr + len(p)


def start_chain(pipe, *compress_args, decompress_args=()):
    """compress relay and decompress relay in the ids namespace, in front of
    the receiver (tcp 5555)."""
    comp = pipe.lab.daemon(pipe.ids, "nflog-zmq-compress", f"tcp://0.0.0.0:{COMPRESS_PORT}",
                           f"tcp://127.0.0.1:{DECOMPRESS_PORT}", "--stats-interval", "0.2",
                           *compress_args, tag="c")
    dec = pipe.lab.daemon(pipe.ids, "nflog-zmq-decompress",
                          f"tcp://127.0.0.1:{DECOMPRESS_PORT}", "tcp://127.0.0.1:5555",
                          "--stats-interval", "0.2", *decompress_args, tag="d")
    comp.wait_log("start")
    dec.wait_log("start")
    return comp, dec


def test_a_sender_rate_control_to_a_receiver_without_flags(pipe, tmp_path):
    """(a) --rate-control with a tiny --lwm compresses nearly everything; the
    receiver, started without any flag, writes exactly what the kernel logged
    (checked against tcpdump's own NFLOG capture of the same packets)."""
    pipe.nflog_rule(30, 7401)
    pipe.nflog_rule(31, 7401)  # reference: the same packets for tcpdump
    ref_path = tmp_path / "ref.pcap"
    tcpd = pipe.lab.popen(pipe.gw.prefix() + ["tcpdump", "-i", "nflog:31", "-B", "65536", "-U",
                                             "-w", str(ref_path)],
                          stderr=open(tmp_path / "tcpdump.err", "w"))
    pipe.start_receiver()
    reader = pipe.reader()
    # (--hwm far above what a test sends in a burst: nothing is to be dropped here)
    sender = pipe.start_sender("30", "--rate-control", "--lwm", "0.001", "--hwm", "100",
                               "--compress-delay", "0.05", "--stats-interval", "0.2", *DEEP_SENDER)
    wait_until(lambda: b"listening" in (tmp_path / "tcpdump.err").read_bytes(), what="tcpdump")
    payloads = mixed_payloads(4000, b"a")
    sent = send_udp(pipe.gw, pipe.link.b4, 7401, payload_file(tmp_path / "p", payloads), 50)
    assert sent == len(payloads)
    wait_until(lambda: len(records(reader)) >= sent, timeout=30, what=f"{sent} records")
    time.sleep(0.3)
    out = reader.close()
    wait_until(lambda: nflog_payload_count(ref_path) >= sent, timeout=10, what="tcpdump's capture")
    s = sender.stop()["counters"]
    r = pipe.receiver.stop()["counters"]
    tcpd.terminate()
    tcpd.wait(10)

    info, recs = pcap.parse(out)
    assert info["linktype"] == 101
    check_delivered(recs, payloads)
    assert [x.data for x in recs] == nflog_payloads(ref_path.read_bytes())
    # it really was compressed: all but the first frame or so
    assert s["compressed_packets"] >= sent - 50 and s["compressed_frames"] > 0
    assert s["compressed_bytes"] < s["compressed_raw_bytes"]
    assert s["packets_in"] == s["packets_out"] == sent and s["dropped.hwm"] == 0
    assert r["packets_in"] == r["packets_out"] == sent
    assert r["frames_dropped.malformed"] == 0 and r["dropped.transit"] == 0
    start = next(x for x in sender.records() if x.get("event") == "start")
    assert start["rate_control"]["codec"] == "zlib"


def test_b_chain_sender_compress_decompress_receiver(pipe, tmp_path):
    """(b) sender -> nflog-zmq-compress -> nflog-zmq-decompress -> receiver:
    every packet arrives byte for byte, every stage accounts for all of them."""
    pipe.nflog_rule(32, 7402)
    pipe.nflog_rule(32, 7403, v6=True)
    pipe.start_receiver("--stats-interval", "0.2")
    reader = pipe.reader()
    comp, dec = start_chain(pipe, "--lwm", "0.001", "--hwm", "100", "--codec", "zstd",
                            "--compress-level", "6", "--compress-delay", "0.05", *DEEP,
                            decompress_args=DEEP)
    sender = pipe.start_sender("32", "--stats-interval", "0.2", *DEEP_SENDER,
                               endpoint=f"tcp://{pipe.link.b4}:{COMPRESS_PORT}")
    p4 = mixed_payloads(3000, b"4")
    p6 = mixed_payloads(1000, b"6")
    assert send_udp(pipe.gw, pipe.link.b4, 7402, payload_file(tmp_path / "p4", p4), 50) == 3000
    assert send_udp(pipe.gw, pipe.link.b6, 7403, payload_file(tmp_path / "p6", p6), 50) == 1000
    wait_until(lambda: len(records(reader)) >= 4000, timeout=30, what="4000 records")
    time.sleep(0.3)
    recs = pcap.parse(reader.close())[1]
    check_delivered([x for x in recs if x.data[0] >> 4 == 4], p4)
    check_delivered([x for x in recs if x.data[0] >> 4 == 6], p6, hdr=48)
    s = sender.stop()["counters"]
    c = comp.stop()
    d = dec.stop()["counters"]
    r = pipe.receiver.stop()
    cc, rc = c["counters"], r["counters"]
    assert s["packets_out"] == cc["packets_in"] == d["packets_in"] == rc["packets_out"] == 4000
    assert cc["compressed_packets"] >= 4000 - 50 and cc["compressed_bytes"] < cc[
        "compressed_raw_bytes"]
    assert d["packets_out"] == 4000
    for counts in (cc, d, rc):
        assert sum(v for k, v in counts.items()
                   if k.startswith("dropped.") and not k.endswith("_frames")) == 0
    # the receiver saw the sender's id, numbered by the decompress relay
    assert [k.split("/")[0] for k in r["senders"]] == [
        next(x for x in sender.records() if x.get("event") == "start")["sender_id"]]
    assert list(r["senders"]) != list(c["senders"])  # a relay's own instance


def _drops(c: dict) -> int:
    return sum(v for k, v in c.items() if k.startswith("dropped.") and not k.endswith("_frames"))


@pytest.mark.parametrize("where", ["sender", "relay"])
def test_c_above_hwm_delivered_plus_counted_drops_is_sent(pipe, tmp_path, where):
    """(c) offered load far above --hwm, in the sender (--rate-control) or in
    a compress relay: the excess is dropped and counted; delivered + counted
    drops = sent, exactly, over the whole chain."""
    pipe.nflog_rule(33, 7404)
    pipe.start_receiver("--stats-interval", "0.2")
    reader = pipe.reader()
    watermarks = ["--lwm", "0.05", "--hwm", "0.2", "--wm-interval", "0.1"]
    comp, dec = start_chain(pipe, *(watermarks if where == "relay" else ["--hwm", "0"]))
    sender = pipe.start_sender("33", *(["--rate-control", *watermarks] if where == "sender"
                                       else []), "--stats-interval", "0.2",
                               endpoint=f"tcp://{pipe.link.b4}:{COMPRESS_PORT}")
    payloads = [bytes([i % 251]) * 900 + i.to_bytes(4, "big") for i in range(6000)]
    # about 5.4 MB in well under two seconds: far above 0.2 MiB/s
    sent = send_udp(pipe.gw, pipe.link.b4, 7404, payload_file(tmp_path / "p", payloads), 100)
    assert sent == 6000
    wait_until(lambda: counters(sender).get("packets_in") == sent, timeout=30,
               what="the sender to read everything")
    time.sleep(0.3)
    s = sender.stop()["counters"]
    wait_until(lambda: counters(comp).get("packets_in", 0) >= s["packets_out"], timeout=20,
               what="the compress relay")
    c = comp.stop()["counters"]
    wait_until(lambda: counters(dec).get("packets_in") == c["packets_out"], timeout=20,
               what="the decompress relay")
    d = dec.stop()["counters"]
    wait_until(lambda: counters(pipe.receiver).get("packets_in") == d["packets_out"],
               timeout=20, what="the receiver")
    time.sleep(0.3)
    r = pipe.receiver.stop()["counters"]
    delivered = pcap.parse(reader.close())[1]

    assert s["packets_in"] == sent
    assert (s if where == "sender" else c)["dropped.hwm"] > 0 and len(delivered) > 0
    # well under half got through: 0.2 MiB/s (+ a 0.1 MiB burst) of ~5 MiB offered
    assert len(delivered) < sent / 2
    # each stage: what came in went out or was counted as dropped
    for stage in (s, c, d, r):
        assert stage["packets_in"] == stage["packets_out"] + _drops(stage), stage
    # and end to end, exactly
    assert len(delivered) == r["packets_out"]
    assert len(delivered) + _drops(s) + _drops(c) + _drops(d) + _drops(r) == sent
    # only the excess was dropped: something got through throughout, in order
    got = [int.from_bytes(udp_payload(x.data)[-4:], "big") for x in delivered]
    assert got == sorted(got) and got[-1] > 3000
    for x in delivered:
        p = payloads[int.from_bytes(udp_payload(x.data)[-4:], "big")]
        assert udp_payload(x.data) == p


def test_any_stage_restarts_without_the_others_crashing(pipe, tmp_path):
    pipe.nflog_rule(34, 7405)
    pipe.start_receiver("--stats-interval", "0.2")
    reader = pipe.reader()
    # deep queues: the single-packet frames of a light burst must all fit while a
    # stage is away (queue_full drops are tested elsewhere)
    deep = DEEP
    comp, dec = start_chain(pipe, "--lwm", "0.001", "--hwm", "100", "--compress-delay", "0.05",
                            *deep, decompress_args=deep)
    sender = pipe.start_sender("34", "--stats-interval", "0.2", *DEEP_SENDER,
                               endpoint=f"tcp://{pipe.link.b4}:{COMPRESS_PORT}")
    lab = pipe.lab

    def send(tag: bytes, n: int = 200) -> list[bytes]:
        ps = [tag + i.to_bytes(4, "big") for i in range(n)]
        assert send_udp(pipe.gw, pipe.link.b4, 7405, payload_file(tmp_path / tag.decode(), ps),
                        50) == n
        return ps

    def arrived(ps):
        want = set(ps)
        wait_until(lambda: want <= {udp_payload(x.data) for x in records(reader)}, timeout=30,
                   what=f"{len(ps)} packets after the restart")

    arrived(send(b"first"))
    # the compress relay stops and comes back (the sender keeps queueing)
    comp.stop()
    send(b"while-compress-down", 20)
    comp = lab.daemon(pipe.ids, "nflog-zmq-compress", f"tcp://0.0.0.0:{COMPRESS_PORT}",
                      f"tcp://127.0.0.1:{DECOMPRESS_PORT}", "--lwm", "0.001", "--hwm", "100",
                      "--stats-interval", "0.2", *deep, tag="c2")
    comp.wait_log("start")
    arrived(send(b"after-compress"))
    # the decompress relay crashes (SIGKILL) and comes back
    dec.kill()
    dec = lab.daemon(pipe.ids, "nflog-zmq-decompress", f"tcp://127.0.0.1:{DECOMPRESS_PORT}",
                     "tcp://127.0.0.1:5555", "--stats-interval", "0.2", *deep, tag="d2")
    dec.wait_log("start")
    arrived(send(b"after-decompress"))
    # the receiver restarts (a new reader on the FIFO)
    old_reader_data = reader.close()
    pipe.receiver.stop()
    pipe.start_receiver("--stats-interval", "0.2", tag="r2")
    reader = pipe.reader()
    arrived(send(b"after-receiver"))
    # nobody crashed; every process still runs and stops cleanly
    for d in (sender, comp, dec, pipe.receiver):
        assert d.proc.poll() is None
    assert sender.stop()["counters"]["packets_in"] == 200 * 4 + 20
    comp.stop(), dec.stop(), pipe.receiver.stop()
    recs = pcap.parse(old_reader_data)[1] + pcap.parse(reader.close())[1]
    assert len({udp_payload(x.data) for x in recs}) == len(recs)  # no duplicates
