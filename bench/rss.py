#!/usr/bin/env python3
"""Memory under sustained overload: peak RSS of the sender and the receiver.

    sudo .venv/bin/python bench/rss.py [--duration 6] [--json OUT]

Scenarios (default options unless said):
  sender/receiver-stopped  nflog-zmq-send in the gw namespace reading 1400 B
      packets at the generator's maximum rate; after 1 s (frames are large
      by then) its receiver (sink namespace) is stopped (SIGSTOP): TCP and
      ZeroMQ queues fill, then the sender must drop (dropped.queue_full)
      instead of growing;
  receiver/window-64       nflog-pcap-recv --buffer-interface --buffer-window 64
      flooded over loopback with 64 B-packet frames as fast as it takes them
      (bench_recv.py's generator), dd draining the FIFO: the ring is full and
      evicting, ZeroMQ's receive queue is as full as the flood makes it;
  receiver/window-64-reader-stopped  the same with the FIFO reader stopped
      (SIGSTOP): the live output's buffer fills and frames are dropped.
RSS is sampled every 20 ms (VmRSS) and VmHWM read at the end, of the daemon's
main process (its threads share it).  The bound each is checked against:
sender 64 MiB + its queue (--zmq-buffer frames of at most --batch-size +
256 KiB: 50 x 512 KiB); receiver 64 MiB + --buffer-window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tools", "lib"))
from netns import NetnsPair, stop_process  # noqa: E402
from testkit import free_port as _free_port  # noqa: E402  (tools/lib/testkit.py)

from bench import _project, build, log_totals, start_sender  # noqa: E402

MiB = 1 << 20
SENDER_QUEUE = 50 * (256 + 256) * 1024   # --zmq-buffer x largest frame (defaults)
WINDOW = 64


def _status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _sample_while(pid: int, busy) -> tuple[int, int]:
    """Sample pid's RSS every 20 ms while busy() is true: (max VmRSS, VmHWM)."""
    peak = 0
    while busy():
        peak = max(peak, _status(pid).get("VmRSS", 0))
        time.sleep(0.02)
    st = _status(pid)
    return max(peak, st.get("VmRSS", 0)), st.get("VmHWM", 0)


def _totals(path: str) -> dict:
    with open(path, errors="replace") as f:
        return log_totals(f.read())


