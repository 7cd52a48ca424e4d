"""Every packet delivered or counted as dropped, with the reason, on the side
where it was lost; statsd carries the same numbers."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import payload_file
from lab import ROOT, send_udp, wait_until

from nflog_pipe import pcap

TOOLS = ROOT / "tests" / "tools"


def statsd_values(path) -> dict:
    """Sum of counter deltas and last gauge values per metric name."""
    out: dict = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        value, _, kind = rest.partition("|")
        kind = kind.split("|")[0]
        if kind == "c":
            out[name] = out.get(name, 0) + int(value)
        elif kind == "g":
            out[name] = float(value)
    return out


def records(reader) -> list:
    try:
        return pcap.parse(bytes(reader.data))[1]
    except ValueError:
        return []


def test_statsd_counters_match_what_was_sent_and_written(pipe, tmp_path):
    sink_file = tmp_path / "statsd.txt"
    sink = pipe.lab.popen(pipe.ids.prefix() + [sys.executable, str(TOOLS / "statsd_sink.py"),
                                               "0.0.0.0", "8125", str(sink_file), "120"])
    pipe.nflog_rule(2, 7300)
    pipe.start_receiver("-m", "127.0.0.1:8125", "-n", "lab.", "--statsd-interval", "0.2")
    reader = pipe.reader()
    sender = pipe.start_sender("2", "-m", f"{pipe.link.b4}:8125", "-n", "lab.",
                               "--statsd-interval", "0.2")
    sent = send_udp(pipe.gw, pipe.link.b4, 7300, payload_file(tmp_path / "p", [b"m" * 100] * 777))
    wait_until(lambda: len(records(reader)) == sent, what=f"{sent} records")
    sender.stop()
    pipe.receiver.stop()
    written = len(pcap.parse(reader.close())[1])
    wait_until(lambda: statsd_values(sink_file).get("lab.recv.packets_out") == written,
               what="receiver counters in statsd")
    v = statsd_values(sink_file)
    assert v["lab.send.packets_in"] == v["lab.send.packets_out"] == sent == 777
    assert v["lab.send.bytes_out"] == 777 * 128  # IPv4 + UDP headers + 100 bytes
    assert v["lab.recv.packets_in"] == v["lab.recv.packets_out"] == written == 777
    assert v.get("lab.send.dropped.queue_full", 0) == 0
    assert "lab.send.netlink_rcvbuf" in v and "lab.recv.output_pending_bytes" in v
    os.kill(sink.pid, signal.SIGTERM)


def test_kernel_overrun_counted_exactly(pipe, tmp_path):
    """A tiny socket buffer and a sender that cannot read (stopped) during a
    burst: the kernel drops, NFLOG sequence numbers say how many."""
    pipe.nflog_rule(3, 7301)
    pipe.start_receiver()
    reader = pipe.reader()
    sender = pipe.start_sender("3", "--libnflog-nlbufsiz", "0.0625",
                               "--libnflog-nlbufsiz-max", "0.0625")
    burst = pipe.burst_while_stopped(sender, 7301,
                                     payload_file(tmp_path / "burst", [b"b" * 1000] * 3000))
    time.sleep(0.5)
    # packets after the loss reveal the gap in the sequence numbers
    after = send_udp(pipe.gw, pipe.link.b4, 7301, payload_file(tmp_path / "after", [b"a"] * 10))
    wait_until(lambda: sum(1 for r in records(reader) if r.data[-1:] == b"a") == after,
               what="records sent after the burst")
    s = sender.stop()["counters"]
    r = pipe.receiver.stop()["counters"]
    delivered = len(pcap.parse(reader.close())[1])
    assert s["dropped.kernel_overrun"] > 0 and s["kernel_enobufs"] > 0
    assert s["packets_in"] == burst + after
    assert s["packets_in"] == s["packets_out"] + s["dropped.kernel_overrun"]
    assert r["packets_out"] == delivered == s["packets_out"]
    log = [x for x in sender.records() if x.get("event") == "kernel_overrun"]
    assert log and "ENOBUFS" in log[0]["message"]


def test_transit_loss_between_stages_counted_exactly(pipe, tmp_path):
    """Frames lost on the link into the receiver (a lossy forwarder) show up
    as dropped.transit, exactly the packets those frames carried."""
    pipe.nflog_rule(4, 7302)
    pipe.start_receiver()
    reader = pipe.reader()
    fwd = pipe.lab.popen(pipe.ids.prefix() + [sys.executable, str(TOOLS / "lossy_forwarder.py"),
                                              "tcp://0.0.0.0:5600", "tcp://127.0.0.1:5555",
                                              "1,3,4,8"], stdout=subprocess.PIPE, text=True)
    sender = pipe.start_sender("4", "--libnflog-qthresh", "1",
                               endpoint=f"tcp://{pipe.link.b4}:5600")
    sent = 0
    for i in range(12):  # one datagram at a time: about one frame each
        sent += send_udp(pipe.gw, pipe.link.b4, 7302, payload_file(tmp_path / f"p{i}", [b"t"] * 3))
        time.sleep(0.05)
    s = sender.stop()["counters"]
    wait_until(lambda: len(records(reader)) >= s["packets_out"] - 12, what="records")
    time.sleep(0.5)
    fwd.send_signal(signal.SIGTERM)
    f = json.loads(fwd.communicate(timeout=20)[0])
    r = pipe.receiver.stop()["counters"]
    delivered = len(pcap.parse(reader.close())[1])
    assert f["frames_lost"] == 4 and f["packets_lost"] > 0
    assert s["packets_out"] == sent == f["packets_forwarded"] + f["packets_lost"]
    assert r["dropped.transit"] == f["packets_lost"]
    assert r["packets_in"] == r["packets_out"] + r["dropped.transit"] == sent
    assert delivered == f["packets_forwarded"]
