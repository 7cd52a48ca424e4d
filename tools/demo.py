"""make demo: the whole chain on one machine, with a real IDS.

  [gateway netns]  iptables -j NFLOG --nflog-group 0 / ip6tables ... group 1
                   nflog-zmq-send 0,1 tcp://10.77.7.2:1234
        | veth
  [ids netns]      nflog-pcap-recv tcp://0.0.0.0:1234 /tmp/.../snort.pcap (FIFO)
                   suricata -r FIFO  -> prints the alert

Sends a little traffic (a few UDP datagrams over IPv4 and IPv6, one carrying
a marker a bundled rule matches), prints Suricata's alerts and the daemons'
totals, and removes every namespace, process and file it made.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tools" / "lib"))
import testkit  # noqa: E402  (tools/lib/testkit.py: shared with tests/lab.py, bench/)

RULES = ROOT / "services" / "ids" / "rules" / "nflog-pipe.rules"
GW, IDS = f"nzpdemo-gw-{os.getpid()}", f"nzpdemo-ids-{os.getpid()}"
GW4, IDS4, GW6, IDS6 = "10.77.7.1", "10.77.7.2", "fd00:77:7::1", "fd00:77:7::2"


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = (testkit.exec_argv(ns, []) if ns else []) + list(cmd)
    return subprocess.run(full, check=check, capture_output=True, text=True)


def step(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m" if sys.stdout.isatty() else f"==> {msg}", flush=True)


def send(ns: str, dst: str, port: int, payloads: list[bytes]) -> None:
    code = ("import socket,sys,pickle\n"
            f"s=socket.socket(socket.{'AF_INET6' if ':' in dst else 'AF_INET'},socket.SOCK_DGRAM)\n"
            f"[s.sendto(p,({dst!r},{port})) for p in pickle.loads(sys.stdin.buffer.read())]")
    import pickle
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                   input=pickle.dumps(payloads), check=True)


def _json(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:  # the line Suricata is writing
        return {}


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces, iptables)", file=sys.stderr)
        return 1
    for t in ("suricata", "iptables", "ip"):
        if not shutil.which(t):
            print(f"{t} is missing: run 'make install' as root", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="nflog-pipe-demo-"))
    procs: list[subprocess.Popen] = []
    try:
        step("network namespaces: gateway and ids, joined by a veth pair")
        testkit.add(GW)
        testkit.add(IDS)
        testkit.veth(GW, "nzpdemo0", IDS, "nzpdemo1", [f"{GW4}/24", f"{GW6}/64"],
                   [f"{IDS4}/24", f"{IDS6}/64"])

        step("gateway: NFLOG rules for UDP to port 5353 (group 0 IPv4, group 1 IPv6)")
        sh("iptables", "-I", "OUTPUT", "-d", IDS4, "-p", "udp", "--dport", "5353", "-j", "NFLOG",
           "--nflog-group", "0", ns=GW)
        sh("ip6tables", "-I", "OUTPUT", "-d", IDS6, "-p", "udp", "--dport", "5353", "-j", "NFLOG",
           "--nflog-group", "1", ns=GW)

        fifo = tmp / "snort.pcap"
        os.mkfifo(fifo)
        step(f"ids: nflog-pcap-recv tcp://0.0.0.0:1234 {fifo}")
        logs = {n: open(tmp / f"{n}.log", "w+") for n in ("recv", "send", "suricata")}
        recv = subprocess.Popen(["ip", "netns", "exec", IDS, str(BIN / "nflog-pcap-recv"),
                                 "tcp://0.0.0.0:1234", str(fifo), "--log-format", "text"],
                                stderr=logs["recv"])
        procs.append(recv)
        step(f"ids: suricata -r {fifo} -S {RULES.name} -k none")
        suri_log = tmp / "suricata"
        suri_log.mkdir()
        suri = subprocess.Popen(["suricata", "-r", str(fifo), "-S", str(RULES), "-l", str(suri_log),
                                 "-k", "none", "--set", "unix-command.enabled=no"],
                                stdout=logs["suricata"], stderr=subprocess.STDOUT)
        procs.append(suri)
        step(f"gateway: nflog-zmq-send 0,1 tcp://{IDS4}:1234")
        send_p = subprocess.Popen(["ip", "netns", "exec", GW, str(BIN / "nflog-zmq-send"), "0,1",
                                   f"tcp://{IDS4}:1234", "--log-format", "text"],
                                  stderr=logs["send"])
        procs.append(send_p)
        time.sleep(1.0)

        step("gateway: sending UDP traffic, one datagram carries NFLOG-PIPE-DEMO-MARKER")
        send(GW, IDS4, 5353, [b"hello %d" % i for i in range(20)]
             + [b"...NFLOG-PIPE-DEMO-MARKER..."])
        send(GW, IDS6, 5353, [b"hello v6 %d" % i for i in range(10)]
             + [b"...NFLOG-PIPE-V6-MARKER..."])

        eve = suri_log / "eve.json"
        alerts = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(alerts) < 2:
            time.sleep(0.2)
            if eve.exists():
                alerts = [e for e in map(_json, eve.read_text().splitlines())
                          if e.get("event_type") == "alert"]
        step("Suricata alerts (from eve.json):")
        for a in alerts:
            print(f"    [{a['alert']['signature_id']}] {a['alert']['signature']}: "
                  f"{a['src_ip']}:{a['src_port']} -> {a['dest_ip']}:{a['dest_port']} ({a['proto']})")
        for p in (send_p, recv):
            p.send_signal(signal.SIGTERM)
            p.wait(15)
        suri.wait(30)
        step("totals logged by the daemons at exit:")
        for n in ("send", "recv"):
            logs[n].seek(0)
            print("    " + [ln for ln in logs[n].read().splitlines() if "totals" in ln][-1])
        if not alerts:
            print("no alert: see", tmp, file=sys.stderr)
            return 1
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for ns in (GW, IDS):
            testkit.delete(ns)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
