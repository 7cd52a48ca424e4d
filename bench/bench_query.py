#!/usr/bin/env python3
"""Traffic buffer benchmark: live throughput of nflog-pcap-recv with and
without a concurrent query of a full window, query time, receiver RSS.

    .venv/bin/python bench/bench_query.py [--window 256] [--duration 10] [--runs 3]
                                          [--pin split|none] [--out bench/results/query]

No root, no namespaces: everything runs on loopback.  One receiver process
(``--buffer-window W --buffer-interface tcp://127.0.0.1:P``) writes its pcap
stream into a FIFO that ``dd`` drains to /dev/null.  A generator process
(this script, ``gen`` mode) PUSHes pre-built frames (records of
``--sizes`` bytes, ``--frame-kib`` KiB per frame, like a busy sender's
``--batch-size``) as fast as the receiver takes them: small ZeroMQ queues on
both sides (``--zmq-buffer 8``) so what the generator got through is what the
receiver delivered, within a few frames.

The receiver runs with its default --buffer-rate unless --buffer-rate is
given (0: queries as fast as the machine goes).

Phases:
  1. fill: push 1.1 x the window, so the ring is full and evicting;
  2. query alone: ``nflog-pcap-query -o /dev/null`` of the whole window,
     --runs times, no live traffic (query time, MB/s);
  3. live alone: push for --duration s (packets/s, MB/s);
  4. live + query: push for --duration s while query clients fetch the whole
     window back to back (packets/s; throughput ratio = 3 / 4);
  3 and 4 alternate --runs times; medians are reported.
Rates are given twice: what the generator got into the receiver (input) and
what reached the FIFO (output, from the receiver's stats records every 0.5 s,
with the live output drops of the same interval).  Query time is the
client's own figure (request to last byte, interpreter start-up excluded).
RSS (VmRSS/VmHWM of the receiver) is read after start, after the fill and at
the end.  With --pin split the receiver (and its ZeroMQ I/O thread) runs on
CPU 0, generator, dd and query clients on CPU 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "lib"))
from testkit import free_port  # noqa: E402  (tools/lib/testkit.py)

BIN = Path(sys.executable).parent




# -- generator (runs as a separate process) ------------------------------------------------

def gen_main(argv: list[str]) -> None:
    import zmq

    from nflog_pipe import frame, pcap

    p = argparse.ArgumentParser(prog="bench_query.py gen")
    p.add_argument("endpoint")
    p.add_argument("--seconds", type=float, default=0)
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--sizes", default="64,200,576,1000,1400,1400")
    p.add_argument("--frame-kib", type=int, default=256)
    p.add_argument("--rate", type=float, default=0, help="packets/s (0: as fast as taken)")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",")]
    now = int(time.time())
    templates = []
    rnd = random.Random(1)
    for t in range(16):
        recs, n, i = bytearray(), 0, 0
        while True:
            size = sizes[(t * 7 + i) % len(sizes)]
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000, 64, 17, 0,
                             bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
            udp = struct.pack(">HHHH", 40000 + i, 5353 if i % 4 == 0 else 7000, size - 20, 0)
            body = bytes(rnd.getrandbits(8) for _ in range(16)) * (size // 16 + 1)
            rec = pcap.record(now, i, (ip + udp + body)[:size])
            if len(recs) + len(rec) > a.frame_kib * 1024:
                break
            recs += rec
            n += 1
            i += 1
        templates.append((bytearray(frame.encode("bench", 7, 0, 0, n, bytes(recs))), n))
    ctx = zmq.Context(1)
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 8
    push.connect(a.endpoint)
    seq = pkt = packets = nbytes = 0
    wall0 = time.time()
    start = time.monotonic()
    deadline = start + a.seconds if a.seconds else float("inf")
    instance = random.getrandbits(32)
    while True:
        buf, n = templates[seq % len(templates)]
        struct.pack_into("<I", buf, 8, instance)
        struct.pack_into("<QQ", buf, 16, seq, pkt)
        if a.rate:
            ahead = start + packets / a.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        push.send(buf)
        seq += 1
        pkt += n
        packets += n
        nbytes += len(buf) - frame.HEADER_SIZE - 5
        if seq % 16 == 0 and (time.monotonic() >= deadline or (a.bytes and nbytes >= a.bytes)):
            break
    elapsed = time.monotonic() - start
    wall1 = time.time()
    push.close(linger=-1)
    ctx.term()
    print(json.dumps({"frames": seq, "packets": packets, "bytes": nbytes, "seconds": elapsed,
                      "wall": [wall0, wall1]}))


# -- the harness --------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_query."))
        self.fifo = self.tmp / "out.pcap"
        os.mkfifo(self.fifo)
        self.src = f"tcp://127.0.0.1:{free_port()}"
        self.qep = f"tcp://127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []
        self.log = open(self.tmp / "recv.log", "w+")

    def pin(self, cpu: int) -> list[str]:
        if self.args.pin == "split" and shutil.which("taskset"):
            return ["taskset", "-c", str(cpu)]
        return []

    def start(self) -> None:
        a = self.args
        self.dd = subprocess.Popen(self.pin(1) + ["dd", f"if={self.fifo}", "of=/dev/null",
                                                  "bs=1M", "status=none"])
        self.procs.append(self.dd)
        self.recv = subprocess.Popen(
            self.pin(0) + [str(BIN / "nflog-pcap-recv"), self.src, str(self.fifo),
                           "--buffer-interface", self.qep, "--buffer-window", str(a.window),
                           "--buffer-timeout", "10", "--zmq-buffer", "8", "--output-buffer", "16",
                           *(["--buffer-rate", str(a.buffer_rate)] if a.buffer_rate is not None
                             else []),
                           "--stats-interval", "0.5", "--log-format", "json"],
            stderr=self.log, stdout=subprocess.DEVNULL)
        self.procs.append(self.recv)
        deadline = time.monotonic() + 20
        while '"start"' not in (self.tmp / "recv.log").read_text():
            if time.monotonic() > deadline or self.recv.poll() is not None:
                raise SystemExit("receiver did not start:\n" + (self.tmp / "recv.log").read_text())
            time.sleep(0.05)

    def gen(self, seconds: float = 0, nbytes: int = 0, rate: float = 0) -> dict:
        a = self.args
        r = subprocess.run(self.pin(1) + [sys.executable, __file__, "gen", self.src,
                                          "--seconds", str(seconds), "--bytes", str(nbytes),
                                          "--rate", str(rate),
                                          "--sizes", a.sizes, "--frame-kib", str(a.frame_kib)],
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout)

    def query(self) -> dict:
        """One nflog-pcap-query run; its own time and its CPU (user+system)."""
        with tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(self.pin(1) + [str(BIN / "nflog-pcap-query"), self.qep, "-o",
                                                "/dev/null", "--timeout", "60", "--log-format",
                                                "json"], stderr=err, stdout=subprocess.DEVNULL)
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            text = err.read()
        if p.returncode and "busy" in text:
            return {"refused": True}
        if p.returncode:
            raise SystemExit(f"query failed: {text[-2000:]}")
        done = [json.loads(x) for x in text.splitlines() if '"query_done"' in x][-1]
        return {"seconds": done["seconds"], "bytes": done["bytes"],
                "client_cpu_s": ru.ru_utime + ru.ru_stime}

    def reset_peak(self) -> None:
        """Start VmHWM afresh (Linux: 5 > /proc/PID/clear_refs)."""
        try:
            Path(f"/proc/{self.recv.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def stats(self) -> list[tuple[float, dict]]:
        """(wall time, counters) of every stats record so far."""
        out = []
        for line in (self.tmp / "recv.log").read_text().splitlines():
            if '"stats"' not in line:
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            t = datetime.strptime(r["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((t, r["counters"]))
        return out

    def output_rate(self, t0: float, t1: float) -> dict:
        """Packets and bytes that reached the FIFO between t0 and t1 (wall),
        and the output drops, from the stats records inside the interval."""
        inside = [(t, c) for t, c in self.stats() if t0 <= t <= t1]
        (ta, a), (tb, c) = inside[0], inside[-1]
        span = tb - ta
        return {"seconds": span, "packets": c["packets_out"] - a["packets_out"],
                "bytes": c["bytes_out"] - a["bytes_out"] + 16 * (c["packets_out"] - a["packets_out"]),
                "dropped_output": c["dropped.output"] - a["dropped.output"]}

    def phase(self, fn) -> tuple:
        """Run fn (a generator run, maybe with queries); the FIFO rate is
        taken over the generator's own interval."""
        t0, c0 = time.time(), self.status()["cpu_s"]
        r = fn()
        t1, c1 = time.time(), self.status()["cpu_s"]
        time.sleep(0.6)  # the next stats record
        g = r[0] if isinstance(r, tuple) else r
        out = self.output_rate(*g["wall"])
        out["receiver_cpu"] = round((c1 - c0) / (t1 - t0), 3)  # cores used by the receiver
        return r, out

    def status(self) -> dict:
        out = {}
        for line in Path(f"/proc/{self.recv.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
        stat = Path(f"/proc/{self.recv.pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return out

    def stop(self) -> dict:
        self.recv.send_signal(signal.SIGTERM)
        self.recv.wait(60)
        self.dd.wait(30)
        totals = {}
        for line in (self.tmp / "recv.log").read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("event") == "totals":
                totals = r
        return totals

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def live_with_queries(b: Bench, seconds: float, rate: float,
                      clients: int = 1) -> tuple[dict, list[dict]]:
    """Live traffic while ``clients`` query loops fetch the whole window back
    to back (a query refused as busy is recorded and retried 1 s later)."""
    stop = threading.Event()
    times: list[dict] = []

    def loop():
        while not stop.is_set():
            q = b.query()
            times.append(q)
            if q.get("refused"):
                time.sleep(1.0)
    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the first queries are under way
    try:
        g = b.gen(seconds=seconds, rate=rate)
    finally:
        stop.set()
        for t in threads:
            t.join(300)
    return g, times


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "gen":
        gen_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--window", type=float, default=256, help="MiB (default 256)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per live phase")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sizes", default="64,200,576,1000,1400,1400",
                   help="IP packet sizes cycled through")
    p.add_argument("--frame-kib", type=int, default=256, help="record bytes per frame")
    p.add_argument("--pin", choices=("split", "none"), default="none")
    p.add_argument("--buffer-rate", type=float, default=None,
                   help="the receiver's --buffer-rate MiB/s (default: its default; 0: no limit)")
    p.add_argument("--rates", default="0,250000",
                   help="offered live rates in packets/s, 0 for as fast as the receiver takes "
                   "them (default 0,250000: saturation, and about the most NFLOG delivers on "
                   "the 2-core reference machine)")
    p.add_argument("--clients", type=int, default=1,
                   help="query loops running at once during the live phase (default 1)")
    p.add_argument("--out", default=str(HERE / "results" / "query"),
                   help="write OUT.json and OUT.md")
    a = p.parse_args()
    b = Bench(a)
    res: dict = {"config": vars(a), "cpus": os.cpu_count()}
    try:
        b.start()
        time.sleep(0.5)
        res["rss_start"] = b.status()
        window = int(a.window * 2**20)
        fill = b.gen(nbytes=int(window * 1.1))
        time.sleep(1.0)
        res["fill"] = fill
        res["rss_full"] = b.status()
        qt = [b.query() for _ in range(a.runs)]
        res["query_alone"] = qt
        res["rates"] = {}
        for rate in [float(x) for x in a.rates.split(",")]:
            alone, together, qtimes, out_alone, out_together = [], [], [], [], []
            b.reset_peak()
            for _ in range(a.runs):
                g, o = b.phase(lambda rate=rate: b.gen(seconds=a.duration, rate=rate))
                alone.append(g)
                out_alone.append(o)
                (g, ts), o = b.phase(lambda rate=rate: live_with_queries(b, a.duration, rate,
                                                                            a.clients))
                together.append(g)
                out_together.append(o)
                qtimes.extend(ts)
            res["rates"][rate] = {"live_alone": alone, "live_with_query": together,
                                  "output_alone": out_alone, "output_with_query": out_together,
                                  "query_during_live": qtimes, "rss": b.status()}
        res["rss_end"] = b.status()
        res["totals"] = b.stop().get("counters", {})
    finally:
        b.cleanup()

    def pps(runs):
        return statistics.median(r["packets"] / r["seconds"] for r in runs)

    def mbps(runs):
        return statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in runs)
    sent = fill["packets"] + sum(r["packets"] for x in res["rates"].values()
                                 for r in x["live_alone"] + x["live_with_query"])
    t = res["totals"]

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    def cpu_per_pkt(runs):
        return statistics.median(r["receiver_cpu"] * r["seconds"] / r["packets"] * 1e6
                                 for r in runs)
    qs = med(qt, "seconds")
    summary = {
        "window_mib": a.window,
        "query_bytes": qt[0]["bytes"],
        "query_alone_s": round(qs, 3),
        "query_alone_MBps": round(qt[0]["bytes"] / qs / 1e6, 1),
        "rss_start_MiB": round(res["rss_start"]["VmRSS"] / 2**20, 1),
        "rss_full_MiB": round(res["rss_full"]["VmRSS"] / 2**20, 1),
        "rss_full_minus_window_MiB": round(res["rss_full"]["VmRSS"] / 2**20 - a.window, 1),
        "rss_end_MiB": round(res["rss_end"]["VmRSS"] / 2**20, 1),
    }
    for rate, x in res["rates"].items():
        tag = "max" if not rate else f"{rate / 1000:g}k"
        alone, together = x["live_alone"], x["live_with_query"]
        oa, ot = x["output_alone"], x["output_with_query"]
        refused = sum(1 for q in x["query_during_live"] if q.get("refused"))
        qtimes = [q for q in x["query_during_live"] if not q.get("refused")]
        summary.update({
            f"{tag}: input_alone_pps": round(pps(alone)),
            f"{tag}: input_with_query_pps": round(pps(together)),
            f"{tag}: input_ratio": round(pps(together) / pps(alone), 3),
            f"{tag}: fifo_alone_pps": round(pps(oa)),
            f"{tag}: fifo_alone_MBps": round(mbps(oa), 1),
            f"{tag}: fifo_with_query_pps": round(pps(ot)),
            f"{tag}: fifo_with_query_MBps": round(mbps(ot), 1),
            f"{tag}: fifo_ratio": round(pps(ot) / pps(oa), 3),
            f"{tag}: fifo_drops_alone/with_query": f"{sum(r['dropped_output'] for r in oa)}/"
                                                    f"{sum(r['dropped_output'] for r in ot)}",
            f"{tag}: receiver_cpu_alone/with_query": f"{med(oa, 'receiver_cpu')}/"
                                                      f"{med(ot, 'receiver_cpu')}",
            # receiver CPU per live packet: what it would sustain if it were the bottleneck
            f"{tag}: receiver_us_per_pkt_alone/with_query":
                f"{cpu_per_pkt(oa):.3f}/{cpu_per_pkt(ot):.3f}",
            f"{tag}: capacity_ratio": round(cpu_per_pkt(oa) / cpu_per_pkt(ot), 3),
            f"{tag}: rss_peak_MiB": round(x["rss"]["VmHWM"] / 2**20, 1),
            f"{tag}: queries_during_live": len(qtimes),
            f"{tag}: queries_refused_busy": refused,
            f"{tag}: query_during_live_s": round(med(qtimes, "seconds"), 3) if qtimes else None,
            # CPU the query clients themselves took, per second of the phase
            f"{tag}: client_cpu_per_s": round(sum(q["client_cpu_s"] for q in qtimes)
                                              / sum(r["seconds"] for r in together), 3),
        })
    summary.update({
        "packets_sent": sent, "packets_out": t.get("packets_out"),
        "dropped_output": t.get("dropped.output"), "buffer_evicted": t.get("dropped.evicted"),
        "queries_served": t.get("query.served"),
        "queries_refused_memory": t.get("query.refused_memory"),
    })
    res["summary"] = summary
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    md = ["| figure | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in summary.items()]
    md.append("")
    md.append(f"--buffer-rate {'default' if a.buffer_rate is None else a.buffer_rate}, "
              f"pin={a.pin}, {os.cpu_count()} CPUs, {a.runs} runs of {a.duration:g} s, "
              f"{a.clients} query client(s) at once, frames of "
              f"{a.frame_kib} KiB, packet sizes {a.sizes}; medians.")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
