"""The core pipeline with the real kernel: iptables NFLOG in a gateway
namespace, nflog-zmq-send there, nflog-pcap-recv in an ids namespace over a
veth link, a real FIFO and real readers."""

import time

from conftest import make_payloads, payload_file
from lab import FifoReader, run, send_udp, wait_until
from nflogref import nflog_payload_count, nflog_payloads, udp_payload

from nflog_pipe import pcap

PORT4, PORT6, PORT_TRUNC = 7001, 7002, 7003


def test_ipv4_ipv6_bit_for_bit(pipe, tmp_path):
    """10 000+ datagrams, sizes 1..MTU and beyond, IPv4 and IPv6 on two groups:
    every one arrives in the FIFO, byte for byte equal to what tcpdump's own
    NFLOG reader saw, in order per family; truncated packets keep their
    original length."""
    pipe.nflog_rule(10, PORT4)
    pipe.nflog_rule(11, PORT6, v6=True)
    pipe.nflog_rule(10, PORT_TRUNC, "--nflog-size", "64")
    # reference: the same packets logged to group 20, read by tcpdump
    pipe.nflog_rule(20, PORT4)
    pipe.nflog_rule(20, PORT6, v6=True)
    ref_path = tmp_path / "ref.pcap"
    tcpd = pipe.lab.popen(pipe.gw.prefix() + ["tcpdump", "-i", "nflog:20", "-B", "65536", "-U",
                                             "-w", str(ref_path)],
                          stderr=open(tmp_path / "tcpdump.err", "w"))
    pipe.start_receiver()
    reader = pipe.reader()
    sender = pipe.start_sender("10,11")
    wait_until(lambda: b"listening" in (tmp_path / "tcpdump.err").read_bytes(), what="tcpdump")

    big = [bytes([i]) * n for i, n in enumerate((2000, 9000, 30000, 65507))]
    p4 = make_payloads(6000, 1472, b"v4") + big
    p6 = make_payloads(4000, 1452, b"v6") + [b"\x07" * 20000, b"\x08" * 65527]
    trunc = [bytes([i]) * 1000 for i in range(10)]
    assert send_udp(pipe.gw, pipe.link.b4, PORT4, payload_file(tmp_path / "p4", p4), 50) == len(p4)
    assert send_udp(pipe.gw, pipe.link.b6, PORT6, payload_file(tmp_path / "p6", p6), 50) == len(p6)
    assert send_udp(pipe.gw, pipe.link.b4, PORT_TRUNC, payload_file(tmp_path / "pt", trunc)) == 10
    total = len(p4) + len(p6) + len(trunc)

    def records():
        try:
            return pcap.parse(bytes(reader.data))[1]
        except ValueError:  # a record still on its way
            return []
    wait_until(lambda: len(records()) >= total, timeout=30, what=f"{total} records")
    time.sleep(0.3)
    out = reader.close()
    # the reference group has the kernel's default 1 s flush timeout
    wait_until(lambda: nflog_payload_count(ref_path) >= len(p4) + len(p6), timeout=10,
               what="the tcpdump reference capture")
    send_totals = sender.stop()["counters"]
    recv_totals = pipe.receiver.stop()["counters"]
    tcpd.terminate()
    tcpd.wait(10)

    info, recs = pcap.parse(out)
    assert info == {"version": (2, 4), "snaplen": 262144, "linktype": 101}
    assert out[:4] == b"\xd4\xc3\xb2\xa1"  # explicit little-endian header
    assert len(recs) == total
    v4 = [r for r in recs if r.data[0] >> 4 == 4]
    v6 = [r for r in recs if r.data[0] >> 4 == 6]
    # the --nflog-size 64 rule: cut to 64 bytes, original length from the header
    trunc_recs = [r for r in v4 if udp_payload(r.data)[:1] == b"\x00" and len(r.data) == 64
                  or (len(r.data) == 64 and r.origlen == 1028)]
    assert len(trunc_recs) == 10 and all(r.origlen == 1028 for r in trunc_recs)
    full4 = [r for r in v4 if r not in trunc_recs]
    for recs_f, sent, hdr in ((full4, p4, 28), (v6, p6, 48)):
        assert len(recs_f) == len(sent)
        for r, p in zip(recs_f, sent, strict=True):
            # NFLOG copies at most 65531 bytes (0xFFFF less the attribute header)
            assert len(r.data) == min(hdr + len(p), 65531)
            assert r.origlen == hdr + len(p)
            assert udp_payload(r.data) == p[: len(r.data) - hdr]

    ref = nflog_payloads(ref_path.read_bytes())
    ref4 = [d for d in ref if d[0] >> 4 == 4]
    ref6 = [d for d in ref if d[0] >> 4 == 6]
    assert [r.data for r in full4] == ref4
    assert [r.data for r in v6] == ref6

    assert send_totals["packets_in"] == total and send_totals["packets_out"] == total
    assert send_totals["dropped.kernel_overrun"] == 0 and send_totals["dropped.queue_full"] == 0
    assert recv_totals["packets_in"] == total and recv_totals["packets_out"] == total
    (tmp_path / "out.copy.pcap").write_bytes(out)
    r = run("tcpdump", "-n", "-r", str(tmp_path / "out.copy.pcap"))
    assert len(r.stdout.splitlines()) == total


