"""Test lab: network namespaces joined by veth pairs, the real daemons as
subprocesses, real FIFO readers.  Used by the system tests (root only).

Every namespace, process and rule made here is removed by ``Lab.close``
(processes by PID).  Traffic goes only to addresses inside these namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
_ids = itertools.count()
sys.path.insert(0, str(ROOT / "tools" / "lib"))
import testkit  # noqa: E402  (tools/lib/testkit.py: shared with bench/ and the demo)


def tool(name: str) -> str:
    """Path of a console script of this project (next to the interpreter)."""
    p = VENV_BIN / name
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: run 'make install'")
    return str(p)


run = testkit.run
free_port = testkit.free_port
#: the sample packet of the tests: IPv4 UDP, 29 bytes
PKT = testkit.IPV4_UDP


def record_area(n: int, tag: bytes = b"") -> bytes:
    """n pcap records of the sample packet (plus ``tag``), timestamps 0..n-1 s."""
    from nflog_pipe import pcap
    return b"".join(pcap.record(i, 0, PKT + tag) for i in range(n))


class Daemon:
    """A daemon subprocess with its JSON log captured to a file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "w")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log,
                                     env=full_env, start_new_session=True)
        self.pid = self.proc.pid

    def records(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"message": line, "unparsed": True})
        return out

    def wait_log(self, event: str, timeout: float = 10.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.records():
                if r.get("event") == event and all(r.get(k) == v for k, v in match.items()):
                    return r
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited {self.proc.returncode}:\n"
                                     + self.log_path.read_text()[-3000:])
            time.sleep(0.05)
        raise AssertionError(f"no {event} record in {self.log_path}:\n"
                             + self.log_path.read_text()[-3000:])

    def stop(self, timeout: float = 10.0) -> dict:
        """SIGTERM, wait, return the final totals record."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"{self.argv} ignored SIGTERM for {timeout}s") from None
        self._log.close()
        totals = [r for r in self.records() if r.get("event") == "totals"]
        assert self.proc.returncode == 0, (self.proc.returncode, self.log_path.read_text()[-3000:])
        assert totals, self.log_path.read_text()[-3000:]
        return totals[-1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()


class Netns:
    def __init__(self, lab: Lab, role: str):
        self.name = f"nzpt{os.getpid() % 100000}x{next(_ids)}{role[:4]}"
        self.lab = lab
        testkit.add(self.name)

    def exec(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(*testkit.exec_argv(self.name, cmd), check=check, **kw)

    def prefix(self) -> list[str]:
        return testkit.exec_argv(self.name, [])

    def iptables(self, *rule: str, v6: bool = False) -> None:
        self.exec("ip6tables" if v6 else "iptables", *rule)

    def ipv6_only(self) -> None:
        """No IPv4 address at all in this namespace, not even 127.0.0.1."""
        self.exec("ip", "-4", "addr", "flush", "dev", "lo")

    def hosts(self, text: str) -> None:
        """/etc/hosts as seen inside this namespace (``ip netns exec``
        bind-mounts /etc/netns/NAME/hosts); removed by ``Lab.close``."""
        d = Path("/etc/netns") / self.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts").write_text(text)


class Link:
    """A veth pair between two namespaces with IPv4 /30 (unless ``v4`` is
    False) and IPv6 /64."""

    def __init__(self, a: Netns, b: Netns, index: int, v4: bool = True):
        self.a, self.b = a, b
        self.v4 = v4
        self.a4, self.b4 = f"10.231.{index}.1", f"10.231.{index}.2"
        self.a6, self.b6 = f"fd00:231:{index}::1", f"fd00:231:{index}::2"
        ia, ib = f"nzv{index}a{os.getpid() % 1000}", f"nzv{index}b{os.getpid() % 1000}"
        testkit.veth(a.name, ia, b.name, ib,
                   [f"{self.a4}/30"] * v4 + [f"{self.a6}/64"], [f"{self.b4}/30"] * v4 + [f"{self.b6}/64"])
        self.dev_a, self.dev_b = ia, ib


class FifoReader(threading.Thread):
    """A real FIFO reader: opens the FIFO (blocking, like an IDS) and keeps
    every byte; ``close()`` makes it stop and close its end."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.data = bytearray()
        self._stop_r, self._stop_w = os.pipe()
        self.opened = threading.Event()
        self.start()

    def run(self) -> None:
        import select
        fd = os.open(self.path, os.O_RDONLY)
        self.opened.set()
        try:
            while True:
                r, _, _ = select.select([fd, self._stop_r], [], [], 1.0)
                if self._stop_r in r:
                    # take what is already in the pipe, then leave
                    os.set_blocking(fd, False)
                    try:
                        while chunk := os.read(fd, 1 << 20):
                            self.data += chunk
                    except BlockingIOError:
                        pass
                    return
                if fd in r:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        return
                    self.data += chunk
        finally:
            os.close(fd)

    def close(self, timeout: float = 5.0) -> bytes:
        os.write(self._stop_w, b"x")
        self.join(timeout)
        return bytes(self.data)


