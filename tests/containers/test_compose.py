"""compose.yaml end to end, with real NFLOG traffic.

compose.yaml + tests/containers/compose.ci.yaml: two sender containers share the network
namespace of a traffic-generator container (instead of the host's, so the host's
firewall is untouched). The generator adds NFLOG rules in its own namespace and sends
UDP datagrams carrying the marker of a bundled Suricata rule to its own loopback.
Group 7 goes sender -> receiver, group 8 sender -> compress -> decompress -> receiver;
the receiver writes the FIFO in the `pcap` volume, the Suricata container reads it and
must raise the alert (eve.json in the `alerts` volume) for every datagram. Then the
receiver is restarted (Suricata must start again on the new writer), the query tool
fetches the receiver's buffer, and `docker compose down -v` must leave nothing behind.
"""

from __future__ import annotations

import json
import os
import time

from conftest import FIGURES, compose, run

from nflog_pipe import pcap

MARKER = b"NFLOG-PIPE-SELFTEST"
SID = 9000001
#: `up` starts the relays too; the query (profile tools) is a one-shot `run`
PROFILES = ("relays",)
NET_ADMIN = 1 << 12
#: service -> (uid, groups that must be present) of every process of its container
USERS = {"receiver": (10001, {10001}), "ids": (10002, {10001}), "compress": (10001, {10001}),
         "decompress": (10001, {10001})}


class Project:
    """One compose project of this test, always taken down."""

    def __init__(self):
        self.name = f"nzpci{os.getpid()}"

    def __call__(self, *args: str, timeout: float = 120, check: bool = True, text: bool = True,
                 profiles: tuple[str, ...] = PROFILES):
        return compose(*args, project=self.name, profiles=profiles, timeout=timeout, check=check,
                       text=text)

    def logs(self, service: str) -> list[dict]:
        out = []
        for line in self("logs", "--no-color", "--no-log-prefix", service).stdout.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait(self, what: str, check, timeout: float = 90.0, every: float = 0.5):
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.diagnostics()}")
            time.sleep(every)

    def wait_log(self, service: str, event: str, **match) -> dict:
        def found():
            for r in self.logs(service):
                if r.get("event") == event and all(r.get(k) == v for k, v in match.items()):
                    return r
            return None
        return self.wait(f"{service}: {event} {match}", found)

    def container(self, service: str) -> str:
        cid = self("ps", "-q", service).stdout.strip()
        assert cid, f"no container for {service}"
        return cid

    def exec(self, service: str, *cmd: str, timeout: float = 60) -> str:
        return self("exec", "-T", service, *cmd, timeout=timeout).stdout

    def alerts(self) -> list[dict]:
        text = self.exec("ids", "cat", "/var/log/suricata/eve.json")
        return [e for e in map(json.loads, text.splitlines())
                if e.get("event_type") == "alert" and e["alert"]["signature_id"] == SID]

    def diagnostics(self) -> str:
        p = self("logs", "--no-color", "--tail", "40", timeout=60, check=False)
        return (p.stdout + p.stderr)[-6000:]

    def resources(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.name}"
        return {kind: run(["docker", *cmd, "--filter", label], timeout=60).stdout.split()
                for kind, cmd in (("containers", ["ps", "-aq"]),
                                  ("volumes", ["volume", "ls", "-q"]),
                                  ("networks", ["network", "ls", "-q"]))}


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def container_processes(cid: str) -> list[dict[str, str]]:
    """/proc/<pid>/status of every process of a running container (host PIDs)."""
    top = run(["docker", "top", cid, "-eo", "pid"], timeout=30).stdout.split()[1:]
    return [proc_status(int(pid)) for pid in top]


def inspect(cid: str) -> dict:
    return json.loads(run(["docker", "inspect", cid], timeout=30).stdout)[0]


def send(p: Project, port: int, count: int, tag: str) -> None:
    """`count` UDP datagrams with the marker to the generator's own loopback."""
    script = (f'for i in $(seq {count}); do '
              f'printf "{tag} $i {MARKER.decode()}" > /dev/udp/127.0.0.1/{port}; done')
    p.exec("trafficgen", "bash", "-c", script)


