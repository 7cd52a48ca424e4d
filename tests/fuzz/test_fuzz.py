"""The short fuzz run of CI: every target replays its regression corpus and
gets a few thousand generated inputs (hypothesis); accepted fuzzed frames
written by the receiver are read back by tcpdump; the harness itself is
shown to catch what it claims to catch.  The long campaign is bench/fuzz.py
(docs/fuzzing.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from nflog_pipe import codec, frame, pcap
from nflog_pipe.metrics import Counters
from nflog_pipe.output import PcapOutput
from nflog_pipe.receiver import Receiver

from . import run, strategies, targets, wire
from .harness import CORPUS, TARGETS, BudgetExceeded, budget

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
#: generated inputs per target in CI
EXAMPLES = int(os.environ.get("NFLOG_FUZZ_EXAMPLES", "2500"))


@pytest.fixture(scope="module", autouse=True)
def _shared_output():
    yield
    targets.close_receiver_sink()  # parses the whole pcap file the receiver target wrote


def test_every_target_has_a_corpus():
    assert {"frame", "receiver", "codec", "relay_compress", "relay_decompress", "bpf",
            "query"} <= set(TARGETS)
    for t in TARGETS.values():
        assert t.corpus_files(), f"tests/fuzz/corpus/{t.name}/ is empty"
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == sorted(TARGETS)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target(name):
    """Replay the corpus, then EXAMPLES generated inputs.  Targets that
    compile filters (libpcap resolves names) run in a new network namespace
    (root, as CI), so no fuzzed host name is ever looked up."""
    t = TARGETS[name]
    if t.isolate:
        proc = subprocess.run(
            ["unshare", "-n", sys.executable, "-m", "fuzz.run", "--examples", str(EXAMPLES),
             name], cwd=TESTS, capture_output=True, text=True, timeout=1700)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{name}: {len(t.corpus_files())} corpus inputs replayed" in proc.stdout
        return
    assert run.replay(t) == len(t.corpus_files())
    assert run.run_hypothesis(t, EXAMPLES) >= EXAMPLES


@pytest.mark.timeout(900)
def test_accepted_fuzzed_frames_are_a_pcap_tcpdump_reads(tmp_path):
    """Frames decode accepts, written by the receiver into a pcap file: our
    parser and tcpdump read every record back."""
    accepted: list[bytes] = []

    @settings(max_examples=3000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategies.frames())
    def collect(data):
        try:
            frame.decode(data)
        except frame.FrameError:
            return
        accepted.append(data)

    collect()
    assert len(accepted) >= 200, f"only {len(accepted)} of 3000 fuzzed frames accepted"
    path = tmp_path / "fuzzed.pcap"
    c = Counters()
    out = PcapOutput(str(path), c, max_pending=1 << 30)
    recv = Receiver(out, c)
    records = 0
    for data in accepted:
        f = recv.handle(memoryview(data))
        assert f is not None
        records += f.count
    out.close()
    assert c["packets_out"] == records and c["dropped.output"] == 0
    info, recs = pcap.parse(path.read_bytes())
    assert len(recs) == records and info["linktype"] == pcap.LINKTYPE_RAW
    assert records >= 200
    proc = subprocess.run(["tcpdump", "-n", "-r", str(path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "truncated" not in proc.stderr and "bogus" not in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == records


# -- the harness has teeth ------------------------------------------------------------------
def _seed(target: str, name: str) -> bytes:
    return (CORPUS / target / f"seed-{name}").read_bytes()


@pytest.mark.parametrize("name", ["small-frame-announces-64mib", "zip-bomb-raw-len-0",
                                  "zip-bomb-raw-len-1000", "zstd-content-size-lies-64mib",
                                  "zstd-bomb-raw-len-0", "zstd-bomb-raw-len-1000"])
def test_small_frame_announcing_much_allocates_little(name):
    """Decompression is bounded by raw_len and by what the payload can expand
    to, checked before any allocation: these allocate less than 4 MiB."""
    data = _seed("frame", name)
    assert len(data) < 64 << 10
    with budget(3 << 20, name), pytest.raises(frame.FrameError):
        frame.decode(data)


def test_a_true_bomb_within_the_limits_costs_at_most_its_raw_len():
    """A 2 KiB zstd payload can really hold 64 MiB: it may cost that, no more."""
    data = _seed("frame", "zstd-small-frame-announces-64mib")
    assert len(data) < 4096
    with budget(frame.MAX_RAW, "64 MiB zstd bomb"), pytest.raises(frame.FrameError):
        frame.decode(data)


def test_limits_hold_before_any_allocation():
    big = bytes(frame.MAX_FRAME + 1)
    big = wire.patch(big, magic=frame.MAGIC, version=frame.VERSION)
    with budget(0, "oversize frame"), pytest.raises(frame.FrameError) as e:
        frame.decode(big)
    assert e.value.kind == "oversize"
    huge = wire.patch(_seed("frame", "valid-zlib"), raw_len=frame.MAX_RAW + 1)
    with budget(0, "raw_len over the limit"), pytest.raises(frame.FrameError):
        frame.decode(huge)


def test_budget_catches_an_unbounded_decompressor(monkeypatch):
    """Had codec.decompress not bounded its output (the raw_len=0 bug the
    fuzzer found), the frame target would fail on the bomb seed."""
    def unbounded(cid, payload, raw_len):
        out = zlib.decompress(payload)
        if len(out) != raw_len:
            raise codec.CodecError("decompress", "size")
        return out

    monkeypatch.setattr(codec, "decompress", unbounded)
    with pytest.raises(BudgetExceeded):
        TARGETS["frame"].fn(_seed("frame", "zip-bomb-raw-len-0"))


def test_frame_target_catches_a_validator_that_accepts_bad_records(monkeypatch):
    class Lax:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def nzp_validate(*args):
            return 0

    real = frame._rlib
    monkeypatch.setattr(frame, "_rlib", Lax())
    with pytest.raises(AssertionError, match="rejects"):
        TARGETS["frame"].fn(_seed("frame", "caplen-gt-origlen"))


def test_receiver_target_catches_a_corrupt_record_in_the_output(monkeypatch, tmp_path):
    sink = targets.PcapSink(str(tmp_path))  # not the shared file: this one gets corrupt
    monkeypatch.setattr(targets, "_sink", sink)
    real_write = PcapOutput.write

    def corrupting(self, records, count):
        b = bytearray(records)
        if len(b) >= 16:
            b[8:12] = (len(b) + 1).to_bytes(4, "little")  # caplen past the end
        return real_write(self, memoryview(bytes(b)), count)

    monkeypatch.setattr(PcapOutput, "write", corrupting)
    with pytest.raises(AssertionError, match="not the frame's records"):
        TARGETS["receiver"].fn(_seed("frame", "valid-uncompressed"))
    sink.out.close()
    os.close(sink.rfd)


def test_hypothesis_failure_is_kept_in_the_corpus(monkeypatch, tmp_path):
    monkeypatch.setattr("fuzz.harness.CORPUS", tmp_path)

    def broken(data: bytes) -> None:
        if len(data) > 45:
            raise ValueError("boom")

    t = TARGETS["frame"]
    monkeypatch.setattr(t, "fn", broken)
    with pytest.raises(run.TargetFailed) as e:
        run.run_hypothesis(t, 200)
    kept = list((tmp_path / "frame").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("crash-")
    assert kept[0].read_bytes() == e.value.data and len(e.value.data) > 45


@pytest.mark.timeout(900)
def test_campaign_driver_runs_atheris(tmp_path):
    """bench/fuzz.py (the long campaign) on a small budget: atheris runs, the
    counts come back, nothing breaks."""
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz.py"), "--runs", "3000",
         "--targets", "frame,bpf", "--results", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["result"] == "no failures"
    for name in ("frame", "bpf"):
        r = res["targets"][name]
        assert r["runs"] >= 3000 and r["crashes"] == [] and r["cov"] > 0
    assert shutil.which("unshare")
