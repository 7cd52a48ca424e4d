import os
import signal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lab import FifoReader, Lab, Link, Netns, send_udp

ZMQ_PORT = 5555


@dataclass
class Pipe:
    """gateway namespace --veth--> ids namespace, NFLOG rules in the gateway,
    the receiver in the ids namespace writing a FIFO."""

    lab: Lab
    gw: Netns
    ids: Netns
    link: Link
    fifo: Path
    receiver: object = None
    senders: list = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.link.b4}:{ZMQ_PORT}"

    def start_receiver(self, *extra: str, tag: str = ""):
        self.receiver = self.lab.daemon(self.ids, "nflog-pcap-recv", f"tcp://0.0.0.0:{ZMQ_PORT}",
                                        str(self.fifo), *extra, tag=tag)
        self.receiver.wait_log("start")
        return self.receiver

    def start_sender(self, groups: str, *extra: str, ns: Netns | None = None, endpoint=None):
        s = self.lab.daemon(ns or self.gw, "nflog-zmq-send", groups, endpoint or self.endpoint,
                            *extra)
        s.wait_log("start")
        self.senders.append(s)
        return s

    def nflog_rule(self, group: int, port: int, *extra: str, v6: bool = False, ns=None,
                   dst: str | None = None):
        dst = dst or (self.link.b6 if v6 else self.link.b4)
        (ns or self.gw).iptables("-A", "OUTPUT", "-d", dst, "-p", "udp", "--dport", str(port),
                                 "-j", "NFLOG", "--nflog-group", str(group), *extra, v6=v6)

    def burst_while_stopped(self, sender, port: int, payloads_file: Path) -> int:
        """Send ``payloads_file`` as fast as possible while ``sender`` is
        stopped (SIGSTOP), so that its netlink buffer overruns; returns the
        packets sent.  The sender runs again afterwards."""
        os.kill(sender.pid, signal.SIGSTOP)
        try:
            sent = send_udp(self.gw, self.link.b4, port, payloads_file, pace=0)
            time.sleep(0.2)
        finally:
            os.kill(sender.pid, signal.SIGCONT)
        return sent

    def reader(self) -> FifoReader:
        r = FifoReader(self.fifo)
        r.opened.wait(10)
        return r


@pytest.fixture
def pipe(lab) -> Pipe:
    gw = lab.netns("gw")
    ids = lab.netns("ids")
    link = lab.link(gw, ids)
    return Pipe(lab, gw, ids, link, lab.fifo())


def payload_file(path: Path, payloads: list[bytes]) -> Path:
    with open(path, "wb") as f:
        for p in payloads:
            f.write(struct.pack(">I", len(p)) + p)
    return path


def make_payloads(n: int, max_size: int, tag: bytes) -> list[bytes]:
    """Distinct payloads of sizes cycling through 1..max_size."""
    out = []
    for i in range(n):
        size = 1 + (i * 37) % max_size
        body = tag + i.to_bytes(4, "big") + bytes((i + j) & 0xFF for j in range(64))
        out.append((body * (size // len(body) + 1))[:size])
    return out
