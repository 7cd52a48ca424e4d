"""Scaffolding shared by the tests, the benchmarks and the demo: network namespaces
joined by veth pairs (behind tests/lab.py, bench/netns.py and tools/demo.py), a free
loopback port, and the sample packet the tests send.

Standard library only; the namespace functions need root and iproute2.  Import with
``sys.path.insert(0, str(ROOT / "tools" / "lib"))`` then ``import testkit``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

#: IPv4 UDP 127.0.0.1:12345 -> 127.0.0.1:53, one payload byte ("A"): 29 bytes
IPV4_UDP = bytes.fromhex("4500001d00004000401100007f0000017f000001303900350009000041")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for loopback tests and benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def exec_argv(ns: str, argv: list[str] | tuple[str, ...]) -> list[str]:
    """``argv`` run inside ``ns``; ``ip netns exec`` execs it in place (the Popen pid
    is the command's own)."""
    return ["ip", "netns", "exec", ns, *argv]


def add(ns: str) -> None:
    """A new namespace with its loopback up."""
    run("ip", "netns", "add", ns)
    run("ip", "-n", ns, "link", "set", "lo", "up")


def veth(ns_a: str, dev_a: str, ns_b: str, dev_b: str, addrs_a: list[str],
         addrs_b: list[str]) -> None:
    """A veth pair ``dev_a`` (in ``ns_a``) -- ``dev_b`` (in ``ns_b``), with the given
    addresses (``10.0.0.1/24``, ``fd00::1/64``: IPv6 without duplicate detection), up."""
    run("ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b,
        "netns", ns_b)
    for ns, dev, addrs in ((ns_a, dev_a, addrs_a), (ns_b, dev_b, addrs_b)):
        for a in addrs:
            run("ip", "-n", ns, "addr", "add", a, "dev", dev, *(("nodad",) if ":" in a else ()))
        run("ip", "-n", ns, "link", "set", dev, "up")


def delete(ns: str, kill: bool = False) -> None:
    """Remove ``ns`` (and its /etc/netns files); with ``kill``, first SIGKILL what still
    runs in it (by PID)."""
    if kill:
        for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    run("ip", "netns", "del", ns, check=False)
    shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
