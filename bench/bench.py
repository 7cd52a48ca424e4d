#!/usr/bin/env python3
"""NFLOG reader benchmark: loss and CPU per packet of NFLOG readers.

    sudo python3 bench/bench.py --readers tcpdump,ulogd2,ulogd2-4m,cref \
        --sizes 64,1400 --rates max,100000 --duration 3 --runs 3

Needs root, iproute2, iptables, gcc + libnetfilter-log-dev (builds
bench/build/{udpgen,cref}), tcpdump, and for the ulogd2 readers the Debian
packages ulogd2 + ulogd2-pcap.  Traffic only flows inside two namespaces that
this script creates and deletes (see netns.py).

One measurement point (reader x payload size x rate x run):
  1. start the reader's companions (e.g. a receiver in the sink ns), then the
     reader in the gw ns, pinned to --reader-cpus; wait until it has bound the
     NFLOG group (/proc/PID/net/netfilter/nfnetlink_log);
  2. zero the iptables counters, snapshot the reader's CPU (process CPU clock,
     all threads + descendants, ns precision);
  3. run udpgen in gw pinned to --gen-cpus for --duration s (rate bound and a
     count bound);
  4. drain: wait until the kernel queue of the group (qlen) and the reader's
     netlink socket (Rmem) are empty, snapshot CPU again;
  5. stop the reader (its stop signal), then companions; count what it saw.
  loss = 1 - seen / logged, logged = packets that hit the NFLOG rule;
  reader us/pkt = reader CPU over the interval / seen;
  gen us/pkt = udpgen's own CPU / sent (NFLOG copies packets inside the
  sender's system call, so a reader's kernel settings show up here too).

EXTENSION POINT -- adding a reader
----------------------------------
Add a ReaderSpec to READERS (or build one in a module and call
register_reader()).  A spec gives:
  argv(ctx)        the command (runs in ctx.env namespace "gw" by default);
  count(ctx)       packets delivered, read after the reader (and its
                   companions) stopped: parse ctx.stdout(name)/ctx.stderr(name)
                   or files the reader wrote under ctx.tmp;
  setup(ctx)       optional: write config files into ctx.tmp;
  companions(ctx)  optional: processes started before and stopped after the
                   reader, e.g. a receiver in the "sink" namespace;
  stop_signal      how to stop it so that it prints/flushes its count.
ctx has: group, port, size, rate, tmp (per-point dir), env (NetnsPair:
env.sink4/env.sink6/env.gw4/env.gw6), build (dir of udpgen/cref).
Note: the NFLOG rule only matches UDP to ctx.port, so a sender forwarding to
the sink over TCP does not log its own traffic.

The project's sender, once it exists, plugs in like this (receiver command is
whatever counts messages in the sink and prints the count on SIGTERM):

    register_reader(ReaderSpec(
        name="zmq-send",
        argv=lambda c: ["nflog-zmq-send", str(c.group), f"tcp://{c.env.sink4}:5557"],
        companions=lambda c: [Companion("recv", "sink",
                              ["nflog-zmq-recv-count", f"tcp://{c.env.sink4}:5557"])],
        count=lambda c: json_count(c.stdout("recv")),
        requires=["nflog-zmq-send"]))

or without code: --custom 'zmq-send=nflog-zmq-send {group} tcp://{sink4}:5557'
--companion 'zmq-send=sink:CMD' (count = last JSON line with "packets", or
last integer, printed by the companion if there is one, else by the reader).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from netns import CpuMeter, NetnsPair, loss, stop_process, wait_rusage  # noqa: E402

BUILD = os.path.join(HERE, "build")


# ---------------------------------------------------------------- build
def build(build_dir: str = BUILD, cc: str = "gcc") -> dict[str, str]:
    """Compile udpgen.c, cref.c and latreader.c into build_dir (only when out
    of date)."""
    os.makedirs(build_dir, exist_ok=True)
    out = {}
    for name, libs in (("udpgen", []), ("cref", ["-lnetfilter_log"]), ("latreader", [])):
        src, exe = os.path.join(HERE, f"{name}.c"), os.path.join(build_dir, name)
        if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
            subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", exe, src, *libs],
                           check=True)
        out[name] = exe
    return out


# ---------------------------------------------------------------- specs
@dataclass
class Companion:
    name: str
    ns: str                      # "gw" or "sink"
    argv: list[str]
    stop_signal: int = signal.SIGTERM
    settle: float = 0.5          # seconds to wait after starting it


@dataclass
class ReaderSpec:
    name: str
    argv: Callable[[Ctx], list[str]]
    count: Callable[[Ctx], int]
    setup: Callable[[Ctx], None] | None = None
    companions: Callable[[Ctx], list[Companion]] | None = None
    stop_signal: int = signal.SIGTERM
    ns: str = "gw"
    requires: list[str] = field(default_factory=list)   # executables / files
    note: str = ""
    # optional: more figures for the result, read after the reader stopped
    # (e.g. a daemon's own loss counters, by reason)
    details: Callable[[Ctx], dict] | None = None


@dataclass
class Ctx:
    env: NetnsPair
    group: int
    port: int
    size: int
    rate: int
    tmp: str
    build: str

    def path(self, name: str) -> str:
        return os.path.join(self.tmp, name)

    def stdout(self, who: str) -> str:
        return _read(self.path(f"{who}.out"))

    def stderr(self, who: str) -> str:
        return _read(self.path(f"{who}.err"))


def _read(p):
    try:
        with open(p, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def json_count(text: str, key: str = "packets") -> int:
    """Count from the last JSON line having `key`, else the last integer."""
    for line in reversed(text.strip().splitlines()):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and key in d:
            return int(d[key])
    ints = re.findall(r"\b\d+\b", text)
    if not ints:
        raise ValueError("no count in output")
    return int(ints[-1])


def pcap_count(path: str) -> int:
    """Records in a classic pcap file (either byte order, truncated tail ok)."""
    n = 0
    with open(path, "rb") as f:
        hdr = f.read(24)
        if len(hdr) < 24:
            return 0
        magic = struct.unpack("<I", hdr[:4])[0]
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        rec = struct.Struct(endian + "IIII")
        while True:
            h = f.read(16)
            if len(h) < 16:
                break
            incl = rec.unpack(h)[2]
            data = f.read(incl)
            if len(data) < incl:
                break
            n += 1
    return n


# tcpdump: -w /dev/null, count from the statistics it prints on SIGINT.
def _tcpdump_count(c: Ctx) -> int:
    m = re.search(r"(\d+) packets? captured", c.stderr("reader"))
    if not m:
        raise ValueError("tcpdump printed no statistics: " + c.stderr("reader")[-300:])
    return int(m.group(1))


def _ulogd_plugin_dir() -> str:
    for d in glob.glob("/usr/lib/*/ulogd") + ["/usr/lib/ulogd"]:
        if os.path.exists(os.path.join(d, "ulogd_output_PCAP.so")):
            return d
    return "/usr/lib/x86_64-linux-gnu/ulogd"


def _ulogd_setup(extra_log1: str = ""):
    def setup(c: Ctx):
        d = _ulogd_plugin_dir()
        conf = f"""[global]
