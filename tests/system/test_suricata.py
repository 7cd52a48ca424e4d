"""A real IDS reads the receiver's FIFO: Suricata raises the bundled rules'
alerts for traffic that crossed the pipe (UDP over IPv4 and IPv6, and a
TCP connection logged in both directions)."""

import ipaddress
import json
import shutil
import subprocess
import sys

from conftest import payload_file
from lab import ROOT, send_udp, wait_until

RULES = ROOT / "services" / "ids" / "rules" / "nflog-pipe.rules"

TCP_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7100)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); c.settimeout(20)
data = c.recv(4096); c.sendall(b"ok " + data[:10]); c.close()
"""
TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7100), timeout=20)
c.sendall(b"hello NFLOG-PIPE-TCP-MARKER there"); c.recv(100); c.close()
"""


def _alerts(eve):
    if not eve.exists():
        return {}
    out = {}
    for line in eve.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # a line being written
        if ev.get("event_type") == "alert":
            out[ev["alert"]["signature_id"]] = ev
    return out


def test_suricata_alerts_on_traffic_through_the_pipe(pipe, tmp_path):
    assert shutil.which("suricata"), "Suricata is installed by tools/install-deps.sh"
    pipe.nflog_rule(1, 7200)
    pipe.nflog_rule(1, 7200, v6=True)
    pipe.gw.iptables("-A", "OUTPUT", "-d", pipe.link.b4, "-p", "tcp", "--dport", "7100",
                     "-j", "NFLOG", "--nflog-group", "1")
    pipe.gw.iptables("-A", "INPUT", "-s", pipe.link.b4, "-p", "tcp", "--sport", "7100",
                     "-j", "NFLOG", "--nflog-group", "1")
    pipe.start_receiver()
    logdir = tmp_path / "suricata"
    logdir.mkdir()
    suri = pipe.lab.popen(["suricata", "-r", str(pipe.fifo), "-S", str(RULES), "-l", str(logdir),
                           "-k", "none", "--set", "unix-command.enabled=no",
                           "--set", "stream.inline=yes", "--set", "outputs.1.eve-log.types.0=alert"],
                          stdout=open(tmp_path / "suricata.out", "w"), stderr=subprocess.STDOUT)
    pipe.receiver.wait_log("reader_attached", timeout=30)
    sender = pipe.start_sender("1")

    send_udp(pipe.gw, pipe.link.b4, 7200,
             payload_file(tmp_path / "m4", [b"x" * 100, b"..NFLOG-PIPE-DEMO-MARKER..", b"y"]))
    send_udp(pipe.gw, pipe.link.b6, 7200,
             payload_file(tmp_path / "m6", [b"..NFLOG-PIPE-V6-MARKER.."]))
    server = pipe.lab.popen(pipe.ids.prefix() + [sys.executable, "-c", TCP_SERVER])
    wait_until(lambda: "7100" in pipe.ids.exec("ss", "-ltn").stdout, what="tcp server")
    pipe.gw.exec(sys.executable, "-c", TCP_CLIENT, pipe.link.b4, timeout=30)
    server.wait(30)

    eve = logdir / "eve.json"
    alerts = wait_until(lambda: {9000020, 9000021, 9000022} <= set(_alerts(eve)) and _alerts(eve),
                        timeout=60, what="Suricata alerts 9000020-22")
    assert alerts[9000020]["dest_port"] == 7200 and alerts[9000020]["src_ip"] == pipe.link.a4
    assert ipaddress.ip_address(alerts[9000021]["src_ip"]) == ipaddress.ip_address(pipe.link.a6)
    assert alerts[9000022]["dest_port"] == 7100
    sender.stop()
    pipe.receiver.stop()
    suri.wait(60)  # Suricata ends when the writer closes the FIFO
    assert suri.returncode == 0, (tmp_path / "suricata.out").read_text()[-2000:]