def test_two_senders_one_receiver(pipe, tmp_path):
    gw2 = pipe.lab.netns("gw2")
    link2 = pipe.lab.link(gw2, pipe.ids)
    pipe.nflog_rule(3, PORT4)
    pipe.nflog_rule(3, PORT4, ns=gw2, dst=link2.b4)
    pipe.start_receiver()
    reader = pipe.reader()
    s1 = pipe.start_sender("3", "--sender-id", "gw-one")
    s2 = pipe.start_sender("3", "--sender-id", "gw-two", ns=gw2,
                           endpoint=f"tcp://{link2.b4}:5555")
    a = make_payloads(1500, 1400, b"A")
    b = make_payloads(1500, 1400, b"B")
    import threading
    t = threading.Thread(target=send_udp, args=(gw2, link2.b4, PORT4,
                                                payload_file(tmp_path / "b", b), 50))
    t.start()
    send_udp(pipe.gw, pipe.link.b4, PORT4, payload_file(tmp_path / "a", a), 50)
    t.join()
    wait_until(lambda: _count(reader) >= 3000, timeout=20, what="3000 records")
    recs = pcap.parse(reader.close())[1]
    got = [udp_payload(r.data) for r in recs]
    assert [p for p in got if p[:1] == b"A"] == [p for p in a if p[:1] == b"A"]
    assert [p for p in got if p[:1] == b"B"] == [p for p in b if p[:1] == b"B"]
    assert len(got) == 3000
    s1.stop(), s2.stop()
    totals = pipe.receiver.stop()
    assert set(k.split("/")[0] for k in totals["senders"]) == {"gw-one", "gw-two"}


def _count(reader) -> int:
    try:
        return len(pcap.parse(bytes(reader.data))[1])
    except ValueError:
        return 0


def test_reader_leaves_and_new_reader_gets_a_valid_stream(pipe, tmp_path):
    pipe.nflog_rule(4, PORT4)
    pipe.start_receiver()
    first = pipe.reader()
    sender = pipe.start_sender("4")
    send_udp(pipe.gw, pipe.link.b4, PORT4, payload_file(tmp_path / "a", [b"first"] * 20))
    wait_until(lambda: _count(first) == 20, what="20 records for the first reader")
    first.close()
    # the receiver notices the reader left, then a new reader attaches
    pipe.receiver.wait_log("reader_detached")
    second = pipe.reader()
    pipe.receiver.wait_log("reader_attached", readers=2)
    send_udp(pipe.gw, pipe.link.b4, PORT4, payload_file(tmp_path / "b", [b"second"] * 30))
    wait_until(lambda: _count(second) == 30, what="30 records for the second reader")
    data = second.close()
    info, recs = pcap.parse(data)
    assert info["linktype"] == 101
    assert {udp_payload(r.data) for r in recs} == {b"second"}
    sender.stop()
    totals = pipe.receiver.stop()["counters"]
    assert totals["packets_out"] == 50 and totals["dropped.output"] == 0


def test_no_reader_for_a_while_then_a_reader(pipe, tmp_path):
    pipe.nflog_rule(5, PORT4)
    pipe.start_receiver("--stats-interval", "0.2")
    sender = pipe.start_sender("5")
    send_udp(pipe.gw, pipe.link.b4, PORT4, payload_file(tmp_path / "a", [b"unread"] * 40))
    wait_until(lambda: _recv_counter(pipe, "dropped.output") == 40, what="40 output drops")
    reader = pipe.reader()
    pipe.receiver.wait_log("reader_attached")
    send_udp(pipe.gw, pipe.link.b4, PORT4, payload_file(tmp_path / "b", [b"read"] * 25))
    wait_until(lambda: _count(reader) == 25, what="25 records")
    recs = pcap.parse(reader.close())[1]
    assert {udp_payload(r.data) for r in recs} == {b"read"}
    sender.stop()
    totals = pipe.receiver.stop()["counters"]
    assert totals["packets_in"] == 65
    assert totals["dropped.output"] == 40 and totals["packets_out"] == 25