def test_compose_pipeline_raises_the_alert(images):
    p = Project()
    t0 = time.monotonic()
    try:
        # --wait: every healthcheck passes (senders, receiver, relays: fresh health
        # files; ids: Suricata running, so the receiver's FIFO existed)
        p("up", "-d", "--no-build", "--wait", "--wait-timeout", "120", timeout=240)
        FIGURES["compose up --wait (s)"] = round(time.monotonic() - t0, 1)
        check_privileges(p)

        # the receiver made the FIFO itself, in the shared volume, for its group
        assert p.exec("receiver", "stat", "-c", "%F %u %g %a", "/pcap/ids.pcap").split() == \
            ["fifo", "10001", "10001", "640"]
        p.wait_log("receiver", "reader_attached")
        p.wait_log("sender", "start", sender_id="ci-direct")
        p.wait_log("sender-relayed", "start", sender_id="ci-relayed")

        for group, port in ((7, 7777), (8, 7778)):
            p.exec("trafficgen", "iptables", "-A", "OUTPUT", "-o", "lo", "-p", "udp",
                   "--dport", str(port), "-j", "NFLOG", "--nflog-group", str(group))
        send(p, 7777, 5, "direct")
        send(p, 7778, 5, "relayed")
        alerts = p.wait("10 alerts in eve.json", lambda: len(a := p.alerts()) >= 10 and a)
        time.sleep(1)
        alerts = p.alerts()
        ports = sorted(a["dest_port"] for a in alerts)
        assert ports == [7777] * 5 + [7778] * 5, ports
        assert all(a["src_ip"] == a["dest_ip"] == "127.0.0.1" and a["proto"] == "UDP"
                   for a in alerts)
        FIGURES["alert seen"] = (f"sid {SID} '{alerts[0]['alert']['signature']}' x{len(alerts)}"
                                 f" ({alerts[0]['src_ip']} -> dst ports 7777/7778)")
        # every packet accounted: in and out of each daemon, nothing dropped
        p.wait("sender counters", lambda: counters(p, "sender").get("packets_out") == 5)
        p.wait("relayed sender counters",
               lambda: counters(p, "sender-relayed").get("packets_out") == 5)
        p.wait("receiver counters", lambda: counters(p, "receiver").get("packets_out") == 10)
        for svc in ("sender", "sender-relayed", "receiver"):
            c = counters(p, svc)
            assert not {k: v for k, v in c.items() if k.startswith("dropped.") and v}, (svc, c)
        # the relayed packets really were compressed on the way, and expanded again
        p.wait("relay counters", lambda: counters(p, "decompress").get("packets_out") == 5)
        comp = counters(p, "compress")
        assert comp["packets_in"] == comp["packets_out"] == 5, comp
        assert comp["compressed_packets"] >= 1, comp

        # the receiver goes away and comes back: Suricata ends with the writer and the
        # image's wrapper starts it again on the new one
        p("restart", "receiver", timeout=60)
        p.wait("Suricata reading the restarted receiver's FIFO", lambda: sum(
            r.get("event") == "reader_attached" for r in p.logs("receiver")) == 2)
        send(p, 7777, 1, "after-restart")
        p.wait("an alert after the receiver's restart", lambda: len(p.alerts()) >= 11)
        runs = [r["message"] for r in p.logs("ids") if r.get("service") == "ids-run"]
        assert sum(m.startswith("starting: suricata") for m in runs) == 2, runs
        assert sum(m.startswith("IDS exited") for m in runs) == 1, runs

        # the query tool, run with `docker compose run`, gets the receiver's buffer
        q = p("run", "--rm", "-T", "query", timeout=120, text=False,
              profiles=PROFILES + ("tools",))
        info, records = pcap.parse(q.stdout)
        assert info["linktype"] == 101
        # (the restarted receiver's buffer holds what came after its restart)
        assert [r.data.endswith(b"after-restart 1 " + MARKER) for r in records] == [True], records
    except BaseException:
        print(p.diagnostics())
        raise
    finally:
        t1 = time.monotonic()
        p("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180, check=False,
          profiles=PROFILES + ("tools",))
        FIGURES["compose down -v (s)"] = round(time.monotonic() - t1, 1)
        FIGURES["compose test total (s)"] = round(time.monotonic() - t0, 1)
    left = p.resources()
    assert left == {"containers": [], "volumes": [], "networks": []}, left


def counters(p: Project, service: str) -> dict:
    stats = [r for r in p.logs(service) if r.get("event") in ("stats", "totals")]
    return stats[-1]["counters"] if stats else {}


def caps(names: list[str] | None) -> list[str]:
    """Capability names as docker inspect shows them, without the CAP_ prefix."""
    return [n.removeprefix("CAP_") for n in names or []]


def check_privileges(p: Project) -> None:
    """What the containers really run as, read from the kernel (/proc of each process)
    and from the engine (docker inspect), not from the Dockerfiles."""
    for svc in ("sender", "sender-relayed"):
        cid = p.container(svc)
        host = inspect(cid)["HostConfig"]
        assert caps(host["CapAdd"]) == ["NET_ADMIN"] and caps(host["CapDrop"]) == ["ALL"], host
        assert not host["Privileged"] and host["ReadonlyRootfs"]
        procs = container_processes(cid)
        for st in procs:
            # the documented user: root, and nothing beyond NET_ADMIN may ever be held
            assert st["Uid"].split() == ["0"] * 4, st["Uid"]
            assert int(st["CapBnd"], 16) == NET_ADMIN, st["CapBnd"]
            assert int(st["CapEff"], 16) & ~NET_ADMIN == 0
        # the daemon itself (PID 1 of the container) dropped NET_ADMIN after binding
        main = proc_status(inspect(cid)["State"]["Pid"])
        assert int(main["CapEff"], 16) == 0 and int(main["CapPrm"], 16) == 0, main
        assert main["NoNewPrivs"] == "1"
    for svc, (uid, groups) in USERS.items():
        cid = p.container(svc)
        host = inspect(cid)["HostConfig"]
        assert caps(host["CapDrop"]) == ["ALL"] and not host["CapAdd"], (svc, host["CapAdd"])
        assert not host["Privileged"] and host["ReadonlyRootfs"], svc
        procs = container_processes(cid)
        assert procs, svc
        for st in procs:
            assert st["Uid"].split() == [str(uid)] * 4, (svc, st["Uid"])
            assert groups <= {int(g) for g in st["Groups"].split()}, (svc, st["Groups"])
            for cap in ("CapEff", "CapPrm", "CapBnd"):
                assert int(st[cap], 16) == 0, (svc, cap, st[cap])
