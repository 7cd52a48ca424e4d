"""The IDS side under restarts (issue 12), with real NFLOG traffic: readers of
the FIFO come and go at every kind of moment and each one gets a valid pcap
stream from byte 0; every packet sent is in exactly one reader's file, whole,
or counted as dropped with its reason.

Readers are ``tests/tools/fiforeader.py`` processes: what they take from the
pipe is in their file even when they are killed with SIGKILL (splice), so
the files are an exact record of what readers received."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from conftest import payload_file
from lab import ROOT, pcap_prefix

TOOLS = ROOT / "tests" / "tools"
PORT = 7400
TAP_PORT = 7499


def payloads(n: int, tag: bytes) -> list[bytes]:
    """Sizes 32..1372 (IP packets of 60..1400 bytes with the v4 headers)."""
    return [(tag + i.to_bytes(4, "big") * 400)[: 32 + (i * 97) % 1341] for i in range(n)]


def plan(tmp, rate: int) -> list[list[dict]]:
    """100 reader sessions in reader processes: closes after a while,
    immediate reopens (gap 0, same process), 1 ms / 50 ms / 300 ms gaps,
    SIGKILL in the header, mid-record and at any point, slow readers that
    leave with data (at 20 kpkt/s: a full pipe) unread."""
    slow = max(2000, rate * 800 // 20)  # a 20th of the traffic's bytes per second
    pattern = [
        [dict(seconds=0.15, end="close", gap=0), dict(seconds=0.05, end="close", gap=0.001),
         dict(limit=24 + 333, seconds=2, end="hang")],
        [dict(rate=slow, seconds=0.4, end="close", gap=0.05), dict(seconds=0.02, end="close"),
         dict(seconds=0.2, end="hang")],
        [dict(limit=10, seconds=1, end="close", gap=0.3),
         dict(rate=slow // 2, seconds=0.5, end="close", gap=0),
         dict(seconds=0.1, end="close", gap=0.05), dict(limit=24 + 16 + 5, seconds=2, end="hang")],
    ]
    procs, n = [], 0
    while n < 100:
        for sessions in pattern:
            proc = []
            for s in sessions:
                if n == 100:
                    break
                proc.append({**s, "out": str(tmp / f"reader{n:03d}.pcap")})
                n += 1
            if proc:
                procs.append(proc)
    return procs


class Reader:
    """One reader process (``tools/fiforeader.py``)."""

    def __init__(self, fifo, sessions: list[dict]):
        self.p = subprocess.Popen([sys.executable, str(TOOLS / "fiforeader.py"), str(fifo),
                                   json.dumps(sessions)], stdout=subprocess.PIPE,
                                  start_new_session=True)
        self.buf = b""

    def wait_for(self, *lines: str, timeout: float = 60.0) -> str:
        """The first of ``lines`` it prints ("" if it ends first).  Reads the
        pipe itself: lines that arrive together are all seen."""
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while time.monotonic() < deadline:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.decode() in lines:
                    return line.decode()
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return ""
                self.buf += chunk
        self.kill()
        raise AssertionError(f"reader {self.p.args[-1]} printed none of {lines} in {timeout}s")

    def kill(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(10)


def run_readers(fifo, procs: list[list[dict]]) -> list[str]:
    """The reader processes one after the other; each is killed with SIGKILL
    once it says it hangs, every third one only after the next one has opened
    the FIFO and taken the stream over (hand-over under traffic)."""
    outcomes = []
    cur = Reader(fifo, procs[0])
    for i in range(len(procs)):
        nxt = None
        if cur.wait_for("hanging", "done") == "hanging":
            if i % 3 == 2 and i + 1 < len(procs):
                nxt = Reader(fifo, procs[i + 1])
                assert nxt.wait_for("opened 0") == "opened 0"
                outcomes.append("handed over, killed")
            else:
                outcomes.append("killed")
            cur.kill()
        else:
            cur.kill()
            assert cur.p.returncode == 0
            outcomes.append("done")
        if i + 1 < len(procs):
            cur = nxt or Reader(fifo, procs[i + 1])
    return outcomes


class Traffic:
    """IPv4 and IPv6 datagrams at ``rate`` packets/s together, bounded in
    count (``seconds`` worth) and time; ``stop()`` ends them early."""

    def __init__(self, pipe, tmp, rate: int, seconds: float):
        n = int(rate * seconds / 2)
        self.procs = [pipe.lab.popen(pipe.gw.prefix() + [
            sys.executable, str(TOOLS / "udpsend.py"), dst, str(PORT),
            str(payload_file(tmp / f"p{i}", payloads(1341, tag))), "0", "0", str(rate / 2),
            str(n)],
            stdout=subprocess.PIPE, text=True)
            for i, (dst, tag) in enumerate(((pipe.link.b4, b"v4"), (pipe.link.b6, b"v6")))]

    def stop(self) -> int:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        return sum(int(p.communicate(timeout=30)[0]) for p in self.procs)


def dropped(counters: dict) -> dict:
    """Packets counted as dropped, by reason (not the frame counts, not the
    copies: ring and tap)."""
    return {k: v for k, v in counters.items() if k.startswith("dropped.") and v
            and not k.endswith(("_frames", "_bytes")) and k not in ("dropped.evicted",
                                                                     "dropped.tap_slow")}


@pytest.mark.parametrize("rate", [200, 20000], ids=["200pps", "20kpps"])
def test_100_reader_restarts_every_stream_valid_conservation_exact(pipe, tmp_path, rate):
    pipe.nflog_rule(12, PORT)
    pipe.nflog_rule(12, PORT, v6=True)
    tap = rate == 200
    pipe.start_receiver(*(("--tap", str(TAP_PORT)) if tap else ()))
    sender = pipe.start_sender("12", "--libnflog-timeout", "0.01")
    readers = plan(tmp_path, rate)
    traffic = Traffic(pipe, tmp_path, rate, seconds=90)
    if tap:  # PCAP-over-IP clients reconnecting at once, 20 times
        tapc = pipe.lab.popen(pipe.ids.prefix() + [
            sys.executable, str(TOOLS / "tapclient.py"), "127.0.0.1", str(TAP_PORT),
            str(tmp_path / "tap"), "20", "0.4"], stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    outcomes = run_readers(pipe.fifo, readers)
    spent = time.monotonic() - started
    # the last reader stays to the end: it reads until the receiver closes
    final = tmp_path / "reader100.pcap"
    last = Reader(pipe.fifo, [dict(out=str(final), seconds=120, end="eof")])
    pipe.receiver.wait_log("reader_attached", readers=101, timeout=30)
    time.sleep(2.0)  # the last reader under traffic too
    sent = traffic.stop()
    time.sleep(1.0)  # the sender's last batch
    s = sender.stop()["counters"]
    receiver_log = pipe.receiver.records()
    r = pipe.receiver.stop()["counters"]
    assert last.wait_for("done") == "done"

    files = sorted(tmp_path.glob("reader*.pcap"))
    assert len(files) == 101
    whole = cut = valid = 0
    for f in files:
        w, c = pcap_prefix(f.read_bytes())  # raises unless valid from byte 0
        whole += w
        cut += c > 0
        if f.stat().st_size >= 24:  # and tcpdump agrees
            valid += 1
            td = subprocess.run(["tcpdump", "-n", "-r", str(f)], capture_output=True, text=True)
            assert len(td.stdout.splitlines()) == w, (f, td.stderr)
            assert td.returncode == 0 or c and "truncated" in td.stderr, (f, td.stderr)
    detached = [x for x in receiver_log if x.get("event") == "reader_detached"]
    sd, rd = dropped(s), dropped(r)
    figures = dict(rate=rate, readers=len(files), reader_processes=len(readers),
                   killed=sum(o.endswith("killed") for o in outcomes),
                   handed_over=outcomes.count("handed over, killed"), seconds=round(spent, 1),
                   files_with_header=valid, sent=sent, read_whole=whole, cut_files=cut,
                   sender_dropped=sd, receiver_dropped=rd,
                   left_with_unread=sum(1 for x in detached if x.get("dropped_unread")),
                   left_full_pipe=sum(1 for x in detached if x["pipe_bytes"] > 1000000))
    print("restarts:", json.dumps(figures))
    (tmp_path.parent / f"figures-{rate}.json").write_text(json.dumps(figures))

    # exact conservation, end to end
    assert s["packets_in"] == sent
    assert s["packets_in"] == s["packets_out"] + sum(sd.values())
    assert r["packets_in"] == s["packets_out"]
    assert r["packets_in"] == r["packets_out"] + sum(rd.values())
    assert whole == r["packets_out"]
    assert sent == whole + sum(sd.values()) + sum(rd.values())
    # what happened is what the test meant to happen
    assert r.get("dropped.unread_at_exit", 0) == 0  # the last reader read to the end
    assert r["dropped.reader_gone"] >= cut > 0
    assert figures["killed"] >= 9 and figures["handed_over"] >= 5
    replaced = [x for x in receiver_log if x.get("event") == "reader_replaced"]
    assert len(replaced) >= figures["handed_over"]  # (+ a reopen seen before the close)
    assert figures["left_with_unread"] >= 10
    assert pcap_prefix(final.read_bytes())[0] > 0
    if rate == 20000:  # slow readers left with a full pipe (1 MiB)
        assert figures["left_full_pipe"] >= 5
    if tap:
        assert tapc.communicate(timeout=60)[0].strip() == "20"
        streams = [pcap_prefix((tmp_path / f"tap.{n}").read_bytes()) for n in range(20)]
        assert all(len((tmp_path / f"tap.{n}").read_bytes()) >= 24 for n in range(20))
        assert sum(1 for w, _ in streams if w > 0) >= 18
        assert r["tap.clients"] == 20
