"""Network-namespace fixture and process helpers for the NFLOG reader bench.

Standard library only; needs root, iproute2 and iptables/ip6tables.

    with NetnsPair(group=5, port=9999) as env:
        p = env.popen("gw", ["tcpdump", "-i", "nflog:5", "-w", "/dev/null"])
        ...
        env.run("gw", [udpgen, env.sink4, "9999", "64", "0", "1000", "1"])

Topology (all addresses exist only inside the two namespaces)::

    [gw ns]  veth-gw 10.213.0.1/24 fd42:6e66:6c6f::1/64
                 |  veth pair
    [sink ns] veth-sink 10.213.0.2/24 fd42:6e66:6c6f::2/64

In gw: ``OUTPUT -d SINK -p udp --dport PORT -j NFLOG --nflog-group G
--nflog-size 65535 [--nflog-threshold T]`` for IPv4 and IPv6.  The match is
deliberately limited to the benchmark's UDP port: a reader that forwards what
it logs to the sink (e.g. nflog-zmq-send over TCP) would otherwise log its own
traffic and feed back on itself.

In sink: ``raw PREROUTING -p udp --dport PORT -j DROP`` (both families), so
the benchmark packets cost no UDP lookup / ICMP error there; its counter tells
how many packets reached the sink.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "lib"))
import testkit  # noqa: E402  (tools/lib/testkit.py: shared with tests/lab.py, the demo)

SINK_PORT_DEFAULT = 9999


def _run(argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True,
                          text=True, **kw)


@dataclass
class NetnsPair:
    """Context manager: gw + sink namespaces, veth pair, NFLOG rule in gw."""

    group: int = 5
    port: int = SINK_PORT_DEFAULT
    threshold: int | None = None     # --nflog-threshold; None = iptables default (0)
    nflog_size: int = 65535
    prefix: str = "nzb"
    drop_in_sink: bool = True
    gw4: str = "10.213.0.1"
    sink4: str = "10.213.0.2"
    gw6: str = "fd42:6e66:6c6f::1"
    sink6: str = "fd42:6e66:6c6f::2"
    gw: str = field(init=False)
    sink: str = field(init=False)

    def __post_init__(self):
        tag = f"{os.getpid()}"
        self.gw = f"{self.prefix}-gw-{tag}"
        self.sink = f"{self.prefix}-sink-{tag}"

    # -- lifecycle -------------------------------------------------------
    def __enter__(self):
        try:
            self._setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False

    def ns(self, name: str) -> str:
        return {"gw": self.gw, "sink": self.sink}.get(name, name)

    def _ip(self, ns, *args):
        return _run(["ip", "-n", self.ns(ns), *args])

    def _setup(self):
        for n in (self.gw, self.sink):
            testkit.add(n)
        testkit.veth(self.gw, "veth-gw", self.sink, "veth-sink", [f"{self.gw4}/24", f"{self.gw6}/64"],
                   [f"{self.sink4}/24", f"{self.sink6}/64"])
        # Static neighbour entries: no ARP/ND wait or unresolved-queue drops.
        mac = {}
        for ns, dev in (("gw", "veth-gw"), ("sink", "veth-sink")):
            out = self._ip(ns, "-o", "link", "show", dev).stdout
            mac[ns] = re.search(r"link/ether ([0-9a-f:]+)", out).group(1)
        for ns, dev, peer4, peer6, peer in (
                ("gw", "veth-gw", self.sink4, self.sink6, "sink"),
                ("sink", "veth-sink", self.gw4, self.gw6, "gw")):
            self._ip(ns, "neigh", "replace", peer4, "lladdr", mac[peer],
                     "dev", dev, "nud", "permanent")
            self._ip(ns, "-6", "neigh", "replace", peer6, "lladdr", mac[peer],
                     "dev", dev, "nud", "permanent")
        for tool, dst in (("iptables", self.sink4), ("ip6tables", self.sink6)):
            # a range: udpgen's FLOWS (sharded sender benchmark) use PORT..PORT+63
            rule = ["-A", "OUTPUT", "-d", dst, "-p", "udp", "--dport",
                    f"{self.port}:{self.port + 63}", "-j", "NFLOG", "--nflog-group",
                    str(self.group), "--nflog-size", str(self.nflog_size)]
            if self.threshold is not None:
                rule += ["--nflog-threshold", str(self.threshold)]
            self.exec_check("gw", [tool, *rule])
            if self.drop_in_sink:
                self.exec_check("sink", [tool, "-t", "raw", "-A", "PREROUTING",
                                         "-p", "udp", "--dport",
                                         f"{self.port}:{self.port + 63}", "-j", "DROP"])

    def teardown(self):
        """Kill whatever still runs in our namespaces (by PID), delete them."""
        for n in (self.gw, self.sink):
            testkit.delete(n, kill=True)

    # -- running things --------------------------------------------------
    def argv(self, ns: str, argv: list[str]) -> list[str]:
        # `ip netns exec` execs the command in place: the Popen pid is the
        # command's pid (no intermediate process).
        return testkit.exec_argv(self.ns(ns), argv)

    def exec_check(self, ns, argv):
        return _run(self.argv(ns, argv))

    def popen(self, ns: str, argv: list[str], cpus: set[int] | None = None,
              **kw) -> subprocess.Popen:
        """Start argv inside namespace ns (optionally pinned to cpus)."""
        if cpus:
            kw["preexec_fn"] = lambda: os.sched_setaffinity(0, cpus)
        return subprocess.Popen(self.argv(ns, argv), **kw)

    # -- counters --------------------------------------------------------
    def zero_counters(self):
        for tool in ("iptables", "ip6tables"):
            self.exec_check("gw", [tool, "-Z", "OUTPUT"])
            if self.drop_in_sink:
                self.exec_check("sink", [tool, "-t", "raw", "-Z", "PREROUTING"])

    def _count(self, ns, table, chain, target):
        total = 0
        for tool in ("iptables", "ip6tables"):
            out = self.exec_check(ns, [tool, "-t", table, "-nvxL", chain]).stdout
            for line in out.splitlines():
                f = line.split()
                if len(f) > 2 and f[2] == target and f[0].isdigit():
                    total += int(f[0])
        return total

    def logged_packets(self) -> int:
        """Packets that hit the NFLOG rule in gw (IPv4 + IPv6)."""
        return self._count("gw", "filter", "OUTPUT", "NFLOG")

    def sink_packets(self) -> int:
        """Benchmark packets that reached the sink (its DROP rule counter)."""
        return self._count("sink", "raw", "PREROUTING", "DROP") if self.drop_in_sink else -1

    def nflog_instances(self, pid: int) -> dict[int, dict]:
        """Bound NFLOG groups as seen from pid's netns (/proc/PID/net/...)."""
        res = {}
        try:
            with open(f"/proc/{pid}/net/netfilter/nfnetlink_log") as f:
                for line in f:
                    v = line.split()
                    if len(v) >= 6:
                        res[int(v[0])] = {"portid": int(v[1]), "qlen": int(v[2]),
                                          "copy_mode": int(v[3]),
                                          "copy_range": int(v[4]),
                                          "flushtimeout": int(v[5])}
        except OSError:
            pass
        return res


