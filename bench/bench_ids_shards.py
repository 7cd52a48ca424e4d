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

  1 shard:  ``taskset -c 0 suricata --runmode single -r all.pcap``
  2 shards: ``taskset -c 0 suricata --runmode single -r shard0.pcap`` and, started
            at the same time, ``taskset -c 1 ... -r shard1.pcap``

What is timed, per Suricata (run with ``-v``; each log line timed as it reaches
the bench, so the pipe's lag is the same at both ends):

  load      spawn -> "Engine started" (rule loading: not counted)
  analysis  "Engine started" -> "pcap file ... end of file reached".  In the
            single runmode one thread reads the file and runs decode, flow and
            detection on each packet before it reads the next, so at that line
            every packet has been analysed.
  shutdown  that line -> exit (flow cleanup, stats, freeing the rules: not counted)

T = the analysis time of the slowest Suricata (1 shard: the only one; 2 shards:
both start together, each on its own core, and the pair is done when the slower
one is); analysed packets/s = packets / T; the ratio T1 / T2 is the gain of the
second shard (goal >= 1.8 on a 2-core machine; the ceiling is packets / the larger
shard, printed as "ideal").  Every packet is analysed once: each Suricata's "pcap:
read N packets" and stats.log "decoder.pkts" must equal its file's packet count.

Printed beside it, per process: the breakdown above, Suricata's own "time
elapsed" (its threads started -> stopped, which also covers the flow cleanup), the
CPU seconds of the packet thread (W#01) at end of file, and the core share (the
process's CPU seconds during the analysis / the analysis time: below 0.9 something
else ran on that core, and the run is marked CONTENDED).  The "worker CPU" ratio
is T1 / T2 with CPU seconds in place of wall seconds: it does not see time lost to
other processes on the core, but does see a core that computes slower (another
VM or a busy sibling on the host).  The old measure (the later "Engine started"
to the last exit) is printed too: it adds the shutdown (~0.04 s here) to both, and
with 2 shards it does not count what the earlier Suricata analysed while the other
was still loading its rules, which can push it above the ideal.

The pcaps are read from files, not FIFOs: this measures the IDS side of scale-out,
which is what limits it (the receiver writes millions of packets/s, Suricata tens
of thousands).
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
    # -v: the Info lines ("end of file reached", "time elapsed") are the markers
    return subprocess.Popen(
        ["taskset", "-c", str(cpu), "suricata", "-v", "-r", str(pcap_path), "-S", str(rules),
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


TICK = os.sysconf("SC_CLK_TCK")
#: below this share of its core during the analysis a Suricata was not alone on it
MIN_SHARE = 0.9


def cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of a process, or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def worker_cpu_s(pid: int) -> float:
    """CPU seconds of Suricata's packet thread(s) ("W#01" in the single runmode:
    it reads the file and runs decode, flow and detection on every packet)."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().startswith("W#"):
                total += cpu_s(pid, int(tid))
    return total


def run(procs_spec, tmp: Path, tag: str) -> dict:
    """Start the Suricatas together and time each one from its own log lines.

    Per process (times taken when the line reaches us, the same lag at both ends):
    ``load``: spawn -> "Engine started" (rule loading, not counted);
    ``analysis``: "Engine started" -> "pcap file ... end of file reached" (in the
    single runmode the thread that reads the file runs decode, flow and detection on
    each packet before it reads the next, so at that line every packet has been
    analysed); ``shutdown``: that line -> exit.  ``share``: the process's CPU
    seconds over ``analysis`` (1.0 = the core was its own; less: something else ran
    on it).  ``worker_cpu``: CPU seconds of the packet thread at end of file.
    """
    t0 = time.monotonic()
    procs = [(suricata(cpu, path, rules, tmp / f"{tag}{i}"), tmp / f"{tag}{i}", count)
             for i, (cpu, path, rules, count) in enumerate(procs_spec)]
    info: list[dict] = [{} for _ in procs]

    def follow(p, d):
        cpu_start = None
        for line in p.stdout:
            now = time.monotonic()
            if "Engine started" in line and "start" not in d:
                d["start"] = now
                cpu_start = cpu_s(p.pid)
            elif "end of file reached" in line and "eof" not in d:
                d["eof"] = now
                d["analysis_cpu"] = cpu_s(p.pid) - (cpu_start or 0.0)
                d["worker_cpu"] = worker_cpu_s(p.pid)
            elif "time elapsed" in line:  # Suricata's own: threads started -> stopped
                d["suricata_elapsed"] = float(line.split("time elapsed")[1].strip().rstrip("s"))
            elif "pcap: read" in line:
                d["read"] = int(line.split(" packets")[0].split()[-1])
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        d["exit"] = time.monotonic()
        d["cpu_total"] = ru.ru_utime + ru.ru_stime

    threads = [threading.Thread(target=follow, args=(p, d)) for (p, _, _), d in zip(procs, info, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3600)
    out = []
    for (p, logdir, count), d in zip(procs, info, strict=True):
        if p.returncode:
            raise RuntimeError(f"suricata exited {p.returncode} ({logdir})")
        if "start" not in d or "eof" not in d:
            raise RuntimeError(f"no 'Engine started' / 'end of file reached' line ({logdir})")
        d["decoded"] = decoded(logdir)
        if d.get("read") != count or d["decoded"] != count:
            raise RuntimeError(f"{logdir}: {count} packets in the file, Suricata read "
                               f"{d.get('read')} and decoded {d['decoded']}")
        d["packets"] = count
        d["load"] = d["start"] - t0
        d["analysis"] = d["eof"] - d["start"]
        d["shutdown"] = d["exit"] - d["eof"]
        d["share"] = d["analysis_cpu"] / d["analysis"]
        out.append(d)
    return {
        # the measure: the slowest shard's own analysis time
        "t": max(d["analysis"] for d in out),
        # its CPU counterpart: the most loaded packet thread's CPU seconds
        "t_cpu": max(d["worker_cpu"] for d in out),
        # the old measure: the later "Engine started" to the last exit
        "t_old": max(d["exit"] for d in out) - max(d["start"] for d in out),
        "procs": [{k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()
                   if k not in ("start", "eof", "exit")} for d in out],
    }


def describe(tag: str, r: dict) -> str:
    return "\n".join(
        f"#   {tag}[{i}] {d['packets']} pkts: load {d['load']:.2f} s | analysis "
        f"{d['analysis']:.3f} s ({d['packets'] / d['analysis']:,.0f} pkt/s, core share "
        f"{d['share']:.2f}, worker CPU {d['worker_cpu']:.2f} s) | shutdown "
        f"{d['shutdown']:.3f} s | Suricata's 'time elapsed' {d.get('suricata_elapsed')} s"
        for i, d in enumerate(r["procs"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=400_000)
    ap.add_argument("--flows", type=int, default=4000)
    ap.add_argument("--rules", type=int, default=3200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--control", action="store_true",
                    help="also run each shard alone on core 0 (the other core idle): what 2 "
                    "shards would give if the two cores did not slow each other down")
    a = ap.parse_args(argv)
    if not shutil.which("suricata") or not shutil.which("taskset"):
        sys.exit("needs suricata and taskset")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ids_shards."))
    try:
        recs = make_pcap(tmp / "all.pcap", a.packets, a.flows)
        rules = tmp / "heavy.rules"
        make_rules(rules, a.rules)
        shards = split(recs, a.packets, tmp)
        ideal = a.packets / max(c for _, c in shards)
        results = []
        for r in range(a.runs):
            one = run([(0, tmp / "all.pcap", rules, a.packets)], tmp, f"one{r}-")
            two = run([(0, shards[0][0], rules, shards[0][1]),
                       (1, shards[1][0], rules, shards[1][1])], tmp, f"two{r}-")
            shares = [d["share"] for d in one["procs"] + two["procs"]]
            results.append({"run": r, "one": one, "two": two,
                            "contended": min(shares) < MIN_SHARE})
            if a.control:
                alone = [run([(0, shards[i][0], rules, shards[i][1])], tmp, f"alone{r}-{i}-")
                         for i in (0, 1)]
                t_alone = max(x["t"] for x in alone)
                results[-1]["alone"] = alone
                results[-1]["t_alone"] = t_alone
                print(f"# run {r} control: each shard alone on core 0: "
                      + ", ".join(f"{x['t']:.2f} s" for x in alone)
                      + f"; 1 shard / the slower alone: {one['t'] / t_alone:.2f}; "
                      f"together each took {two['t'] / t_alone:.2f}x as long", flush=True)
            print(f"# run {r}: analysis 1 shard {one['t']:.2f} s "
                  f"({a.packets / one['t']:,.0f} pkt/s), 2 shards {two['t']:.2f} s "
                  f"({a.packets / two['t']:,.0f} pkt/s), ratio {one['t'] / two['t']:.2f} | "
                  f"worker CPU ratio {one['t_cpu'] / two['t_cpu']:.2f} | old measure "
                  f"(later 'Engine started' -> last exit) {one['t_old']:.2f} / "
                  f"{two['t_old']:.2f} s, ratio {one['t_old'] / two['t_old']:.2f}"
                  + (f" | CONTENDED: a core share {min(shares):.2f} < {MIN_SHARE}"
                     if min(shares) < MIN_SHARE else ""), flush=True)
            print(describe("1 shard ", one), flush=True)
            print(describe("2 shards", two), flush=True)

        def med(key, n):
            return statistics.median(x[n][key] for x in results)

        t1, t2 = med("t", "one"), med("t", "two")
        c1, c2 = med("t_cpu", "one"), med("t_cpu", "two")
        o1, o2 = med("t_old", "one"), med("t_old", "two")
        contended = sum(x["contended"] for x in results)
        summary = {"packets": a.packets, "flows": a.flows, "rules": a.rules,
                   "shard_packets": [c for _, c in shards], "ideal_ratio": ideal,
                   "t1_s": t1, "t2_s": t2, "pps_1": a.packets / t1, "pps_2": a.packets / t2,
                   "ratio": t1 / t2, "cpu_ratio": c1 / c2, "old_t1_s": o1, "old_t2_s": o2,
                   "old_ratio": o1 / o2, "contended_runs": contended, "runs": results}
        print(f"| shards | packets per shard | analysis s | analysed pkt/s | worker CPU s "
              f"| old measure s |\n|---|---|---:|---:|---:|---:|\n"
              f"| 1 | {a.packets} | {t1:.2f} | {a.packets / t1:,.0f} | {c1:.2f} | {o1:.2f} |\n"
              f"| 2 | {' + '.join(str(c) for _, c in shards)} | {t2:.2f} | "
              f"{a.packets / t2:,.0f} | {c2:.2f} | {o2:.2f} |\n\n"
              f"ratio 2/1 (analysis): {t1 / t2:.2f}; worker CPU: {c1 / c2:.2f}; old measure: "
              f"{o1 / o2:.2f}; ideal for this split: {ideal:.2f} (medians of {a.runs} runs; "
              f"{contended} with a core share < {MIN_SHARE})")
        if a.control:
            ta = statistics.median(x["t_alone"] for x in results)
            summary["t_alone_s"] = ta
            print(f"control: the slower shard alone {ta:.2f} s, ratio 1 shard / it "
                  f"{t1 / ta:.2f} (the split); run together the shards took {t2 / ta:.2f}x as "
                  "long as alone (the two cores slowing each other down)")
        if a.json:
            Path(a.json).write_text(json.dumps(summary, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
