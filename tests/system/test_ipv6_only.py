"""The whole chain on a network without IPv4: two namespaces with only IPv6
addresses (not even 127.0.0.1 on loopback), names that resolve only to IPv6
(/etc/hosts of the namespaces), every socket of every command on IPv6:
sender -> compress relay -> decompress relay -> receiver (FIFO), its buffer
interface queried from the other namespace, its tap, statsd."""

import sys
from pathlib import Path

from conftest import payload_file
from lab import FifoReader, send_udp, tool, wait_until

from nflog_pipe import pcap

TOOLS = Path(__file__).resolve().parent.parent / "tools"
PORT = 7601


def test_chain_over_ipv6_only(lab, tmp_path):
    gw, ids = lab.netns("gw"), lab.netns("ids")
    link = lab.link(gw, ids, v4=False)
    for ns in (gw, ids):
        ns.ipv6_only()
        ns.hosts(f"::1 localhost\n{link.a6} gw6\n{link.b6} ids6\n")
        assert "inet " not in ns.exec("ip", "-4", "addr").stdout
    gw.iptables("-A", "OUTPUT", "-d", link.b6, "-p", "udp", "--dport", str(PORT), "-j", "NFLOG",
                "--nflog-group", "41", v6=True)
    fifo = lab.fifo()
    stats = tmp_path / "statsd.txt"
    lab.popen(ids.prefix() + [sys.executable, str(TOOLS / "statsd_sink.py"), "::1", "8125",
                              str(stats), "60"])
    recv = lab.daemon(ids, "nflog-pcap-recv", "tcp://[::1]:5621", str(fifo),
                      "--buffer-interface", "tcp://ids6:5622", "--insecure-bind",
                      "--tap", "[::1]:5623", "-m", "[::1]:8125", "--statsd-interval", "0.2")
    recv.wait_log("start")
    reader = FifoReader(fifo)
    reader.opened.wait(10)
    dec = lab.daemon(ids, "nflog-zmq-decompress", "tcp://ids6:5620", "tcp://localhost:5621")
    dec.wait_log("start")
    comp = lab.daemon(gw, "nflog-zmq-compress", "tcp://[::1]:5619", "tcp://ids6:5620",
                      "--lwm", "0.000001", "--compress-delay", "0.05")
    comp.wait_log("start")
    sender = lab.daemon(gw, "nflog-zmq-send", "41", "tcp://localhost:5619")
    sender.wait_log("start")
    tap_out = tmp_path / "tap.pcap"
    tap = lab.popen(ids.prefix() + [sys.executable, "-c", (
        "import socket,sys,time\n"
        "s=socket.create_connection(('::1',5623));s.settimeout(0.5);f=open(sys.argv[1],'wb')\n"
        "end=time.monotonic()+30\n"
        "while time.monotonic()<end:\n"
        "  try: d=s.recv(65536)\n"
        "  except TimeoutError: continue\n"
        "  if not d: break\n"
        "  f.write(d);f.flush()\n"), str(tap_out)])
    # the tap client is attached once it has the pcap header
    wait_until(lambda: tap_out.exists() and tap_out.stat().st_size >= 24, what="the tap client")

    payloads = [b"v6-only-%d" % i * (1 + i % 20) for i in range(300)]
    assert send_udp(gw, link.b6, PORT, payload_file(tmp_path / "p", payloads)) == 300

    def n_records(data: bytes) -> int:
        try:
            return len(pcap.parse(data)[1])
        except ValueError:
            return 0
    wait_until(lambda: n_records(bytes(reader.data)) == 300, timeout=30, what="300 records")
    wait_until(lambda: tap_out.exists() and n_records(tap_out.read_bytes()) == 300,
               what="300 records on the tap")
    # the buffer interface, queried by name from the other namespace
    q = gw.exec(tool("nflog-pcap-query"), "tcp://ids6:5622", "-o", str(tmp_path / "q.pcap"),
                "--log-format", "text", check=False)
    assert q.returncode == 0, q.stderr
    assert n_records((tmp_path / "q.pcap").read_bytes()) == 300
    wait_until(lambda: stats.exists() and b"recv.packets_out:" in stats.read_bytes(),
               what="statsd over IPv6")

    s = sender.stop()["counters"]
    c = comp.stop()["counters"]
    d = dec.stop()["counters"]
    r = recv.stop()["counters"]
    reader.close()
    assert s["packets_out"] == 300 and c["compressed_packets"] > 0
    assert d["packets_out"] == 300 and r["packets_out"] == 300
    assert r["dropped.transit"] == 0 and r["streams_reset"] == 0
    tap.kill()