def sender_receiver_stopped(a) -> dict:
    exe = build()
    tmp = tempfile.mkdtemp(prefix="nzb-rss-")
    procs = []
    try:
        with NetnsPair(group=a.group, port=a.port) as env:
            rerr = open(os.path.join(tmp, "recv.err"), "w")
            recv = env.popen("sink", [_project("nflog-pcap-recv"), f"tcp://{env.sink4}:5557",
                                      "/dev/null", "--log-format", "json"], stderr=rerr)
            procs.append(recv)
            serr = open(os.path.join(tmp, "send.err"), "w")
            send = start_sender(env, a.group, cpus={1}, stderr=serr)
            procs.append(send)
            base = _status(send.pid).get("VmRSS", 0)
            gen = env.popen("gw", [exe["udpgen"], env.sink4, str(a.port), "1400", "0",
                                   str(10**9), str(a.duration + 1)], cpus={0},
                            stdout=subprocess.PIPE, text=True)
            # 1 s of flood first: the kernel batch size has adapted and frames
            # are as large as they get when the receiver stops taking them
            time.sleep(1.0)
            recv.send_signal(signal.SIGSTOP)
            peak, hwm = _sample_while(send.pid, lambda: gen.poll() is None)
            g = json.loads(gen.stdout.read().strip().splitlines()[-1])
            recv.send_signal(signal.SIGCONT)
            time.sleep(0.5)
            stop_process(send)
            stop_process(recv)
            serr.close()
            rerr.close()
            st = _totals(serr.name)
            return {"scenario": "sender/receiver-stopped", "base": base, "peak": peak,
                    "hwm": hwm, "bound": 64 * MiB + SENDER_QUEUE,
                    "bound_text": "64 MiB + queue (50 x 512 KiB)",
                    "load": f"{g['pps']:,.0f} pkt/s of 1400 B, receiver stopped after 1 of "
                            f"{g['elapsed_s']:.0f} s",
                    "dropped": st.get("dropped.queue_full", 0),
                    "dropped_what": "dropped.queue_full",
                    "packets_in": st.get("packets_in", 0)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                stop_process(p, timeout=2)
        shutil.rmtree(tmp, ignore_errors=True)


def receiver_window(a, reader_stopped: bool, extra: list[str] = (), label: str = "") -> dict:
    tmp = tempfile.mkdtemp(prefix="nzb-rss-")
    fifo = os.path.join(tmp, "out.pcap")
    os.mkfifo(fifo)
    src = f"tcp://127.0.0.1:{_free_port()}"
    procs = []
    try:
        dd = subprocess.Popen(["taskset", "-c", "1", "dd", f"if={fifo}", "of=/dev/null",
                               "bs=1M", "status=none"])
        procs.append(dd)
        log = os.path.join(tmp, "recv.err")
        with open(log, "w") as err:
            recv = subprocess.Popen(["taskset", "-c", "0", _project("nflog-pcap-recv"), src, fifo,
                                     "--buffer-interface", f"tcp://127.0.0.1:{_free_port()}",
                                     "--buffer-window", str(WINDOW), "--log-format", "json",
                                     *extra], stderr=err, stdout=subprocess.DEVNULL)
        procs.append(recv)
        deadline = time.monotonic() + 20
        while '"reader_attached"' not in open(log).read():
            if recv.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("receiver did not start")
            time.sleep(0.05)
        time.sleep(0.3)
        base = _status(recv.pid).get("VmRSS", 0)
        if reader_stopped:
            dd.send_signal(signal.SIGSTOP)
        gen = subprocess.Popen(["taskset", "-c", "1", sys.executable,
                                os.path.join(HERE, "bench_recv.py"), "gen", src,
                                "--seconds", str(a.duration)], stdout=subprocess.PIPE, text=True)
        procs.append(gen)
        peak, hwm = _sample_while(recv.pid, lambda: gen.poll() is None)
        g = json.loads(gen.stdout.read().strip().splitlines()[-1])
        if reader_stopped:
            dd.send_signal(signal.SIGCONT)
        recv.send_signal(signal.SIGTERM)
        recv.wait(30)
        t = _totals(log)
        return {"scenario": "receiver/window-64" + ("-reader-stopped" if reader_stopped else "")
                + label, "base": base, "peak": peak, "hwm": hwm, "bound": 64 * MiB + WINDOW * MiB,
                "bound_text": "64 MiB + window (64 MiB)",
                "load": f"{g['packets'] / (g['wall'][1] - g['wall'][0]):,.0f} pkt/s of 64 B "
                        f"for {a.duration:g} s",
                "dropped": t.get("dropped.output", 0), "dropped_what": "dropped.output",
                "evicted": t.get("dropped.evicted", 0), "packets_in": t.get("packets_in", 0)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def table(results: list[dict]) -> str:
    lines = ["| memory scenario | load | RSS idle MiB | peak RSS MiB | bound MiB | within | "
             "dropped (counted) |", "|---|---|---:|---:|---:|---|---:|"]
    for r in results:
        peak = max(r["peak"], r["hwm"])
        lines.append(f"| {r['scenario']} | {r['load']} | {r['base'] / MiB:.0f} "
                     f"| {peak / MiB:.0f} | {r['bound'] / MiB:.0f} ({r['bound_text']}) "
                     f"| {'yes' if peak <= r['bound'] else 'NO'} "
                     f"| {r['dropped']:,} {r['dropped_what']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--scenarios", default="sender,receiver,receiver-reader-stopped")
    ap.add_argument("--group", type=int, default=5)
    ap.add_argument("--port", type=int, default=9999)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("rss.py needs root (namespaces, iptables, NFLOG)")
    results = []
    for s in a.scenarios.split(","):
        if s == "sender":
            r = sender_receiver_stopped(a)
        elif s == "receiver":
            r = receiver_window(a, False)
        elif s == "receiver-reader-stopped":
            r = receiver_window(a, True)
        elif s.startswith("receiver-zmq-buffer-"):
            n = s.rsplit("-", 1)[1]
            r = receiver_window(a, False, ["--zmq-buffer", n], f" --zmq-buffer {n}")
        else:
            sys.exit(f"unknown scenario {s}")
        results.append(r)
        print(f"# rss {r['scenario']}: idle {r['base'] / MiB:.0f} MiB peak "
              f"{max(r['peak'], r['hwm']) / MiB:.0f} MiB ({r['load']}, {r['dropped_what']} "
              f"{r['dropped']})", file=sys.stderr, flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
