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
the packet count); the ratio T1 / T2 is the gain of the second shard (goal
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


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
        payload = b"GET /item/%d HTTP/1.0 host example %d " % (n, n % 977) + rnd.randbytes(40)
        size = 28 + len(payload)
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size, n & 0xFFFF, 0x4000, 64, 17, 0, a, b)
        udp = struct.pack(">HHHH", sport, 53 if not (n // flows) % 2 else sport + 1,
                          8 + len(payload), 0)
        recs += pcap.record(1_700_000_000 + n // 100000, n % 100000 * 10, ip + udp + payload)
    path.write_bytes(pcap.GLOBAL_HEADER_BYTES + recs)
    return bytes(recs)


def make_rules(path: Path, n: int, seed: int = 16) -> None:
    rnd = random.Random(seed)
    alpha = "abcdefghijklmnopqrstuvwxyz"
    with open(path, "w") as f:
        for i in range(n):
            word = "".join(rnd.choice(alpha) for _ in range(8))
            word2 = "".join(rnd.choice(alpha) for _ in range(6))
            f.write(f'alert udp any any -> any any (msg:"bench {i}"; content:"{word[:4]}"; '
                    f'pcre:"/{word}[0-9]+{word2}/i"; sid:{5_000_000 + i}; rev:1;)\n')


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
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
    t0 = time.monotonic()
    procs = [(suricata(cpu, path, rules, tmp / f"{tag}{i}"), tmp / f"{tag}{i}")
             for i, (cpu, path, rules) in enumerate(procs_spec)]
    for p, _ in procs:
        p.wait(3600)
        if p.returncode:
            raise RuntimeError(f"suricata exited {p.returncode}")
    return time.monotonic() - t0, [decoded(d) for _, d in procs]


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
            t1, d1 = run([(0, tmp / "all.pcap", rules)], tmp, f"one{r}-")
            t2, d2 = run([(0, shards[0][0], rules), (1, shards[1][0], rules)], tmp, f"two{r}-")
            results.append({"run": r, "t1": t1, "t2": t2, "decoded1": d1, "decoded2": d2})
            print(f"# run {r}: 1 shard {t1:.2f} s ({a.packets / t1:,.0f} pkt/s), 2 shards "
                  f"{t2:.2f} s ({a.packets / t2:,.0f} pkt/s), ratio {t1 / t2:.2f}; decoded "
                  f"{d1} / {d2}", flush=True)
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
