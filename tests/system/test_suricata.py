"""A real IDS reads the receiver's FIFO: Suricata raises the bundled rules'
alerts for traffic that crossed the pipe (UDP over IPv4 and IPv6, and a
TCP connection logged in both directions)."""

import ipaddress
import json
import re
import shutil
import signal
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


def _alert_lines(eve) -> list:
    return [x for x in eve.read_text().splitlines() if '"alert"' in x] if eve.exists() else []


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


PCAP_TROUBLE = re.compile(r"(^|\s)(E|W|Error|Warning): pcap", re.M)


def test_suricata_restarted_5_times_under_traffic(pipe, tmp_path):
    """Suricata restarts (SIGKILL or SIGTERM, the next one started at once)
    while traffic flows: every run gets a valid stream from its first byte,
    raises the marker's alert, and logs no pcap error or warning."""
    assert shutil.which("suricata"), "Suricata is installed by tools/install-deps.sh"
    pipe.nflog_rule(1, 7200)
    pipe.start_receiver()
    sender = pipe.start_sender("1", "--libnflog-timeout", "0.01")
    marker = b"..NFLOG-PIPE-DEMO-MARKER.."
    traffic = [b"filler %d " % i * (1 + i % 90) for i in range(49)] + [marker]
    # 200 packets/s, a marker every 0.25 s; bounded: 120 s worth, stopped below
    gen = pipe.lab.popen(pipe.gw.prefix() + [
        sys.executable, str(ROOT / "tests" / "tools" / "udpsend.py"), pipe.link.b4, "7200",
        str(payload_file(tmp_path / "traffic", traffic)), "0", "0", "200", "24000"],
        stdout=subprocess.PIPE, text=True)
    runs = []
    for i in range(6):  # the first run and 5 restarts
        logdir = tmp_path / f"suricata{i}"
        logdir.mkdir()
        out = open(tmp_path / f"suricata{i}.out", "w")
        suri = pipe.lab.popen(["suricata", "-r", str(pipe.fifo), "-S", str(RULES), "-l",
                               str(logdir), "-k", "none", "--set", "unix-command.enabled=no",
                               "--set", "outputs.1.eve-log.types.0=alert"],
                              stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: 9000020 in _alerts(logdir / "eve.json"), timeout=60,  # noqa: B023
                   what=f"an alert from Suricata run {i}")
        runs.append((suri, logdir, out))
        if i < 5:  # restart: the old one goes, the next one opens the FIFO at once
            suri.send_signal(signal.SIGKILL if i % 2 else signal.SIGTERM)
            try:
                suri.wait(20)
            except subprocess.TimeoutExpired:
                suri.kill()
                suri.wait()
    gen.send_signal(signal.SIGTERM)
    sent = int(gen.communicate(timeout=30)[0])
    sender.stop()
    totals = pipe.receiver.stop()["counters"]
    last = runs[-1][0]
    last.wait(60)  # the last run ends when the writer closes the FIFO
    assert last.returncode == 0
    for i, (_, logdir, out) in enumerate(runs):
        out.close()
        for log in (tmp_path / f"suricata{i}.out", logdir / "suricata.log"):
            text = log.read_text()
            assert not PCAP_TROUBLE.search(text), f"run {i}: {log}:\n{text[-2000:]}"
    attached = [r for r in pipe.receiver.records() if r.get("event") == "reader_attached"]
    print("suricata restarts:", json.dumps(dict(
        runs=len(runs), sent=sent, alerts=[len(_alert_lines(d / "eve.json")) for _, d, _ in runs],
        counters={k: v for k, v in totals.items() if k.startswith(("packets", "dropped."))})))
    assert len(attached) == 6 and sent > 0
    assert totals["packets_in"] == (totals["packets_out"] + totals["dropped.output"]
                                    + totals["dropped.reader_gone"]
                                    + totals["dropped.unread_at_exit"])
