"""nflog-zmq-send and SIGHUP, with the real kernel: logged and ignored, the
packets before and after it all arrive, SIGTERM still ends it with its
totals (the receiver, relays and query client: tests/integration/test_signals.py)."""

import os
import signal

from conftest import payload_file
from lab import send_udp, wait_until

from nflog_pipe import pcap

PORT = 7301


def test_sender_survives_sighup(pipe, tmp_path):
    pipe.nflog_rule(31, PORT)
    pipe.start_receiver()
    reader = pipe.reader()
    sender = pipe.start_sender("31", "--user", "nobody")

    def records():
        try:
            return pcap.parse(bytes(reader.data))[1]
        except ValueError:
            return []
    payloads = [b"before-%d" % i for i in range(50)]
    send_udp(pipe.gw, pipe.link.b4, PORT, payload_file(tmp_path / "a", payloads))
    wait_until(lambda: len(records()) == 50, what="50 records")
    for i in range(2):
        os.kill(sender.pid, signal.SIGHUP)
        wait_until(lambda i=i: sum(r.get("event") == "sighup" for r in sender.records()) == i + 1,
                   what="the sighup record")
    assert sender.proc.poll() is None
    payloads = [b"after-%d" % i for i in range(50)]
    send_udp(pipe.gw, pipe.link.b4, PORT, payload_file(tmp_path / "b", payloads))
    wait_until(lambda: len(records()) == 100, what="100 records")
    totals = sender.stop()
    assert totals["reason"] == "SIGTERM" and totals["counters"]["packets_out"] == 100
    reader.close()
    pipe.receiver.stop()
