#!/usr/bin/env python3
"""Rate control benchmark: what compression costs and gains, and how much
latency rate control adds.

    .venv/bin/python bench/bench_compress.py [--quick] [--out bench/results/compress]

Part 1 -- codecs.  Record areas as the sender builds them (pcap records,
IPv4 + TCP/UDP headers) for three payload mixes: HTTP-like text (requests,
response headers, HTML and JSON bodies), random bytes (TLS-like, does not
compress) and a 50/50 mix by bytes.  For each codec and level: compressed
size / raw size, and CPU seconds per MiB of record area to compress and to
decompress (``codec.decompress``, the bounded path the receiver uses), at the
sender's frame size (256 KiB) and the default squash size (1 MiB).

Part 2 -- latency.  The real ``nflog-zmq-compress`` command between a paced
PUSH and a PULL on loopback; every record carries its send time, the PULL
side decodes frames (decompressing) and measures per packet.  Each scenario
runs once with the given watermarks and once with rate control off
(``--lwm 0 --hwm 0``: the same relay, frames passed as they are); the extra
latency is the difference.  Also the relay's CPU per MiB offered.

Nothing here is asserted; figures go to stdout (markdown) and, with --out,
to OUT.md and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "lib"))
from testkit import free_port  # noqa: E402  (tools/lib/testkit.py)

sys.path.insert(0, str(HERE.parent / "src"))
from nflog_pipe import codec, frame, pcap  # noqa: E402

MiB = 1 << 20

# -- traffic --------------------------------------------------------------------

PATHS = ["/", "/index.html", "/api/v1/items", "/static/app.js", "/login", "/search"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0",
          "curl/7.88.1", "python-requests/2.28.1"]


def http_payload(rnd: random.Random) -> bytes:
    kind = rnd.random()
    if kind < 0.4:
        return (f"GET {rnd.choice(PATHS)}?id={rnd.randrange(10**6)} HTTP/1.1\r\n"
                f"Host: shop{rnd.randrange(5)}.example\r\nUser-Agent: {rnd.choice(AGENTS)}\r\n"
                "Accept: text/html,application/json;q=0.9,*/*;q=0.8\r\n"
                f"Cookie: session={rnd.getrandbits(64):016x}\r\n\r\n").encode()
    if kind < 0.7:
        items = ",".join(f'{{"id":{rnd.randrange(10**5)},"name":"item {rnd.randrange(999)}",'
                         f'"price":{rnd.randrange(10**4) / 100},"tags":["a","b"]}}'
                         for _ in range(rnd.randint(3, 12)))
        body = f'{{"items":[{items}],"page":{rnd.randrange(40)}}}'
        return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-cache\r\n\r\n{body}").encode()
    rows = "".join(f"<tr><td class=\"c{i % 3}\">row {rnd.randrange(10**4)}</td>"
                   f"<td><a href=\"/p/{rnd.randrange(10**5)}\">detail</a></td></tr>\n"
                   for i in range(rnd.randint(5, 20)))
    return (f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nServer: nginx\r\n\r\n"
            f"<html><head><title>Page {rnd.randrange(100)}</title></head><body><table>\n"
            f"{rows}</table></body></html>").encode()[:1400]


def ip_packet(payload: bytes, i: int, tcp: bool) -> bytes:
    l4 = (struct.pack(">HHIIBBHHH", 40000 + i % 1000, 80, i * 1448, 0, 0x50, 0x18, 502, 0, 0)
          if tcp else struct.pack(">HHHH", 40000 + i % 1000, 53, 8 + len(payload), 0))
    total = 20 + len(l4) + len(payload)
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, i & 0xFFFF, 0x4000, 64, 6 if tcp else 17,
                       0, bytes([10, 0, 0, 1]), bytes([10, 0, i % 250, 2])) + l4 + payload


def record_area(mix: str, size: int, seed: int = 7) -> tuple[bytes, int]:
    """About ``size`` bytes of records; returns (area, count)."""
    rnd = random.Random(seed)
    out, n, count = [], 0, 0
    t = 1_700_000_000
    while n < size:
        text = mix == "text" or mix == "mixed" and rnd.random() < 0.5
        payload = http_payload(rnd) if text else rnd.randbytes(rnd.randint(100, 1400))
        rec = pcap.record(t + count // 1000, (count * 37) % 1_000_000,
                          ip_packet(payload, count, tcp=text))
        out.append(rec)
        n += len(rec)
        count += 1
    return b"".join(out), count


# -- part 1: codecs ----------------------------------------------------------------

LEVELS = [(codec.ZLIB, 1), (codec.ZLIB, 3), (codec.ZLIB, 6), (codec.ZLIB, 9),
          (codec.ZSTD, 1), (codec.ZSTD, 3), (codec.ZSTD, 6), (codec.ZSTD, 9), (codec.ZSTD, 19)]


def bench_codecs(quick: bool) -> list[dict]:
    rows = []
    total = (4 if quick else 16) * MiB
    for mix in ("text", "mixed", "random"):
        for frame_size in (256 * 1024, MiB):
            areas = [record_area(mix, frame_size, seed)[0] for seed in range(total // frame_size)]
            for cdc, level in LEVELS:
                use = areas if not (cdc == codec.ZSTD and level >= 19) else areas[:max(1, len(
                    areas) // 8)]
                use_raw = sum(len(a) for a in use)
                comp = codec.Compressor(cdc, level)
                t0 = time.process_time()
                packed = [comp.compress(a) for a in use]
                t_c = time.process_time() - t0
                t0 = time.process_time()
                for a, p in zip(use, packed, strict=True):
                    codec.decompress(cdc, p, len(a))
                t_d = time.process_time() - t0
                rows.append({
                    "mix": mix, "frame_kib": frame_size // 1024, "codec": codec.NAMES[cdc],
                    "level": level, "ratio": round(sum(map(len, packed)) / use_raw, 4),
                    "compress_ms_per_mib": round(1000 * t_c / (use_raw / MiB), 2),
                    "decompress_ms_per_mib": round(1000 * t_d / (use_raw / MiB), 2),
                    "mib": round(use_raw / MiB, 1)})
    return rows


# -- part 2: latency -----------------------------------------------------------------

REC = 1024  # bytes per record in the latency runs (fixed: ts fields at known offsets)




def cpu_seconds(pid: int) -> float:
    """CPU time of all threads of a process (ns resolution, schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except (OSError, ValueError):
            pass
    return total / 1e9


def latency_run(rate_mib: float, frame_kib: int, seconds: float, relay_args: list[str]) -> dict:
    src, dst = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    exe = str(Path(sys.executable).parent / "nflog-zmq-compress")
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")
    relay = subprocess.Popen([exe, src, dst, "--log-format", "json", "--zmq-buffer", "10000",
                              *relay_args], stderr=log, text=True)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(dst)
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 10000
    push.connect(src)
    deadline = time.monotonic() + 20
    while '"event": "start"' not in Path(log.name).read_text():
        if time.monotonic() > deadline or relay.poll() is not None:
            raise RuntimeError("relay did not start: " + Path(log.name).read_text())
        time.sleep(0.05)
    time.sleep(0.2)  # connections up
    per = frame_kib * 1024 // REC
    data = bytes(REC - 16 - 28)
    template = bytearray(b"".join(pcap.record(0, 0, ip_packet(data, i, False))
                                  for i in range(per)))
    step = per * REC / (rate_mib * MiB)
    lat: list[float] = []
    got = [0]
    stop = threading.Event()

    def consume():
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        while True:
            if not poller.poll(100):
                if stop.is_set():
                    return
                continue
            f = frame.decode(pull.recv())
            now = time.time()
            mv = f.records
            for off in range(0, len(mv), REC):
                sec, usec = struct.unpack_from("<II", mv, off)
                lat.append(now - (sec + usec / 1e6))
            got[0] += f.count

    th = threading.Thread(target=consume)
    th.start()
    cpu0 = cpu_seconds(relay.pid)
    seq = sent = 0
    t_next = time.monotonic()
    end = t_next + seconds
    while t_next < end:
        delay = t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        sec, usec = int(now), int((now % 1) * 1e6)
        for off in range(0, len(template), REC):
            struct.pack_into("<II", template, off, sec, usec)
        push.send(frame.encode("bench", 1, seq, sent, per, template))
        seq += 1
        sent += per
        t_next += step
    time.sleep(1.0)
    cpu = cpu_seconds(relay.pid) - cpu0
    relay.terminate()
    relay.wait(20)
    err = Path(log.name).read_text()
    log.close()
    stop.set()
    th.join()
    push.close(0)
    pull.close(0)
    ctx.term()
    totals = [json.loads(x) for x in err.splitlines() if '"totals"' in x]
    c = totals[-1]["counters"] if totals else {}
    lat.sort()
    q = (lambda p: round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2)) if lat else (
        lambda p: None)
    return {"sent": sent, "delivered": got[0], "dropped_hwm": c.get("dropped.hwm", 0),
            "compressed_packets": c.get("compressed_packets", 0),
            "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0),
            "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
            "relay_cpu_ms_per_mib": round(1000 * cpu / (sent * REC / MiB), 2)}