def _recv_counter(pipe, name):
    """Ask the receiver for a summary record (SIGUSR1 would be nicer; the
    stats interval is short in these tests)."""
    recs = [r for r in pipe.receiver.records() if r.get("event") in ("stats", "totals")]
    return recs[-1]["counters"].get(name) if recs else None


def test_receiver_down_sender_survives_and_counts(pipe, tmp_path):
    pipe.nflog_rule(6, PORT4)
    sender = pipe.start_sender("6", "--zmq-buffer-frames", "3", "--batch-size", "4",
                               "--libnflog-qthresh", "1")
    # receiver down: 3 frames queue, one more batch (4 KiB) waits, the rest
    # is dropped and counted
    sent = send_udp(pipe.gw, pipe.link.b4, PORT4,
                    payload_file(tmp_path / "a", [b"early" * 100] * 200), pace=1)
    time.sleep(0.5)
    # the reader waits on the FIFO first, so the queued frames find it attached
    reader = FifoReader(pipe.fifo)
    pipe.start_receiver("--stats-interval", "0.2")
    reader.opened.wait(10)
    wait_until(lambda: _recv_counter(pipe, "packets_in"), what="receiver stats")
    send_udp(pipe.gw, pipe.link.b4, PORT4, payload_file(tmp_path / "b", [b"late"] * 5), pace=1)
    wait_until(lambda: _count(reader) >= 5, what="late records")
    time.sleep(0.5)
    s = sender.stop()["counters"]
    rt = pipe.receiver.stop()["counters"]
    recs = pcap.parse(reader.close())[1]
    early = [r for r in recs if udp_payload(r.data) == b"early" * 100]
    assert s["packets_in"] == sent + 5
    assert s["dropped.queue_full"] > 0
    assert len(early) + s["dropped.queue_full"] == sent
    assert rt["packets_in"] == s["packets_out"]


def test_malformed_frames_are_rejected_and_counted(pipe, tmp_path):
    import pickle
    import sys

    from nflog_pipe import frame
    pipe.nflog_rule(7, PORT4)
    pipe.start_receiver("--stats-interval", "0.2")
    reader = pipe.reader()
    sender = pipe.start_sender("7")
    send_udp(pipe.gw, pipe.link.b4, PORT4, payload_file(tmp_path / "a", [b"before"] * 5))
    wait_until(lambda: _count(reader) == 5, what="5 records")
    good = frame.encode("evil", 1, 0, 0, 1, pcap.record(0, 0, b"E" * 40))
    bad = [
        b"garbage",
        b"XXXX" + good[4:],
        good[:4] + b"\x09" + good[5:],       # version 9
        good[:-5],                            # truncated
        good[:12] + b"\xff\x00\x00\x00" + good[16:],  # count 255
        good + b"trailing",
    ]
    # a raw ZeroMQ socket in the gateway namespace (a helper process)
    code = ("import zmq,sys,pickle; c=zmq.Context(); s=c.socket(zmq.PUSH); s.linger=2000;"
            f"s.connect('{pipe.endpoint}');"
            "[s.send(m) for m in pickle.load(sys.stdin.buffer)]; s.close(); c.term()")
    p = pipe.lab.popen(pipe.gw.prefix() + [sys.executable, "-c", code], stdin=-1)
    p.communicate(pickle.dumps(bad), timeout=20)
    wait_until(lambda: _recv_counter(pipe, "frames_dropped.malformed") == len(bad),
               what="malformed frames counted")
    send_udp(pipe.gw, pipe.link.b4, PORT4, payload_file(tmp_path / "b", [b"after"] * 5))
    wait_until(lambda: _count(reader) == 10, what="10 records")
    recs = pcap.parse(reader.close())[1]
    assert [udp_payload(r.data) for r in recs] == [b"before"] * 5 + [b"after"] * 5
    sender.stop()
    log = pipe.receiver.records()
    totals = pipe.receiver.stop()
    kinds = {r.get("kind") for r in log if r.get("event") == "malformed_frame"}
    assert {"malformed.short", "malformed.magic", "malformed.version", "malformed.length",
            "malformed.count"} <= kinds
    assert totals["counters"]["frames_dropped.malformed"] == len(bad)
    assert totals["counters"]["packets_out"] == 10
