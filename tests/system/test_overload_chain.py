"""Every loss of a chain forced at once, and where every packet went.

gateway: nflog-zmq-send (tiny socket buffer, stopped during a burst: kernel
overrun) -> ids: nflog-zmq-compress (tiny --hwm: rate-control drops) -> a
lossy link (loses two frames: transit loss) -> nflog-pcap-recv (no FIFO
reader at first: output drops), then a reader.  Each stage's counters must
add up, the stages must agree with each other, and sent = delivered + every
counted drop, exactly."""

import json
import signal
import subprocess
import sys
import time

from conftest import payload_file
from lab import ROOT, FifoReader, send_udp, wait_until

from nflog_pipe import pcap

TOOLS = ROOT / "tests" / "tools"


def _stats(d):
    recs = [r for r in d.records() if r.get("event") in ("stats", "totals")]
    return recs[-1]["counters"] if recs else {}


def test_where_every_packet_went(pipe, tmp_path, capsys):
    pipe.nflog_rule(30, 7600)
    pipe.start_receiver("--stats-interval", "0.2")
    fwd = pipe.lab.popen(pipe.ids.prefix() + [sys.executable, str(TOOLS / "lossy_forwarder.py"),
                                              "tcp://127.0.0.1:5602", "tcp://127.0.0.1:5555", "1,2"],
                         stdout=subprocess.PIPE, text=True)
    relay = pipe.lab.daemon(pipe.ids, "nflog-zmq-compress", "tcp://0.0.0.0:5601",
                            "tcp://127.0.0.1:5602", "--lwm", "0.01", "--hwm", "0.05",
                            "--wm-interval", "0.02", "--compress-delay", "0.05")
    relay.wait_log("start")
    sender = pipe.start_sender("30", "--libnflog-nlbufsiz", "0.0625", "--libnflog-nlbufsiz-max",
                               "0.0625", endpoint=f"tcp://{pipe.link.b4}:5601")
    # phase 1, no FIFO reader: a burst the stopped sender cannot read
    sent = pipe.burst_while_stopped(sender, 7600,
                                    payload_file(tmp_path / "burst", [b"B" * 1000] * 3000))
    time.sleep(1.0)
    # phase 2, a reader: steady traffic above --hwm
    reader = FifoReader(pipe.fifo)
    reader.opened.wait(10)
    sent += send_udp(pipe.gw, pipe.link.b4, 7600,
                     payload_file(tmp_path / "steady", [b"s" * 200] * 600), pace=5)
    time.sleep(0.5)
    s = sender.stop()["counters"]
    r = relay.stop()["counters"]
    time.sleep(0.5)
    fwd.send_signal(signal.SIGTERM)
    f = json.loads(fwd.communicate(timeout=20)[0])
    wait_until(lambda: _stats(pipe.receiver).get("packets_in", -1)
               == f["packets_forwarded"] + f["packets_lost"], timeout=20, what="receiver caught up")
    x = pipe.receiver.stop()["counters"]
    delivered = len(pcap.parse(reader.close())[1])

    g = lambda c, k: c.get(k, 0)  # noqa: E731
    rows = [
        ("nflog-zmq-send", s["packets_in"], s["packets_out"],
         {k: g(s, f"dropped.{k}") for k in ("kernel_overrun", "queue_full", "hwm")}),
        ("nflog-zmq-compress", r["packets_in"], r["packets_out"],
         {k: g(r, f"dropped.{k}") for k in ("transit", "malformed", "hwm", "queue_full")}),
        ("lossy link (test)", r["packets_out"], f["packets_forwarded"], {"lost": f["packets_lost"]}),
        ("nflog-pcap-recv", x["packets_in"], x["packets_out"],
         {k: g(x, f"dropped.{k}") for k in ("transit", "malformed", "output")}),
    ]
    table = ["| stage | packets in | packets out | dropped, by reason |", "|---|---:|---:|---|"]
    for name, pin, pout, drops in rows:
        table.append(f"| {name} | {pin} | {pout} | "
                     + ", ".join(f"{k} {v}" for k, v in drops.items() if v) + " |")
    table.append(f"| FIFO reader | {delivered} | | sent by the generator: {sent} |")
    with capsys.disabled():
        print("\n" + "\n".join(table))
    (tmp_path / "overload-table.md").write_text("\n".join(table) + "\n")

    # each stage adds up
    for name, pin, pout, drops in rows:
        assert pin == pout + sum(drops.values()), (name, pin, pout, drops)
    # the stages agree: what one passed on, the next took in (or counted lost)
    assert s["packets_in"] == sent
    assert r["packets_in"] == s["packets_out"]
    assert x["packets_in"] == f["packets_forwarded"] + x["dropped.transit"]
    assert x["dropped.transit"] == f["packets_lost"]
    assert delivered == x["packets_out"]
    # every loss was forced and carried by the right reason
    assert s["dropped.kernel_overrun"] > 0 and r["dropped.hwm"] > 0
    assert f["packets_lost"] > 0 and x["dropped.output"] > 0
    total_dropped = (s["dropped.kernel_overrun"] + s["dropped.queue_full"] + r["dropped.hwm"]
                     + r["dropped.queue_full"] + x["dropped.transit"] + x["dropped.output"])
    assert sent == delivered + total_dropped
