#!/usr/bin/env python3
"""Receiver throughput: packets/s nflog-pcap-recv writes into a FIFO, on one core.

    .venv/bin/python bench/bench_recv.py [--seconds 5] [--runs 3] [--payload 64]
                                         [--frame-kib 256] [--modes plain,buffer]
                                         [--json OUT.json]

No root, no namespaces: loopback only.  Per run and mode:
  * ``dd if=FIFO of=/dev/null bs=1M`` drains the FIFO (the IDS stand-in);
  * ``nflog-pcap-recv tcp://127.0.0.1:P FIFO`` with default options (mode
    ``buffer`` adds ``--buffer-interface`` and a 64 MiB ``--buffer-window``),
    pinned to one CPU (``--recv-cpu``) with all its threads;
  * a generator process (this script, ``gen`` mode) pre-encodes frames with
    ``nflog_pipe.frame.encode`` -- IPv4/UDP packets of ``--payload`` bytes of
    UDP payload (64: 92-byte IP packets, 108-byte pcap records), about
    ``--frame-kib`` KiB of records per frame, as a busy sender batches them --
    and PUSHes them (only the header's sequence numbers change) as fast as
    the receiver takes them, for ``--seconds``; generator and dd run on the
    other CPU (``--aux-cpu``).
The rate is what reached the FIFO: ``packets_out`` from the receiver's stats
records (every 0.25 s), over the generator's run minus its first 0.5 s (the
queues fill).  CPU is the receiver's (all threads) over the same span, per
packet.  Frames are validated whole, like any frame from the network.
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
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "lib"))
from testkit import free_port  # noqa: E402  (tools/lib/testkit.py)

sys.path.insert(0, str(HERE))
from netns import CpuMeter  # noqa: E402

from bench import project_command  # noqa: E402

STATS_INTERVAL = 0.25
WARMUP = 0.5




# -- generator (a separate process) ---------------------------------------------------------

def make_frames(payload: int, frame_kib: int, n_frames: int = 8) -> list[tuple[bytearray, int]]:
    """Pre-encoded frames of IPv4/UDP packets with ``payload`` bytes of UDP data."""
    from nflog_pipe import frame, pcap

    size = 20 + 8 + payload
    now = int(time.time())
    rnd = random.Random(8)
    frames = []
    for f in range(n_frames):
        recs, n = bytearray(), 0
        while len(recs) + 16 + size <= frame_kib * 1024:
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size, n & 0xFFFF, 0x4000, 64, 17, 0,
                             bytes([10, 213, (n >> 8) & 0xFF, n & 0xFF]), bytes([10, 214, 0, 2]))
            udp = struct.pack(">HHHH", 40000 + f, 9999, 8 + payload, 0)
            body = rnd.randbytes(payload)
            recs += pcap.record(now, n, ip + udp + body)
            n += 1
        frames.append((bytearray(frame.encode("bench-recv", 7, 0, 0, n, bytes(recs))), n))
    return frames


def gen_main(argv: list[str]) -> None:
    import zmq

    p = argparse.ArgumentParser(prog="bench_recv.py gen")
    p.add_argument("endpoint")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--frame-kib", type=int, default=256)
    p.add_argument("--rate", type=float, default=0, help="packets/s, 0: as fast as taken")
    a = p.parse_args(argv)
    frames = make_frames(a.payload, a.frame_kib)
    ctx = zmq.Context(1)
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 8
    push.connect(a.endpoint)
    instance = random.getrandbits(32)
    seq = pkt = 0
    wall0 = time.time()
    start = time.monotonic()
    deadline = start + a.seconds
    while True:
        buf, n = frames[seq % len(frames)]
        if a.rate:
            ahead = start + pkt / a.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        struct.pack_into("<I", buf, 8, instance)
        struct.pack_into("<QQ", buf, 16, seq, pkt)
        push.send(buf)
        seq += 1
        pkt += n
        if seq % 8 == 0 and time.monotonic() >= deadline:
            break
    wall1 = time.time()
    push.close(linger=-1)
    ctx.term()
    print(json.dumps({"frames": seq, "packets": pkt, "wall": [wall0, wall1],
                      "records_per_frame": frames[0][1]}))


# -- one run ----------------------------------------------------------------------------------

def _pin(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _t(rec: dict) -> float:
    return datetime.strptime(rec["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_once(mode: str, rate: int, a) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench_recv."))
    base = mode.partition("@")[0]
    # mode shardsN: N outputs (flow-sharded), a dd on each
    nout = int(base[6:]) if base.startswith("shards") else 1
    fifos = [tmp / f"out{i}.pcap" for i in range(nout)]
    for f in fifos:
        os.mkfifo(f)
    src = f"tcp://127.0.0.1:{free_port()}"
    log = tmp / "recv.log"
    procs: list[subprocess.Popen] = []
    try:
        dds = [subprocess.Popen(_pin(a.aux_cpu) + ["dd", f"if={f}", "of=/dev/null", "bs=1M",
                                                   "status=none"]) for f in fifos]
        procs.extend(dds)
        base, _, tree = mode.partition("@")  # MODE@NAME: another checkout's receiver (--tree)
        cmd = project_command("nflog-pcap-recv", "receiver", a.trees[tree] if tree else None)
        extra = []
        if base == "buffer":
            extra = ["--buffer-interface", f"tcp://127.0.0.1:{free_port()}",
                     "--buffer-window", str(a.window)]
        with open(log, "w") as err:
            recv = subprocess.Popen(_pin(a.recv_cpu) + [
                *cmd, src, *map(str, fifos), *extra,
                "--stats-interval", str(STATS_INTERVAL), "--log-format", "json"],
                stderr=err, stdout=subprocess.DEVNULL)
        procs.append(recv)
        deadline = time.monotonic() + 20
        while log.read_text().count('"reader_attached"') < nout:
            if time.monotonic() > deadline or recv.poll() is not None:
                raise RuntimeError("receiver did not start:\n" + log.read_text()[-2000:])
            time.sleep(0.05)
        gen = subprocess.Popen(_pin(a.aux_cpu) + [
            sys.executable, __file__, "gen", src, "--seconds", str(a.seconds),
            "--payload", str(a.payload), "--frame-kib", str(a.frame_kib), "--rate", str(rate)],
            stdout=subprocess.PIPE, text=True)
        procs.append(gen)
        time.sleep(WARMUP)
        meter = CpuMeter(recv.pid).start()
        out, _ = gen.communicate(timeout=a.seconds + 60)
        cpu = meter.stop()
        g = json.loads(out.strip().splitlines()[-1])
        time.sleep(2 * STATS_INTERVAL + 0.1)
        stats = [(_t(r), r["counters"]) for r in _records(log) if r.get("event") == "stats"]
        t0, t1 = g["wall"][0] + WARMUP, g["wall"][1]
        inside = [(t, c) for t, c in stats if t0 <= t <= t1]
        if len(inside) < 2:
            raise RuntimeError(f"too few stats records in the run ({len(inside)})")
        (ta, ca), (tb, cb) = inside[0], inside[-1]
        span = tb - ta
        pps = (cb["packets_out"] - ca["packets_out"]) / span
        in_pps = (cb["packets_in"] - ca["packets_in"]) / span
        dropped = sum(cb.get(k, 0) - ca.get(k, 0) for k in cb if k.startswith("dropped.")
                      and k != "dropped.evicted" and not k.endswith(("_bytes", "_frames")))
        recv.send_signal(signal.SIGTERM)
        recv.wait(30)
        for dd in dds:
            dd.wait(30)
        totals = next((r["counters"] for r in _records(log) if r.get("event") == "totals"), {})
        return {"mode": mode, "rate": rate, "pps": pps, "in_pps": in_pps,
                "loss": dropped / (span * in_pps) if in_pps else 0.0,
                "MBps": pps * (16 + 28 + a.payload) / 1e6,
                "recv_us_pkt": cpu / (in_pps * meter.wall) * 1e6 if in_pps else float("nan"),
                "recv_cores": cpu / meter.wall, "sent_packets": g["packets"],
                "records_per_frame": g["records_per_frame"],
                "packets_out": totals.get("packets_out"),
                "dropped_output": totals.get("dropped.output"),
                "dropped_evicted": totals.get("dropped.evicted")}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _rate_label(rate: int) -> str:
    return "max" if not rate else f"{rate / 1e6:g}M" if rate % 100000 == 0 else str(rate)


def summarize(results: list[dict], modes: list[str], rates: list[int]) -> dict:
    med = statistics.median
    out = {}
    for m in modes:
        for rate in rates:
            rs = [r for r in results if r["mode"] == m and r["rate"] == rate]
            if not rs:
                continue
            out[f"{m} {_rate_label(rate)}"] = {
                "mode": m, "rate": rate, "runs": len(rs),
                "pps": med(r["pps"] for r in rs), "in_pps": med(r["in_pps"] for r in rs),
                "loss": med(r["loss"] for r in rs), "MBps": med(r["MBps"] for r in rs),
                "recv_us_pkt": med(r["recv_us_pkt"] for r in rs),
                "recv_cores": med(r["recv_cores"] for r in rs),
                "all_pps": [round(r["pps"]) for r in rs],
                "records_per_frame": rs[0]["records_per_frame"]}
    return out


def table(summary: dict) -> str:
    lines = ["| receiver | offered | packets/s in | packets/s to the FIFO | lost % | MB/s "
             "| receiver µs/pkt | cores | runs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary.values():
        lines.append(f"| {s['mode']} | {_rate_label(s['rate'])} | {s['in_pps']:,.0f} "
                     f"| {s['pps']:,.0f} | {100 * s['loss']:.2f} | {s['MBps']:.0f} "
                     f"| {s['recv_us_pkt']:.3f} | {s['recv_cores']:.2f} | {s['runs']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gen"]:
        gen_main(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="generator run per point")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--payload", type=int, default=64, help="UDP payload bytes per packet")
    p.add_argument("--frame-kib", type=int, default=256, help="record bytes per frame")
    p.add_argument("--rates", default="max,1000000",
                   help="offered packets/s; max: as fast as the receiver takes them")
    p.add_argument("--modes", default="plain,buffer",
                   help="plain: default options; buffer: + --buffer-interface; shardsN: N flow-sharded "
                   "outputs (a dd each)")
    p.add_argument("--window", type=float, default=64.0, help="--buffer-window MiB (buffer mode)")
    p.add_argument("--recv-cpu", type=int, default=0, help="CPU of the receiver")
    p.add_argument("--aux-cpu", type=int, default=1, help="CPU of generator and dd")
    p.add_argument("--json", help="write raw results here")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                   help="also run every mode with the receiver of the built checkout DIR "
                   "(modes MODE@NAME): before/after in one run")
    a = p.parse_args(argv)
    a.trees = {}
    for t in a.tree:
        name, _, d = t.partition("=")
        if not os.path.isdir(os.path.join(d, "src", "nflog_pipe")):
            sys.exit(f"--tree {name}: no src/nflog_pipe under {d}")
        a.trees[name] = os.path.abspath(d)
    modes = a.modes.split(",")
    modes += [f"{m}@{name}" for name in a.trees for m in modes]
    rates = [0 if x == "max" else int(x) for x in a.rates.split(",")]
    results = []
    for run in range(a.runs):
        for m in modes:
            for rate in rates:
                r = run_once(m, rate, a)
                results.append(r)
                print(f"# recv {m:6} {_rate_label(rate):>4} run {run}: in {r['in_pps']:,.0f} "
                      f"out {r['pps']:,.0f} pkt/s {r['MBps']:.0f} MB/s, lost "
                      f"{100 * r['loss']:.2f} %, {r['recv_us_pkt']:.3f} us/pkt, "
                      f"{r['recv_cores']:.2f} cores", file=sys.stderr, flush=True)
    summary = summarize(results, modes, rates)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results,
                                            "summary": summary}, indent=1))
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
