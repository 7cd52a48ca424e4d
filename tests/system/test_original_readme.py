"""The original README's example, command line by command line, on real
namespaces: "gateway.host" sends the NFLOG groups of its outgoing traffic to
"google.com" and "ipv6.google.com" (names that resolve, inside the test
namespaces, to the ids namespace's addresses: no traffic leaves the test),
to "ids.host", where nflog-pcap-recv writes the FIFO an IDS reads (the
FIFO's path is the test's, not /run/snort.pcap; a reader thread stands in
for Snort, which Debian does not ship).  Then old option spellings, as the
original's users wrote them (docs/migration.md)."""

import shlex
import subprocess

from conftest import payload_file
from lab import FifoReader, send_udp, tool, wait_until

from nflog_pipe import pcap

GATEWAY = [
    "iptables -I OUTPUT -d google.com -j NFLOG --nflog-group 0 --nflog-range 65535",
    "ip6tables -I OUTPUT -d ipv6.google.com -j NFLOG --nflog-group 1 --nflog-range 65535",
    "nflog-zmq-send 0,1 tcp://ids.host:1234",
]
IDS = [
    "mkfifo /run/snort.pcap",
    "nflog-pcap-recv tcp://0.0.0.0:1234 /run/snort.pcap &",
]


def _records(reader) -> list:
    try:
        return pcap.parse(bytes(reader.data))[1]
    except ValueError:
        return []


def test_original_readme_example(lab, tmp_path):
    gw, ids = lab.netns("gw"), lab.netns("ids")
    link = lab.link(gw, ids)
    # "google.com" is another address of the ids namespace (the pipe's own
    # traffic to ids.host must not match the rules)
    far4, far6 = "192.0.2.7", "2001:db8:7::7"
    ids.exec("ip", "addr", "add", f"{far4}/32", "dev", link.dev_b)
    ids.exec("ip", "addr", "add", f"{far6}/128", "dev", link.dev_b, "nodad")
    gw.exec("ip", "route", "add", f"{far4}/32", "via", link.b4)
    gw.exec("ip", "route", "add", f"{far6}/128", "via", link.b6)
    gw.hosts(f"127.0.0.1 localhost\n{link.b4} ids.host\n{far4} google.com\n"
             f"{far6} ipv6.google.com\n")
    fifo = tmp_path / "snort.pcap"
    daemons = {}
    for ns, lines in ((ids, IDS), (gw, GATEWAY)):
        for line in lines:
            argv = shlex.split(line.replace("/run/snort.pcap", str(fifo)).rstrip(" &"))
            if argv[0].startswith("nflog-"):
                d = lab.daemon(ns, argv[0], *argv[1:])
                d.wait_log("start")
                daemons[argv[0]] = d
            else:
                r = ns.exec(*argv, check=False)
                assert r.returncode == 0, (line, r.stderr)
    reader = FifoReader(fifo)  # snort --treat-drop-as-alert -r /run/snort.pcap
    reader.opened.wait(10)
    daemons["nflog-pcap-recv"].wait_log("reader_attached")
    v4 = [b"to google.com %d" % i for i in range(60)]
    v6 = [b"to ipv6.google.com %d" % i for i in range(40)]
    assert send_udp(gw, far4, 9999, payload_file(tmp_path / "v4", v4)) == 60
    assert send_udp(gw, far6, 9999, payload_file(tmp_path / "v6", v6)) == 40
    # every packet the gateway sent to those hosts (and nothing else) is logged
    wait_until(lambda: sum(p in bytes(reader.data) for p in v4 + v6) == 100, timeout=30,
               what="the 100 datagrams in the FIFO")
    send = daemons["nflog-zmq-send"].stop()["counters"]
    recv = daemons["nflog-pcap-recv"].stop()["counters"]
    reader.close()
    assert send["packets_in"] == send["packets_out"] == recv["packets_out"] == len(_records(reader))
    assert recv["dropped.transit"] == 0 and recv["dropped.output"] == 0


def test_original_option_spellings(lab, tmp_path):
    """Options as the original's users wrote them start the daemons; the one
    that cannot keep its meaning is refused with one line naming its
    replacement."""
    gw = lab.netns("gw")
    fifo = lab.fifo()
    recv = lab.daemon(gw, "nflog-pcap-recv", "tcp://127.0.0.1:1234", str(fifo), "--rate-control",
                      "--buffer-interface", "tcp://127.0.0.1:1235", "--buffer-window", "10",
                      "--buffer-timeout", "1.0", "--debug", "-m", "127.0.0.1:8125",
                      "-i", "50/60", "-t", "c")
    recv.wait_log("start")
    comp = lab.daemon(gw, "nflog-zmq-compress", "tcp://127.0.0.1:1236", "tcp://127.0.0.1:1234",
                      "--zmq-buffer", "50", "--lwm", "1", "--hwm", "5", "--wm-interval", "10",
                      "-t", "ms")
    comp.wait_log("start")
    dec = lab.daemon(gw, "nflog-zmq-decompress", "tcp://127.0.0.1:1237", "tcp://127.0.0.1:1234",
                     "--zmq-buffer", "50", "-t", "g")
    dec.wait_log("start")
    send = lab.daemon(gw, "nflog-zmq-send", "3", "tcp://127.0.0.1:1236", "-u", "nobody",
                      "--libnflog-nlbufsiz", "10", "--libnflog-qthresh", "1000",
                      "--libnflog-timeout", "1", "--rate-control", "--lwm", "1", "--hwm", "5",
                      "-m", "127.0.0.1:8125", "-n", "{host}.nflog_pipe.", "-i", "50/60")
    start = send.wait_log("start")
    assert start["qthresh"] == 1000 and start["rcvbuf"] >= 10 << 20
    q = subprocess.run(gw.prefix() + [tool("nflog-pcap-query"), "tcp://127.0.0.1:1235", "--debug"],
                       capture_output=True, timeout=30)
    assert q.returncode == 0 and q.stdout[:4] == b"\xd4\xc3\xb2\xa1", q.stderr
    for d in (send, comp, dec, recv):
        d.stop()
    r = gw.exec(tool("nflog-zmq-send"), "4", "tcp://127.0.0.1:1236", "--zmq-buffer", "100",
                check=False)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "use --zmq-buffer-frames" in r.stderr