SCENARIOS = [
    # name, offered MiB/s, frame KiB, relay options
    ("light, compress everything (--lwm 0.001)", 0.05, 1, ["--lwm", "0.001"]),
    ("below --lwm (defaults 1/5)", 0.5, 16, []),
    ("between watermarks (defaults 1/5)", 3.0, 64, []),
    ("above --hwm (defaults 1/5)", 20.0, 64, []),
    ("above --hwm, zstd 3", 20.0, 64, ["--codec", "zstd"]),
    ("between watermarks, --compress-delay 0.02", 3.0, 64, ["--compress-delay", "0.02"]),
]


def bench_latency(quick: bool) -> list[dict]:
    rows = []
    seconds = 2.0 if quick else 5.0
    for name, rate, fkib, opts in SCENARIOS:
        base = latency_run(rate, fkib, seconds, ["--lwm", "0", "--hwm", "0"])
        rc = latency_run(rate, fkib, seconds, opts)
        rows.append({"scenario": name, "offered_mib_s": rate, "frame_kib": fkib,
                     "off": base, "on": rc,
                     "extra_p50_ms": round(rc["p50_ms"] - base["p50_ms"], 2),
                     "extra_p99_ms": round(rc["p99_ms"] - base["p99_ms"], 2)})
    return rows