# -- CPU accounting ------------------------------------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def stat_cpu_seconds(pid: int, children: bool = True) -> float:
    """user+sys from /proc/PID/stat (utime+stime [+cutime+cstime]), seconds.

    Clock-tick resolution (10 ms): too coarse for a 3 s run of a fast reader,
    which is why cpu_seconds() prefers the process CPU clock."""
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    ticks = int(v[11]) + int(v[12])
    if children:
        ticks += int(v[13]) + int(v[14])     # reaped (waited-for) children
    return ticks / _CLK_TCK


def _proc_clock(pid: int) -> float:
    # clock_getcpuclockid(pid): CPUCLOCK_SCHED of the whole thread group;
    # the kernel allows clock_gettime on any process's clock.  ns precision
    # (sum_exec_runtime), user+sys together.
    return time.clock_gettime(((~pid) << 3) | 2)


def cpu_seconds(pid: int, include_children: bool = True) -> float:
    """Total user+sys CPU of pid (all threads), plus live descendants and
    (from /proc/PID/stat) reaped children if include_children."""
    pids = process_tree(pid) if include_children else [pid]
    total = 0.0
    for p in pids:
        try:
            total += _proc_clock(p)
        except OSError:
            try:
                total += stat_cpu_seconds(p, children=False)
            except OSError:
                pass
    if include_children:
        try:
            with open(f"/proc/{pid}/stat") as f:
                v = f.read().rsplit(")", 1)[1].split()
            total += (int(v[13]) + int(v[14])) / _CLK_TCK
        except OSError:
            pass
    return total


class CpuMeter:
    """Measure a running process's CPU over an interval: start() ... stop()."""

    def __init__(self, pid: int, include_children: bool = True):
        self.pid, self.children = pid, include_children
        self.t0 = self.c0 = None
        self.wall = self.cpu = 0.0

    def start(self):
        self.c0, self.t0 = cpu_seconds(self.pid, self.children), time.monotonic()
        return self

    def stop(self):
        self.cpu = cpu_seconds(self.pid, self.children) - self.c0
        self.wall = time.monotonic() - self.t0
        return self.cpu


def loss(expected: int, seen: int) -> float:
    """Fraction of expected packets the reader did not deliver (>= 0)."""
    if expected <= 0:
        return 0.0
    return max(0.0, (expected - seen) / expected)


def stop_process(p: subprocess.Popen, sig=signal.SIGTERM, timeout=5.0):
    """Signal p (by PID), wait; SIGKILL after timeout. Returns returncode."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    return p.returncode


def wait_rusage(p: subprocess.Popen, timeout: float):
    """Wait for p with a bound; returns (returncode, rusage).  Kills on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru
        if time.monotonic() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru
        time.sleep(0.02)