logfile="{c.path('ulogd.log')}"
loglevel=3
plugin="{d}/ulogd_inppkt_NFLOG.so"
plugin="{d}/ulogd_raw2packet_BASE.so"
plugin="{d}/ulogd_output_PCAP.so"
stack=log1:NFLOG,base1:BASE,pcap1:PCAP

[log1]
group={c.group}
{extra_log1}
[pcap1]
file="{c.path('ulogd.pcap')}"
sync=1
"""
        with open(c.path("ulogd.conf"), "w") as f:
            f.write(conf)
    return setup


def _ulogd_count(c: Ctx) -> int:
    return pcap_count(c.path("ulogd.pcap"))


READERS: dict[str, ReaderSpec] = {}


def register_reader(spec: ReaderSpec):
    READERS[spec.name] = spec


register_reader(ReaderSpec(
    name="tcpdump",
    argv=lambda c: ["tcpdump", "-n", "-i", f"nflog:{c.group}", "-w", "/dev/null"],
    count=_tcpdump_count, stop_signal=signal.SIGINT, requires=["tcpdump"],
    note="count = 'packets captured' from its exit statistics"))

register_reader(ReaderSpec(
    name="ulogd2",
    setup=_ulogd_setup(),
    argv=lambda c: ["ulogd", "-c", c.path("ulogd.conf")],
    count=_ulogd_count, requires=["ulogd"],
    note="NFLOG->BASE->PCAP, Debian defaults (pcap sync=1)"))

register_reader(ReaderSpec(
    name="ulogd2-4m",
    # ulogd only applies netlink_socket_buffer_size if it is < ..._maxsize.
    setup=_ulogd_setup("netlink_socket_buffer_size=4194304\n"
                       "netlink_socket_buffer_maxsize=8388608\n"),
    argv=lambda c: ["ulogd", "-c", c.path("ulogd.conf")],
    count=_ulogd_count, requires=["ulogd"],
    note="as ulogd2 + 4 MiB netlink socket buffer (SO_RCVBUFFORCE)"))

register_reader(ReaderSpec(
    name="cref",
    argv=lambda c: [os.path.join(c.build, "cref"), str(c.group)],
    count=lambda c: json_count(c.stdout("reader")),
    note="batched C libnetfilter_log reader: 16 MiB rcvbuf, nlbufsiz 128 KiB, "
         "qthresh 1024, timeout 10 ms"))


# ------------------------------------------------------- this project

_VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))


def _project(cmd: str) -> str:
    """A console script of this project, next to the interpreter running the
    bench (make bench runs it from .venv)."""
    return os.path.join(_VENV_BIN, cmd)


def log_totals(text: str) -> dict:
    """The counters of a daemon's final 'totals' JSON log record ({} if none)."""
    for line in reversed(text.splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "totals":
            return rec["counters"]
    return {}


def _totals(text: str) -> dict:
    totals = log_totals(text)
    if not totals:
        raise PointError("no totals record in the daemon's log")
    return totals


def project_command(script: str, module: str, tree: str | None = None) -> list[str]:
    """The argv of this project's console ``script`` (``nflog_pipe.<module>``),
    or, with ``tree``, of the same command in another built checkout (its
    ``src`` first on the path), to compare two versions in one run."""
    if tree is None:
        return [_project(script)]
    return ["env", f"PYTHONPATH={os.path.join(tree, 'src')}", sys.executable, "-c",
            f"import sys; from nflog_pipe.{module} import main; sys.exit(main())"]


def start_sender(env: NetnsPair, group: int, **kw) -> subprocess.Popen:
    """nflog-zmq-send (default options, JSON logs) in the gw namespace,
    PUSHing to port 5557 of the sink; returns once its group is bound and it
    has settled (0.5 s).  ``kw`` go to ``env.popen`` (cpus, stderr, ...)."""
    send = env.popen("gw", [_project("nflog-zmq-send"), str(group), f"tcp://{env.sink4}:5557",
                            "--log-format", "json"], **kw)
    deadline = time.monotonic() + 10
    while group not in env.nflog_instances(send.pid):
        if send.poll() is not None or time.monotonic() > deadline:
            stop_process(send)
            raise RuntimeError("sender did not bind its group")
        time.sleep(0.05)
    time.sleep(0.5)
    return send


def _zmq_send_spec(name: str, *extra: str, note: str, tree: str | None = None,
                   shards: int = 1) -> ReaderSpec:
    """``tree``: run the sender of another built checkout (project_command).
    ``shards``: that many destinations (ports 5557...), a receiver each."""
    cmd = project_command("nflog-zmq-send", "sender", tree)
    ports = range(5557, 5557 + shards)
    return ReaderSpec(
        name=name,
        argv=lambda c: [*cmd, str(c.group), *(f"tcp://{c.env.sink4}:{p}" for p in ports),
                        "--log-format", "json", *extra],
        companions=lambda c: [Companion("recv" if p == 5557 else f"recv{p}", "sink", [
            _project("nflog-pcap-recv"), f"tcp://{c.env.sink4}:{p}", "/dev/null",
            "--log-format", "json"]) for p in ports],
        # delivered = what the receivers wrote; the sender's own view of its
        # losses is in its totals (kernel_overrun, queue_full)
        count=lambda c: sum(_totals(c.stderr("recv" if p == 5557 else f"recv{p}"))["packets_out"]
                            for p in ports),
        details=lambda c: {"sender_" + k: v for k, v in _totals(c.stderr("reader")).items()
                           if k.startswith(("dropped.", "kernel_")) or k == "frames_out"},
        requires=[_project("nflog-zmq-send"), _project("nflog-pcap-recv")],
        note=note)


register_reader(_zmq_send_spec(
    "nflog-zmq-send", note="this project, default options, to nflog-pcap-recv in the sink "
    "namespace writing /dev/null; count = records the receiver wrote"))
for _n in (2, 4):
    register_reader(_zmq_send_spec(
        f"nflog-zmq-send-{_n}shards", "--shard-key", "ports", shards=_n,
        note=f"this project, {_n} destinations (flow-sharded by ports: run with --flows), a "
        "receiver each writing /dev/null; count = records the receivers wrote"))


def custom_spec(name: str, cmd: str, companion: str | None) -> ReaderSpec:
    def fmt(c: Ctx, s: str) -> list[str]:
        return shlex.split(s.format(group=c.group, port=c.port, sink4=c.env.sink4,
                                    sink6=c.env.sink6, gw4=c.env.gw4,
                                    gw6=c.env.gw6, tmp=c.tmp))
    comps = None
    if companion:
        ns, ccmd = companion.split(":", 1)
        comps = lambda c: [Companion("comp", ns, fmt(c, ccmd))]  # noqa: E731
    return ReaderSpec(
        name=name, argv=lambda c: fmt(c, cmd), companions=comps,
        count=lambda c: json_count(c.stdout("comp" if companion else "reader")),
        requires=[shlex.split(cmd)[0]])


# ---------------------------------------------------------------- running
class PointError(Exception):
    pass


def _netlink_rmem_drops(pid: int, portid: int):
    try:
        with open(f"/proc/{pid}/net/netlink") as f:
            next(f)
            for line in f:
                v = line.split()
                if len(v) >= 9 and int(v[1]) == 12 and int(v[2]) == portid:
                    return int(v[4]), int(v[8])
    except (OSError, ValueError, StopIteration):
        pass
    return 0, 0


def run_point(env, spec, exe, size, rate, args, run_idx):
    tmp = tempfile.mkdtemp(prefix=f"nzb-{spec.name}-")
    ctx = Ctx(env=env, group=args.group, port=args.port, size=size, rate=rate,
              tmp=tmp, build=os.path.dirname(exe["udpgen"]))
    procs: list[tuple[subprocess.Popen, int, object, object]] = []
    reader = gen = None
    try:
        if spec.setup:
            spec.setup(ctx)
        comps = spec.companions(ctx) if spec.companions else []
        for comp in comps:
            o, e = open(ctx.path(f"{comp.name}.out"), "w"), open(ctx.path(f"{comp.name}.err"), "w")
            p = env.popen(comp.ns, comp.argv, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                          cpus=args.companion_cpus)
            procs.append((p, comp.stop_signal, o, e))
            time.sleep(comp.settle)
        o, e = open(ctx.path("reader.out"), "w"), open(ctx.path("reader.err"), "w")
        reader = env.popen(spec.ns, spec.argv(ctx), cpus=args.reader_cpus,
                           stdout=o, stderr=e, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while args.group not in env.nflog_instances(reader.pid):
            if reader.poll() is not None or time.monotonic() > deadline:
                raise PointError(f"{spec.name} did not bind group {args.group}: "
                                 + ctx.stderr("reader")[-400:] + _read(ctx.path("ulogd.log"))[-400:])
            time.sleep(0.05)
        time.sleep(0.3)   # let it finish configuring (mode, buffers)
        inst = env.nflog_instances(reader.pid)[args.group]
        env.zero_counters()
        _, drops0 = _netlink_rmem_drops(reader.pid, inst["portid"])
        meter = CpuMeter(reader.pid).start()

        count = rate * args.duration if rate else int(args.duration * 2_000_000)
        addr = env.sink6 if args.ipv6 else env.sink4
        gen = env.popen("gw", [exe["udpgen"], addr, str(args.port), str(size),
                               str(rate), str(int(count)), str(args.duration), "32",
                               str(args.flows)],
                        cpus=args.gen_cpus, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
        rc, ru = wait_rusage(gen, args.duration + 10)
        gout = json.loads(gen.stdout.read().strip().splitlines()[-1])
        gen_cpu = ru.ru_utime + ru.ru_stime

        # drain: kernel group queue and reader's socket empty (bounded)
        t_end = time.monotonic() + args.drain_max
        time.sleep(0.1)
        while time.monotonic() < t_end:
            q = env.nflog_instances(reader.pid).get(args.group, {}).get("qlen", 0)
            rmem, _ = _netlink_rmem_drops(reader.pid, inst["portid"])
            if q == 0 and rmem == 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        cpu = meter.stop()
        _, drops1 = _netlink_rmem_drops(reader.pid, inst["portid"])
        logged, at_sink = env.logged_packets(), env.sink_packets()

        dead = [p.args for p, *_ in procs if p.poll() is not None]
        if dead:
            raise PointError(f"companion exited early: {dead}")
        stop_process(reader, spec.stop_signal)
        for p, sig, *_ in procs:
            stop_process(p, sig)
        seen = spec.count(ctx)
        details = spec.details(ctx) if spec.details else {}
        return {**details,
            "reader": spec.name, "size": size, "rate": rate, "run": run_idx,
            "sent": gout["sent"], "gen_pps": gout["pps"], "gen_errors": gout["errors"],
            "logged": logged, "at_sink": at_sink, "seen": seen,
            "loss": loss(logged, seen), "reader_cpu_s": cpu,
            "reader_us_pkt": cpu / seen * 1e6 if seen else float("nan"),
            "gen_cpu_s": gen_cpu,
            "gen_us_pkt": gen_cpu / gout["sent"] * 1e6 if gout["sent"] else float("nan"),
            "sock_drops": drops1 - drops0,
            "flushtimeout": inst["flushtimeout"],
        }
    finally:
        for p in [gen, reader] + [x[0] for x in procs]:
            if p is not None and p.poll() is None:
                stop_process(p, signal.SIGKILL, 2)
        for _, _, o, e in procs:
            o.close(), e.close()
        if reader is not None:
            o.close(), e.close()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _rate_label(r):
    return "max" if r == 0 else f"{r // 1000}k" if r % 1000 == 0 else str(r)


def table(results, readers, sizes, rates) -> str:
    med = statistics.median
    lines = ["| reader | size B | rate | sent pps | loss % | reader µs/pkt | gen µs/pkt | runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in readers:
        for s in sizes:
            for rate in rates:
                rs = [x for x in results if x["reader"] == r and x["size"] == s
                      and x["rate"] == rate]
                if not rs:
                    continue
                lines.append(
                    f"| {r} | {s} | {_rate_label(rate)} | {med(x['gen_pps'] for x in rs):,.0f} "
                    f"| {100 * med(x['loss'] for x in rs):.2f} "
                    f"| {med(x['reader_us_pkt'] for x in rs):.3f} "
                    f"| {med(x['gen_us_pkt'] for x in rs):.3f} | {len(rs)} |")
    return "\n".join(lines)


def cpus_arg(s):
    """A CPU list option: '0,1' -> {0, 1}; '' -> None (no affinity)."""
    return {int(x) for x in s.split(",")} if s else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readers", default="tcpdump,ulogd2,ulogd2-4m,cref",
                    help=f"comma list from: {', '.join(READERS)} (+ --custom names)")
    ap.add_argument("--sizes", default="64,1400", help="UDP payload sizes")
    ap.add_argument("--rates", default="max,100000", help="pps; 'max' = as fast as possible")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of traffic per point")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--group", type=int, default=5, help="NFLOG group")
    ap.add_argument("--port", type=int, default=9999, help="UDP destination port")
    ap.add_argument("--threshold", type=int, default=None, help="--nflog-threshold of the rule")
    ap.add_argument("--flows", type=int, default=1, help="UDP flows (destination ports "
                    "PORT..PORT+FLOWS-1, at most 64): the sharded senders need several")
    ap.add_argument("--ipv6", action="store_true", help="send to the sink's IPv6 address")
    ap.add_argument("--gen-cpus", type=cpus_arg, default={0}, help="udpgen CPU affinity ('' = none)")
    ap.add_argument("--reader-cpus", type=cpus_arg, default={1}, help="reader CPU affinity ('' = none)")
    ap.add_argument("--companion-cpus", type=cpus_arg, default=None,
                    help="companions' (e.g. receivers') CPU affinity ('' = none, the default): "
                    "keeps them off the reader's CPU, whose caches they would share")
    ap.add_argument("--drain-max", type=float, default=3.0, help="max seconds to wait for queues to empty")
    ap.add_argument("--custom", action="append", default=[], metavar="NAME=CMD",
                    help="extra reader; CMD may use {group} {port} {sink4} {sink6} {tmp}")
    ap.add_argument("--companion", action="append", default=[], metavar="NAME=NS:CMD",
                    help="companion process for custom reader NAME (its stdout gives the count)")
    ap.add_argument("--sender-tree", action="append", default=[], metavar="NAME=DIR",
                    help="extra reader NAME: nflog-zmq-send of the built checkout DIR "
                    "(e.g. a git worktree of the previous commit after make install's "
                    "build step), measured like nflog-zmq-send: before/after in one run")
    ap.add_argument("--json", help="write raw per-run results to this file")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        sys.exit("bench.py needs root (namespaces, iptables, NFLOG)")
    comps = dict(c.split("=", 1) for c in args.companion)
    for c in args.custom:
        name, cmd = c.split("=", 1)
        register_reader(custom_spec(name, cmd, comps.get(name)))
    for t in args.sender_tree:
        name, tree = t.split("=", 1)
        if not os.path.isdir(os.path.join(tree, "src", "nflog_pipe")):
            sys.exit(f"--sender-tree {name}: no src/nflog_pipe under {tree}")
        register_reader(_zmq_send_spec(name, tree=os.path.abspath(tree),
                                       note=f"nflog-zmq-send from {tree}"))
    readers = [r for r in args.readers.split(",") if r]
    for r in readers:
        if r not in READERS:
            sys.exit(f"unknown reader {r!r}; known: {', '.join(READERS)}")
        missing = [q for q in READERS[r].requires if not shutil.which(q) and not os.path.exists(q)]
        if missing:
            sys.exit(f"reader {r}: missing {missing} (ulogd: apt-get install ulogd2 ulogd2-pcap)")
    sizes = [int(s) for s in args.sizes.split(",")]
    rates = [0 if r == "max" else int(r) for r in args.rates.split(",")]
    exe = build()

    results, t0 = [], time.monotonic()
    with NetnsPair(group=args.group, port=args.port, threshold=args.threshold) as env:
        for run in range(args.runs):
            for r in readers:
                for s in sizes:
                    for rate in rates:
                        try:
                            res = run_point(env, READERS[r], exe, s, rate, args, run)
                        except (PointError, ValueError, OSError) as ex:
                            print(f"# {r} size={s} rate={_rate_label(rate)} run={run}: FAILED {ex}",
                                  file=sys.stderr)
                            continue
                        results.append(res)
                        print(f"# {r:10} {s:5}B {_rate_label(rate):>5} run {run}: sent {res['sent']}"
                              f" logged {res['logged']} seen {res['seen']} loss {100*res['loss']:.2f}%"
                              f" reader {res['reader_us_pkt']:.3f} us/pkt gen {res['gen_us_pkt']:.3f}"
                              f" us/pkt sockdrops {res['sock_drops']}"
                              + "".join(f" {k} {v}" for k, v in res.items()
                                        if k.startswith("sender_dropped") and v),
                              file=sys.stderr, flush=True)
    elapsed = time.monotonic() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: (sorted(v) if isinstance(v, set) else v)
                                for k, v in vars(args).items()},
                       "elapsed_s": elapsed, "results": results}, f, indent=1)
    print(table(results, readers, sizes, rates))
    print(f"\n{len(results)} points, {args.duration:g} s each, medians of {args.runs} runs; "
          f"total {elapsed:.0f} s. loss = 1 - seen/logged (NFLOG rule counter).")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