# -- report ------------------------------------------------------------------------

def markdown(codecs: list[dict], latency: list[dict]) -> str:
    out = ["## Codecs: size ratio and CPU per MiB of record area", "",
           "| mix | frame KiB | codec | level | ratio | compress ms/MiB | decompress ms/MiB |",
           "|---|---:|---|---:|---:|---:|---:|"]
    for r in codecs:
        out.append(f"| {r['mix']} | {r['frame_kib']} | {r['codec']} | {r['level']} | "
                   f"{r['ratio']:.3f} | {r['compress_ms_per_mib']} | "
                   f"{r['decompress_ms_per_mib']} |")
    out += ["", "## Latency added by rate control (nflog-zmq-compress on loopback)", "",
            "| scenario | offered MiB/s | off p50/p99 ms | on p50/p99/max ms | extra p50/p99 ms "
            "| compressed / dropped.hwm / delivered of sent | relay CPU ms/MiB off/on |",
            "|---|---:|---:|---:|---:|---|---:|"]
    for r in latency:
        b, o = r["off"], r["on"]
        out.append(f"| {r['scenario']} | {r['offered_mib_s']} | {b['p50_ms']}/{b['p99_ms']} | "
                   f"{o['p50_ms']}/{o['p99_ms']}/{o['max_ms']} | {r['extra_p50_ms']}/"
                   f"{r['extra_p99_ms']} | {o['compressed_packets']} / {o['dropped_hwm']} / "
                   f"{o['delivered']} of {o['sent']} | {b['relay_cpu_ms_per_mib']}/"
                   f"{o['relay_cpu_ms_per_mib']} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="less data, shorter runs")
    ap.add_argument("--only", choices=("codecs", "latency"))
    ap.add_argument("--out", help="write OUT.md and OUT.json")
    a = ap.parse_args()
    codecs = bench_codecs(a.quick) if a.only != "latency" else []
    latency = bench_latency(a.quick) if a.only != "codecs" else []
    md = markdown(codecs, latency)
    print(md)
    if a.out:
        Path(a.out + ".md").write_text(md)
        Path(a.out + ".json").write_text(json.dumps({"codecs": codecs, "latency": latency},
                                                    indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