class Lab:
    """Namespaces, links, daemons and temp files of one test."""

    def __init__(self, tmp: Path):
        if os.geteuid() != 0:
            raise RuntimeError("system tests need root (network namespaces, iptables NFLOG)")
        for t in ("ip", "iptables", "ip6tables", "tcpdump"):
            if not shutil.which(t):
                raise RuntimeError(f"system tests need {t}")
        self.tmp = tmp
        self.ns: list[Netns] = []
        self.daemons: list[Daemon] = []
        self.procs: list[subprocess.Popen] = []
        self.links = 0

    def netns(self, role: str) -> Netns:
        ns = Netns(self, role)
        self.ns.append(ns)
        return ns

    def link(self, a: Netns, b: Netns, v4: bool = True) -> Link:
        self.links += 1
        return Link(a, b, (os.getpid() + self.links * 7) % 250 + 1, v4)

    def daemon(self, ns: Netns | None, name: str, *args: str, env: dict | None = None,
               tag: str = "") -> Daemon:
        argv = (ns.prefix() if ns else []) + [tool(name), *args, "--log-format", "json"]
        d = Daemon(argv, self.tmp / f"{name}{tag}-{len(self.daemons)}.log", env)
        self.daemons.append(d)
        return d

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def fifo(self, name: str = "out.pcap") -> Path:
        p = self.tmp / name
        os.mkfifo(p)
        return p

    def close(self) -> None:
        for d in self.daemons:
            d.kill()
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        for ns in self.ns:
            testkit.delete(ns.name)


def send_udp(ns: Netns, dst: str, port: int, payloads_file: Path, pace: int = 200,
             src_port: int = 0, timeout: float = 120.0, rate: float = 0) -> int:
    """Send the datagrams listed in ``payloads_file`` (see tools/udpsend.py)
    from inside ``ns``, ``rate`` per second if given.  Returns how many were
    sent."""
    r = ns.exec(sys.executable, str(ROOT / "tests" / "tools" / "udpsend.py"), dst, str(port),
                str(payloads_file), str(pace), str(src_port), str(rate), timeout=timeout)
    return int(r.stdout.strip())



def wait_until(cond, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def newest_fitting(records: list[bytes], budget: int) -> list[bytes]:
    """The newest records whose sizes add up to at most ``budget``, in order:
    what a traffic buffer of that window keeps (the test oracle)."""
    kept, total = [], 0
    for r in reversed(records):
        if total + len(r) > budget:
            break
        kept.append(r)
        total += len(r)
    return kept[::-1]


def pcap_prefix(data: bytes) -> tuple[int, int]:
    """A reader's stream, checked from byte 0: a pcap header (LINKTYPE_RAW,
    little-endian, as the receiver writes it), then nothing but records; a
    reader that left early may hold a prefix of that, its last record cut.
    Returns (records received whole, bytes of a cut last record); raises
    AssertionError on anything else (the oracle of the restart tests)."""
    from nflog_pipe import pcap

    head = pcap.GLOBAL_HEADER_BYTES
    assert head.startswith(data[:24]), f"stream does not start with a pcap header: {data[:24]!r}"
    whole, off = 0, 24
    while off + 16 <= len(data):
        sec, usec, caplen, origlen = pcap.RECORD_HEADER.unpack_from(data, off)
        assert usec < 1_000_000 and 20 <= caplen <= 65535 and caplen <= origlen, \
            f"not a record at offset {off}: {data[off:off + 16]!r}"
        assert data[off + 16 : off + 17] in (b"", *(bytes([b]) for b in range(0x40, 0x70))), \
            f"record at {off} is not IP"
        if off + 16 + caplen > len(data):
            break
        whole, off = whole + 1, off + 16 + caplen
    return whole, max(0, len(data) - off) if len(data) > 24 else 0
