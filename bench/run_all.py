#!/usr/bin/env python3
"""The whole benchmark suite (``make bench``): NFLOG readers side by side,
end-to-end latency, receiver throughput and memory under overload, then one
combined markdown report with each goal of issue 8 checked.

    sudo .venv/bin/python bench/run_all.py [--runs 3] [--quick] [--out bench/results/run_all]

Steps (each a script of its own, runnable alone):
  1. bench.py     tcpdump, ulogd2, ulogd2-4m, cref, nflog-zmq-send; 64 and
                  1400 B; max rate and 100 kpps; --runs runs of 3 s
  2. latency.py   sendto() -> record in the receiver's FIFO at 1k, 10k, 100k
                  packets/s (64 B) and 100k of 1400 B, --runs runs of 5 s;
                  content checked end to end
  3. bench_recv.py  nflog-pcap-recv -> FIFO on one core, 64 B packets, with
                  and without --buffer-interface, --runs runs of 5 s
  4. rss.py       peak RSS of sender and receiver under sustained overload
Needs root (namespaces, iptables), gcc and libnetfilter-log-dev, tcpdump,
ulogd2 + ulogd2-pcap.  Raw results go to OUT_*.json, the report to OUT.md
and stdout.  About 10 minutes on the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

HERE = os.path.dirname(os.path.abspath(__file__))
READERS = "tcpdump,ulogd2,ulogd2-4m,cref,nflog-zmq-send"
SENDER = "nflog-zmq-send"


def ensure_packages() -> None:
    """The reference readers come from Debian (tcpdump, ulogd2 + its pcap
    output plugin): install what is missing, as the issue asks."""
    missing = [p for p, ok in (("tcpdump", shutil.which("tcpdump")),
                                ("ulogd2", shutil.which("ulogd")),
                                ("ulogd2-pcap", glob.glob("/usr/lib/*/ulogd/ulogd_output_PCAP.so")
                                 + glob.glob("/usr/lib/ulogd/ulogd_output_PCAP.so")))
               if not ok]
    if missing and shutil.which("apt-get"):
        _run(["apt-get", "install", "-y", "-q", *missing])


def _run(argv: list[str]) -> None:
    print("+ " + " ".join(shlex.quote(x) for x in argv), file=sys.stderr, flush=True)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}"


# -- report ------------------------------------------------------------------------------------

def _pts(results, reader, size, rate):
    return [x for x in results if x["reader"] == reader and x["size"] == size and x["rate"] == rate]


def readers_table(results: list[dict], readers: list[str]) -> str:
    med = statistics.median
    head = ["| reader | 64 B max: sent pkt/s | lost % | 64 B 100k: lost % | µs/pkt "
            "| 1400 B max: sent pkt/s | lost % | 1400 B 100k: lost % | µs/pkt | runs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in readers:
        cells, runs = [], 0
        for size in (64, 1400):
            mx, hk = _pts(results, r, size, 0), _pts(results, r, size, 100000)
            runs = max(runs, len(mx), len(hk))
            cells += [f"{med(x['gen_pps'] for x in mx):,.0f}" if mx else "-",
                      f"{100 * med(x['loss'] for x in mx):.2f}" if mx else "-",
                      f"{100 * med(x['loss'] for x in hk):.2f}" if hk else "-",
                      f"{med(x['reader_us_pkt'] for x in hk):.2f}" if hk else "-"]
        head.append(f"| {r} | " + " | ".join(cells) + f" | {runs} |")
    return "\n".join(head)


def goals(readers: list[dict], latency: dict, recv: dict, rss: list[dict]) -> list[tuple]:
    """(goal, measured, met) rows."""
    med = statistics.median
    rows = []
    for size in (64, 1400):
        mx = _pts(readers, SENDER, size, 0)
        if mx:
            lost = [x["logged"] - x["seen"] for x in mx]
            rows.append((f"sender: 0 lost at the generator's max rate, {size} B",
                         f"lost {', '.join(str(n) for n in lost)} packets in {len(mx)} runs of "
                         f"{med(x['logged'] for x in mx):,.0f} at "
                         f"{med(x['gen_pps'] for x in mx):,.0f} pkt/s", all(n <= 0 for n in lost)))
    for size in (64, 1400):
        hk = _pts(readers, SENDER, size, 100000)
        if hk:
            us = med(x["reader_us_pkt"] for x in hk)
            each = ", ".join(f"{x['reader_us_pkt']:.2f}" for x in hk)
            rows.append((f"sender: <= 1.0 µs CPU per packet at 100 kpps, {size} B",
                         f"{us:.2f} µs (runs: {each})", us <= 1.0))
    for s in recv.values():
        if s["rate"] == 0:
            rows.append((f"receiver ({s['mode']}): >= 1 000 000 pkt/s of 64 B into a FIFO, one core",
                         f"{s['pps']:,.0f} pkt/s ({s['recv_cores']:.2f} cores, "
                         f"{s['recv_us_pkt']:.3f} µs/pkt)", s["pps"] >= 1e6))
    lat = latency.get("1000x64")
    if lat:
        rows.append(("latency at 1 000 pkt/s: p50 < 5 ms, p99 < 20 ms",
                     f"p50 {lat['p50_us'] / 1e3:.2f} ms, p99 {lat['p99_us'] / 1e3:.2f} ms",
                     lat["p50_us"] < 5000 and lat["p99_us"] < 20000))
    damaged = [k for k, s in latency.items() if not s["intact"]]
    rows.append(("content end to end (latency runs): every packet once, payload intact",
                 "damaged in " + ", ".join(damaged) if damaged else
                 f"intact ({sum(s['records'] for s in latency.values()):,} packets)", not damaged))
    for r in rss:
        peak = max(r["peak"], r["hwm"])
        rows.append((f"memory {r['scenario']}: RSS <= {r['bound_text']}",
                     f"peak {peak / 2**20:.0f} MiB (bound {r['bound'] / 2**20:.0f} MiB)",
                     peak <= r["bound"]))
    return rows


def report(a, readers: list[dict], latency: dict, recv: dict, rss: list[dict],
           t_start: float, loads: tuple[str, str]) -> str:
    sys.path.insert(0, HERE)
    import bench_recv
    import latency as latency_mod
    import rss as rss_mod

    import bench

    rnames = a.readers.split(",")
    out = [f"# Benchmark run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}", "",
           f"Machine: {machine()}.  Load average at start {loads[0]}, at end {loads[1]}.  "
           f"Suite time {(time.monotonic() - t_start) / 60:.1f} min.", "",
           "## Goals", "", "| goal | measured (median of runs) | met |", "|---|---|---|"]
    out += [f"| {g} | {m} | {'yes' if ok else '**no**'} |"
            for g, m, ok in goals(readers, latency, recv, rss)]
    out += ["", "## NFLOG readers (medians; CPU = user + system of the whole process tree)", "",
            readers_table(readers, rnames), "",
            "Per point (gen µs/pkt: the generator's own CPU per packet, which includes the "
            "NFLOG copy made in its system call):", "",
            bench.table(readers, rnames, [64, 1400], [0, 100000]), "",
            "## Latency: udpgen sendto() -> record readable in the receiver's FIFO", "",
            latency_mod.table(latency), "",
            "## Receiver: frames -> FIFO drained by dd, receiver pinned to one CPU", "",
            bench_recv.table(recv), "",
            "## Memory under sustained overload", "", rss_mod.table(rss), ""]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--readers", default=READERS)
    ap.add_argument("--quick", action="store_true", help="1 run, shorter points (a smoke test)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "run_all"))
    ap.add_argument("--skip", default="", help="comma list of steps to skip: readers,latency,"
                    "recv,rss (their previous OUT_*.json is reused)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run_all.py needs root (namespaces, iptables, NFLOG)")
    if a.quick:
        a.runs = 1
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    py, skip = sys.executable, set(a.skip.split(","))
    t0, load0 = time.monotonic(), _load()
    runs = str(a.runs)
    steps = {
        "readers": [py, os.path.join(HERE, "bench.py"), "--readers", a.readers,
                    "--sizes", "64,1400", "--rates", "max,100000", "--runs", runs,
                    "--duration", "2" if a.quick else "3", "--json", a.out + "_readers.json"],
        "latency": [py, os.path.join(HERE, "latency.py"), "--runs", runs,
                    "--duration", "2" if a.quick else "5", "--json", a.out + "_latency.json"],
        "recv": [py, os.path.join(HERE, "bench_recv.py"), "--runs", runs,
                 "--seconds", "2" if a.quick else "5", "--json", a.out + "_recv.json"],
        "rss": [py, os.path.join(HERE, "rss.py"), "--duration", "3" if a.quick else "6",
                "--json", a.out + "_rss.json"],
    }
    if "readers" not in skip:
        ensure_packages()
    for name, argv_ in steps.items():
        if name not in skip:
            _run(argv_)

    def load(name):
        with open(f"{a.out}_{name}.json") as f:
            return json.load(f)
    text = report(a, load("readers")["results"], load("latency")["summary"],
                  load("recv")["summary"], load("rss"), t0, (load0, _load()))
    text += ("\nCommand: " + " ".join(shlex.quote(x) for x in [py, *sys.argv]) + "\n")
    with open(a.out + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
