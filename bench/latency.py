#!/usr/bin/env python3
"""End-to-end latency: udpgen's sendto() in the gateway namespace to the
record appearing in the receiver's FIFO.

    sudo .venv/bin/python bench/latency.py [--points 1000,10000,100000,100000x1400]
                                           [--duration 5] [--runs 3] [--json OUT]

A point is RATE (packets/s, 64-byte UDP payloads) or RATExSIZE.  One point
and run, default options on both daemons:
  * ``latreader FIFO`` (bench/latreader.c) reads the FIFO, stamps each
    read() with CLOCK_REALTIME and subtracts the send time udpgen wrote into
    each packet (same host, same clock);
  * ``nflog-pcap-recv tcp://SINK:5557 FIFO`` in the sink namespace;
  * ``nflog-zmq-send GROUP tcp://SINK:5557`` in the gw namespace, pinned
    like bench.py's readers (--reader-cpus);
  * udpgen in gw for --duration s; below 50 000 packets/s one packet per
    sendmmsg() (evenly spaced, every packet stamped just before its own
    send), above that batches of 32.
Then the sender and receiver stop, the FIFO closes, and latreader prints
percentiles over every packet of the run, and whether the content arrived
intact: every sequence number exactly once, the payload pattern unchanged
(the sender hands its frame buffers to ZeroMQ without copying them: a buffer
reused too early would show here).  The adaptive kernel batch size
(``--libnflog-qthresh auto``) starts at 1 and follows the rate within
10 ms, so the first packets of a run are not treated differently.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from netns import NetnsPair, stop_process  # noqa: E402

from bench import _project, build, cpus_arg, log_totals, start_sender  # noqa: E402

KEYS = ("p50_us", "p90_us", "p99_us", "max_us")


def _totals(path: str) -> dict:
    with open(path, errors="replace") as f:
        return log_totals(f.read())


def run_point(env: NetnsPair, exe: dict, rate: int, size: int, a, run: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="nzb-lat-")
    fifo = os.path.join(tmp, "out.pcap")
    os.mkfifo(fifo)
    procs = []
    try:
        count = int(rate * a.duration)
        lat = subprocess.Popen([exe["latreader"], fifo, str(max(count, 1))],
                               stdout=subprocess.PIPE, text=True)
        procs.append(lat)
        rerr = open(os.path.join(tmp, "recv.err"), "w")
        recv = env.popen("sink", [_project("nflog-pcap-recv"), f"tcp://{env.sink4}:5557", fifo,
                                  "--log-format", "json"], stderr=rerr, stdout=subprocess.DEVNULL)
        procs.append(recv)
        serr = open(os.path.join(tmp, "send.err"), "w")
        send = start_sender(env, a.group, cpus=a.reader_cpus, stderr=serr,
                            stdout=subprocess.DEVNULL)
        procs.append(send)
        batch = 1 if rate < 50000 else 32
        gen = env.popen("gw", [exe["udpgen"], env.sink4, str(a.port), str(size), str(rate),
                               str(count), str(a.duration + 5), str(batch)],
                        cpus=a.gen_cpus, stdout=subprocess.PIPE, text=True)
        out, _ = gen.communicate(timeout=a.duration + 30)
        g = json.loads(out.strip().splitlines()[-1])
        time.sleep(0.5)  # the kernel's flush timeout and the pipe: well under this
        stop_process(send)
        stop_process(recv)
        rerr.close()
        serr.close()
        lout, _ = lat.communicate(timeout=30)
        r = json.loads(lout.strip().splitlines()[-1])
        st, rt = _totals(serr.name), _totals(rerr.name)
        r.update(rate=rate, size=size, run=run, sent=g["sent"], gen_pps=g["pps"],
                 intact=(r["seq_distinct"] == g["sent"] and not r["seq_dup"]
                         and not r["seq_out_of_range"] and not r["pattern_bad"]),
                 sender_packets_in=st.get("packets_in"), receiver_packets_out=rt.get("packets_out"))
        return r
    finally:
        for p in procs:
            if p.poll() is None:
                stop_process(p, timeout=2)
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(results: list[dict], points: list[tuple[int, int]]) -> dict:
    """Medians per point, keyed "RATExSIZE"."""
    out = {}
    for rate, size in points:
        rs = [r for r in results if r["rate"] == rate and r["size"] == size and r.get("samples")]
        if rs:
            s = {k: statistics.median(r[k] for r in rs) for k in KEYS}
            s.update(rate=rate, size=size, runs=len(rs), sent=sum(r["sent"] for r in rs),
                     records=sum(r["records"] for r in rs),
                     intact=all(r["intact"] for r in rs),
                     max_of_runs_us=max(r["max_us"] for r in rs))
            out[f"{rate}x{size}"] = s
    return out


def table(summary: dict) -> str:
    lines = ["| latency | p50 ms | p90 ms | p99 ms | max ms | packets sent / in FIFO "
             "| content intact | runs |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for s in summary.values():
        lines.append(f"| {s['rate']:,} pkt/s, {s['size']} B | {s['p50_us'] / 1e3:.2f} "
                     f"| {s['p90_us'] / 1e3:.2f} | {s['p99_us'] / 1e3:.2f} "
                     f"| {s['max_us'] / 1e3:.2f} | {s['sent']:,} / {s['records']:,} "
                     f"| {'yes' if s['intact'] else '**no**'} | {s['runs']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", default="1000,10000,100000,100000x1400",
                    help="RATE or RATExSIZE (UDP payload bytes, default 64), comma list")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--group", type=int, default=5)
    ap.add_argument("--port", type=int, default=9999)
    ap.add_argument("--gen-cpus", type=cpus_arg, default={0})
    ap.add_argument("--reader-cpus", type=cpus_arg, default={1})
    ap.add_argument("--json", help="write raw results here")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("latency.py needs root (namespaces, iptables, NFLOG)")
    points = [(int(r), int(sz or 64)) for r, _, sz in (p.partition("x")
                                                        for p in a.points.split(","))]
    exe = build()
    results = []
    with NetnsPair(group=a.group, port=a.port) as env:
        for run in range(a.runs):
            for rate, size in points:
                try:
                    r = run_point(env, exe, rate, size, a, run)
                except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
                    print(f"# latency {rate}x{size} run {run}: FAILED {e}", file=sys.stderr)
                    continue
                results.append(r)
                print(f"# latency {rate:>7} pkt/s {size:4} B run {run}: sent {r['sent']} records "
                      f"{r['records']} intact {r['intact']} "
                      + " ".join(f"{k} {r.get(k, float('nan')):.0f}" for k in KEYS),
                      file=sys.stderr, flush=True)
    summary = summarize(results, points)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "summary": summary}, f, indent=1)
    print(table(summary))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
