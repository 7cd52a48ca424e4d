#!/usr/bin/env python3
"""The live path under attack: throughput with and without each side-service fault.

    sudo .venv/bin/python bench/bench_attacks.py [--packets 100000] [--json OUT]

The real chain in two namespaces (tests/lab.py): nflog-zmq-send reading NFLOG in a
"gw" namespace, nflog-pcap-recv in an "ids" namespace writing a FIFO that a reader
drains. For each scenario, PACKETS datagrams of 200 bytes are sent as fast as one
Python sender goes (no pacing) while the attack runs; the figure is the delivered
throughput (records in the FIFO over the time from the first datagram to the last
record) and its ratio to the same run without attack:

  baseline       nothing else happens
  statsd-dns     both daemons with -m statsd.example.invalid behind a resolver that
                 never answers (each lookup hangs 30 s)
  filters        2 filters naming hosts (silent resolver) + 10 filters of 2 KiB that
                 take libpcap about a second each, sent by 12 query clients
  idle-clients   40 query clients that ask for the whole 64 MiB window again and
                 again and never read (receive HWM 1, credit 64)
  baseline-buffer, baseline-window   the baselines of the next two: the receiver with
                 --buffer-interface (and for the second a full 64 MiB window and 1400-byte
                 packets, as idle-clients)
  handshakes     1 100 TCP connections that send a CURVE greeting and go silent,
                 against a receiver started with a soft limit of 1 024 files (both
                 daemons with CURVE keys); also: the time from the sender's start to
                 its first packet in the FIFO

Then the receiver's peak RSS under the idle-clients attack with a 64 and a 256 MiB
window (the window filled first, traffic turning it over during the attack).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "system"), str(ROOT / "tests")]
from conftest import Pipe, payload_file  # noqa: E402
from lab import Lab, send_udp, tool, wait_until  # noqa: E402
from test_live_path import FLOOD, IDLE_CLIENTS, QUERY, curve_options, rss_mib, silent_resolver, slow_filter  # noqa: E402

#: the run without attack each scenario is compared with (same options, same packets)
BASELINE = {"filters": "baseline-buffer", "idle-clients": "baseline-window"}


class CountingReader(threading.Thread):
    """A FIFO reader that counts whole pcap records as they come (no copy kept: the
    test lab's reader parses everything it holds, too slow for 100 MB)."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.count, self.stop = path, 0, threading.Event()
        self.start()

    def run(self) -> None:
        import select
        fd = os.open(self.path, os.O_RDONLY)
        buf, off = bytearray(), 24   # skip the global header
        try:
            while not self.stop.is_set():
                if not select.select([fd], [], [], 0.2)[0]:
                    continue
                data = os.read(fd, 1 << 20)
                if not data:
                    return
                buf += data
                while len(buf) - off >= 16:
                    n = 16 + int.from_bytes(buf[off + 8:off + 12], "little")
                    if len(buf) - off < n:
                        break
                    off += n
                    self.count += 1
                del buf[:off]
                off = 0
        finally:
            os.close(fd)


def pipe_in(lab: Lab) -> Pipe:
    gw, ids = lab.netns("gw"), lab.netns("ids")
    return Pipe(lab, gw, ids, lab.link(gw, ids), lab.fifo())


def run_scenario(name: str, packets: int, tmp: Path, window: int = 64) -> dict:
    lab = Lab(tmp)
    etc: list[Path] = []
    try:
        pipe = pipe_in(lab)
        recv_opts: list[str] = []
        send_opts: list[str] = []
        if name == "statsd-dns":
            etc += [silent_resolver(pipe, pipe.gw), silent_resolver(pipe, pipe.ids)]
            recv_opts = send_opts = ["-m", "statsd.example.invalid:8125", "--statsd-interval",
                                     "0.2"]
        if name in ("filters", "idle-clients", "baseline-buffer", "baseline-window"):
            recv_opts = ["--buffer-window", str(window), "--buffer-interface", QUERY]
        if name == "filters":
            etc.append(silent_resolver(pipe, pipe.ids))
        if name == "handshakes":
            recv_opts, send_opts = curve_options(tmp)
            prefix = pipe.ids.prefix
            pipe.ids.prefix = lambda: prefix() + ["prlimit", "--nofile=1024:4096", "--"]
        pipe.nflog_rule(9, 7900)
        pipe.start_receiver(*recv_opts)
        if name == "handshakes":
            pipe.ids.prefix = prefix
        reader = CountingReader(pipe.fifo)
        out: dict = {"scenario": name}
        attack = None
        if name == "handshakes":
            attack = lab.popen(pipe.gw.prefix() + [sys.executable, "-c", FLOOD, pipe.link.b4,
                                                   "5555", "1100", "60"], stdout=subprocess.PIPE)
            attack.stdout.readline()
        t_start = time.monotonic()
        sender = pipe.start_sender("9", *send_opts)
        base = 0
        if name in ("idle-clients", "baseline-window"):
            fill = payload_file(tmp / "fill", [b"f" * 1372] * (window * 1000))
            base = send_udp(pipe.gw, pipe.link.b4, 7900, fill, pace=20, timeout=600)
            wait_until(lambda: reader.count >= base, timeout=300, what="window filled")
        if name == "idle-clients":
            attack = lab.popen(pipe.ids.prefix() + [sys.executable, "-c", IDLE_CLIENTS, QUERY,
                                                    "40", "120"], stdout=subprocess.PIPE)
            attack.stdout.readline()
        clients = []
        if name == "filters":
            filters = ["src a.example", "udp and dst gw1.example"] + [slow_filter(i)
                                                                      for i in range(10)]
            clients = [subprocess.Popen(
                pipe.ids.prefix() + [tool("nflog-pcap-query"), QUERY, "--filter", f, "-o",
                                     os.devnull, "--log-format", "json"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for f in filters]
        size = 1372 if name in ("idle-clients", "baseline-window") else 200
        payloads = payload_file(tmp / "p", [b"x" * size] * packets)
        peak = [0.0]
        stop_rss = threading.Event()

        def sample():
            while not stop_rss.is_set():
                peak[0] = max(peak[0], rss_mib(pipe.receiver.pid))
                time.sleep(0.02)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        first = []
        watcher = threading.Thread(target=lambda: first.append(
            wait_until(lambda: reader.count > base and time.monotonic(), 120, 0.01,
                       "first packet")), daemon=True)
        watcher.start()
        sent = send_udp(pipe.gw, pipe.link.b4, 7900, payloads, pace=0, timeout=600)
        try:
            wait_until(lambda: reader.count >= base + sent, timeout=120, interval=0.01,
                       what="every packet")
        except AssertionError:
            pass
        t1 = time.monotonic()
        stop_rss.set()
        got = reader.count - base
        for c in clients:
            c.wait(60)
        if attack is not None:
            attack.kill()
        s_totals = sender.stop(timeout=40)
        r_totals = pipe.receiver.stop(timeout=40)
        reader.stop.set()
        watcher.join(1)
        out.update(sent=sent, delivered=got, seconds=round(t1 - t0, 3),
                   pps=round(got / (t1 - t0)), peak_rss_mib=round(peak[0], 1),
                   dropped={k: v for k, v in {**s_totals["counters"],
                                              **r_totals["counters"]}.items()
                            if k.startswith("dropped.") and v and "evicted" not in k})
        if name == "handshakes" and first:
            out["first_packet_s"] = round(first[0] - t_start, 3)
        return out
    finally:
        lab.close()
        for d in etc:
            shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--scenarios", default="baseline,statsd-dns,handshakes,baseline-buffer,filters,"
                    "baseline-window,idle-clients")
    ap.add_argument("--windows", default="64,256", help="windows (MiB) of the RSS runs")
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, NFLOG)", file=sys.stderr)
        return 2
    results = []
    for name in args.scenarios.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            r = run_scenario(name, args.packets, Path(tmp))
        results.append(r)
        print(json.dumps(r), flush=True)
    pps = {r["scenario"]: r["pps"] for r in results}
    rss = []
    for w in (int(x) for x in args.windows.split(",") if x):
        with tempfile.TemporaryDirectory(prefix=f"bench-rss-{w}-") as tmp:
            r = run_scenario("idle-clients", 60_000, Path(tmp), window=w)
        r["window_mib"] = w
        r["bound_mib"] = 2 * w + 64 + 128
        rss.append(r)
        print(json.dumps(r), flush=True)
    print("\n| scenario | sent | delivered | pkt/s | ratio to its baseline | dropped | note |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ref = BASELINE.get(r["scenario"], "baseline")
        ratio = f"{r['pps'] / pps[ref]:.2f} ({ref})" if ref in pps else "-"
        note = f"first packet {r['first_packet_s']} s after the sender started" \
            if "first_packet_s" in r else ""
        print(f"| {r['scenario']} | {r['sent']} | {r['delivered']} | {r['pps']} | {ratio} | "
              f"{r['dropped'] or 0} | {note} |")
    for r in rss:
        print(f"\nidle clients, window {r['window_mib']} MiB: receiver peak RSS "
              f"{r['peak_rss_mib']} MiB (bound {r['bound_mib']} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"scenarios": results, "rss": rss}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
