#!/usr/bin/env python3
"""Suricata behind 1 shard vs 2 shards, each Suricata held to one core.

    .venv/bin/python bench/bench_ids_shards.py [--packets 400000] [--rules 3200]
                                              [--flows 4000] [--runs 3] [--json OUT]

No root needed.  The traffic: ``--packets`` small IPv4 UDP packets of
``--flows`` flows (distinct address pairs, both directions), as a pcap
(LINKTYPE_RAW, what the receiver writes).  The rule set: ``--rules`` content +
pcre rules that never match (heavy enough that Suricata, not the pipe, is the
bottleneck).  The split: the project's own C splitter (``shard.Splitter``, the
code ``nflog-pcap-recv`` runs with several outputs, same hash as the sender)
writes one pcap per shard.  Then, per run:

  1 shard:  ``taskset -c 0 suricata -r all.pcap``                  wall time T1
  2 shards: ``taskset -c 0 suricata -r shard0.pcap`` and, at the same time,
            ``taskset -c 1 suricata -r shard1.pcap``              wall time T2
            (both started together, T2 = until the last one ends)

analysed packets/s = packets / T (Suricata's own "decoder.pkts" checked against
the packet count); T runs from "Engine started" (rules loaded; with 2 shards the
later of the two) to the last exit; the ratio T1 / T2 is the gain of the second shard (goal
>= 1.8 on a 2-core machine).  The pcaps are read from files, not FIFOs: this
measures the IDS side of scale-out, which is what limits it (the receiver
writes millions of packets/s, Suricata tens of thousands).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


#: words the payloads are made of and the rules' contents come from: each packet
#: holds a few, so that every packet sends some dozens of rules to their pcre
VOCAB = [f"w{i:03d}".encode() + bytes([97 + i % 26]) * 3 for i in range(200)]


def make_pcap(path: Path, packets: int, flows: int, seed: int = 15) -> bytes:
    from nflog_pipe import pcap
    rnd = random.Random(seed)
    pairs = [(bytes([10, 50 + i // 65536 % 50, i // 256 % 256, i % 256]),
              bytes([172, 16, rnd.randrange(256), rnd.randrange(1, 255)]),
              rnd.randrange(1024, 65535)) for i in range(flows)]
    recs = bytearray()
    for n in range(packets):
        a, b, sport = pairs[n % flows]
        if (n // flows) % 2:  # replies: the other direction
            a, b = b, a
        payload = b"GET /item/%d " % n + b" ".join(rnd.choice(VOCAB) for _ in range(6))
        size = 28 + len(payload)
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size, n & 0xFFFF, 0x4000, 64, 17, 0, a, b)
        udp = struct.pack(">HHHH", sport, 53 if not (n // flows) % 2 else sport + 1,
                          8 + len(payload), 0)
        recs += pcap.record(1_700_000_000 + n // 100000, n % 100000 * 10, ip + udp + payload)
    path.write_bytes(pcap.GLOBAL_HEADER_BYTES + recs)
    return bytes(recs)


def make_rules(path: Path, n: int, seed: int = 16) -> None:
    """Rules whose content is one of the payload words (so the prefilter
    passes them on) and whose pcre never matches (so every one is run)."""
    rnd = random.Random(seed)
    alpha = "abcdefghijklmnopqrstuvwxyz"
    with open(path, "w") as f:
        for i in range(n):
            word = VOCAB[i % len(VOCAB)].decode()
            tail = "".join(rnd.choice(alpha) for _ in range(6))
            f.write(f'alert udp any any -> any any (msg:"bench {i}"; content:"{word}"; '
                    f'pcre:"/{word}\\s+[a-z]*{tail}[0-9]{{3}}/i"; sid:{5_000_000 + i}; rev:1;)\n')


def split(recs: bytes, packets: int, tmp: Path) -> list[tuple[Path, int]]:
    from nflog_pipe import pcap, shard
    parts = shard.Splitter(2).split(memoryview(recs), packets)
    out = []
    for i, (region, count) in enumerate(parts):
        p = tmp / f"shard{i}.pcap"
        p.write_bytes(pcap.GLOBAL_HEADER_BYTES + bytes(region))
        out.append((p, count))
    return out


def suricata(cpu: int, pcap_path: Path, rules: Path, logdir: Path) -> subprocess.Popen:
    logdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["taskset", "-c", str(cpu), "suricata", "-r", str(pcap_path), "-S", str(rules),
         "-l", str(logdir), "-k", "none", "--runmode", "single",
         "--set", "unix-command.enabled=no", "--set", "outputs.1.eve-log.enabled=no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def decoded(logdir: Path) -> int | None:
    """Packets Suricata says it decoded (stats.log, last value)."""
    p = logdir / "stats.log"
    if not p.exists():
        return None
    val = None
    for line in p.read_text().splitlines():
        if line.startswith("decoder.pkts"):
            val = int(line.split("|")[-1])
    return val


def run(procs_spec, tmp: Path, tag: str) -> tuple[float, list]:
    """Start the Suricatas together; the time from the first "Engine started"
    (rules loaded) to the last exit: the analysis, without the rule loading."""
    procs = [(suricata(cpu, path, rules, tmp / f"{tag}{i}"), tmp / f"{tag}{i}")
             for i, (cpu, path, rules) in enumerate(procs_spec)]
    started: list[float] = []
    ended: list[float] = []
    read: list[int] = []
    cpu: list[float] = []

    def follow(p):
        for line in p.stdout:
            if "Engine started" in line:
                started.append(time.monotonic())
            elif "pcap: read" in line:
                read.append(int(line.split(" packets")[0].split()[-1]))
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        ended.append(time.monotonic())
        cpu.append(ru.ru_utime + ru.ru_stime)

    threads = [threading.Thread(target=follow, args=(p,)) for p, _ in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3600)
    for p, _ in procs:
        if p.returncode:
            raise RuntimeError(f"suricata exited {p.returncode}")
    # both must have loaded their rules before either analysed much: the later
    # start counts (a Suricata still loading leaves the core to the other)
    return max(ended) - max(started), read, cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=400_000)
    ap.add_argument("--flows", type=int, default=4000)
    ap.add_argument("--rules", type=int, default=3200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if not shutil.which("suricata") or not shutil.which("taskset"):
        sys.exit("needs suricata and taskset")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ids_shards."))
    try:
        recs = make_pcap(tmp / "all.pcap", a.packets, a.flows)
        rules = tmp / "heavy.rules"
        make_rules(rules, a.rules)
        shards = split(recs, a.packets, tmp)
        results = []
        for r in range(a.runs):
            t1, d1, c1 = run([(0, tmp / "all.pcap", rules)], tmp, f"one{r}-")
            t2, d2, c2 = run([(0, shards[0][0], rules), (1, shards[1][0], rules)], tmp,
                             f"two{r}-")
            results.append({"run": r, "t1": t1, "t2": t2, "read1": d1, "read2": d2,
                            "cpu1": c1, "cpu2": c2})
            print(f"# run {r}: 1 shard {t1:.2f} s ({a.packets / t1:,.0f} pkt/s), 2 shards "
                  f"{t2:.2f} s ({a.packets / t2:,.0f} pkt/s), ratio {t1 / t2:.2f}; read "
                  f"{d1} / {d2}; CPU s (with rule loading) {c1} / {c2}", flush=True)
        t1 = statistics.median(x["t1"] for x in results)
        t2 = statistics.median(x["t2"] for x in results)
        summary = {"packets": a.packets, "flows": a.flows, "rules": a.rules,
                   "shard_packets": [c for _, c in shards], "t1_s": t1, "t2_s": t2,
                   "pps_1": a.packets / t1, "pps_2": a.packets / t2, "ratio": t1 / t2,
                   "runs": results}
        print(f"| shards | packets per shard | wall s | analysed pkt/s |\n|---|---|---:|---:|\n"
              f"| 1 | {a.packets} | {t1:.2f} | {a.packets / t1:,.0f} |\n"
              f"| 2 | {' + '.join(str(c) for _, c in shards)} | {t2:.2f} | "
              f"{a.packets / t2:,.0f} |\n\nratio 2/1: {t1 / t2:.2f} (medians of {a.runs})")
        if a.json:
            Path(a.json).write_text(json.dumps(summary, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
