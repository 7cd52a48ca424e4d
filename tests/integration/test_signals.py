"""Signals on real processes: SIGHUP never stops a daemon (it reloads the
CURVE allow-list, or is logged and ignored); SIGTERM/SIGINT/SIGHUP to the
query client remove its FILE.part."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import zmq
from lab import (
    Daemon,
    free_port,
    record_area,
    tool,
    wait_until,
)

from nflog_pipe import frame, pcap, security

area = record_area


def records(d: Daemon, event: str) -> list[dict]:
    return [r for r in d.records() if r.get("event") == event]


def last_counters(d: Daemon) -> dict:
    recs = [r for r in d.records() if r.get("event") in ("stats", "totals")]
    return recs[-1]["counters"] if recs else {}


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.mark.parametrize("cmd", ["nflog-pcap-recv", "nflog-zmq-compress", "nflog-zmq-decompress"])
def test_sighup_is_logged_and_ignored(cmd, tmp_path, zctx):
    src = f"tcp://127.0.0.1:{free_port()}"
    if cmd == "nflog-pcap-recv":
        out, pull = str(tmp_path / "out.pcap"), None
    else:
        out = f"tcp://127.0.0.1:{free_port()}"
        pull = zctx.socket(zmq.PULL)
        pull.bind(out)
    d = Daemon([tool(cmd), src, out, "--log-format", "json", "--stats-interval", "0.2"],
               tmp_path / "d.log")
    d.wait_log("start")
    push = zctx.socket(zmq.PUSH)
    push.connect(src)
    for i in range(2):
        os.kill(d.pid, signal.SIGHUP)
        wait_until(lambda i=i: len(records(d, "sighup")) == i + 1, what="a sighup record")
        assert d.proc.poll() is None
    assert records(d, "sighup")[0]["reloaded"] == []
    push.send(frame.encode("gw", 1, 0, 0, 3, area(3)))
    if pull is not None:
        assert pull.poll(10000)
        assert frame.decode(pull.recv()).count == 3
    wait_until(lambda: last_counters(d).get("packets_in") == 3, what="the frame after SIGHUP")
    totals = d.stop()  # SIGTERM: exit 0 with the totals record
    assert totals["reason"] == "SIGTERM" and totals["counters"]["packets_in"] == 3


def test_sighup_reloads_the_curve_allow_list(tmp_path, zctx):
    keys, allow = tmp_path / "keys", tmp_path / "allow"
    for n in ("receiver", "gw1", "gw2"):
        security.write_keypair(str(keys), n)
    allow.mkdir()
    (allow / "gw1.key").write_bytes((keys / "gw1.key").read_bytes())
    src = f"tcp://127.0.0.1:{free_port()}"
    d = Daemon([tool("nflog-pcap-recv"), src, str(tmp_path / "out.pcap"), "--log-format", "json",
                "--stats-interval", "0.2", "--curve-secret-key", str(keys / "receiver.key_secret"),
                "--curve-allow", str(allow)], tmp_path / "recv.log")
    d.wait_log("start")

    def client(name: str) -> zmq.Socket:
        s = zctx.socket(zmq.PUSH)
        s.linger = 0
        security.Curve(str(keys / f"{name}.key_secret"), str(keys / "receiver.key")).client(s)
        s.connect(src)
        return s

    gw2 = client("gw2")
    wait_until(lambda: last_counters(d).get("auth_refused", 0) >= 1, what="gw2 refused")
    gw2.close()
    # gw2 is allowed now; gw1 is no longer
    (allow / "gw2.key").write_bytes((keys / "gw2.key").read_bytes())
    (allow / "gw1.key").unlink()
    os.kill(d.pid, signal.SIGHUP)
    rec = d.wait_log("sighup")
    assert rec["reloaded"] == ["CURVE allow-list"]
    lists = records(d, "allow_list")
    assert lists[-1]["added"] == ["gw2.key"] and lists[-1]["removed"] == ["gw1.key"]
    gw2 = client("gw2")
    gw2.send(frame.encode("gw2", 2, 0, 0, 4, area(4)))
    wait_until(lambda: last_counters(d).get("packets_in") == 4, what="gw2's frame accepted")
    # a broken allow-list directory: reported, the previous list is kept, the daemon runs on
    os.rename(allow, tmp_path / "gone")
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log("reload_failed")
    assert d.proc.poll() is None
    totals = d.stop()
    assert totals["counters"]["packets_in"] == 4


@pytest.fixture
def stalling_server(zctx):
    """A buffer interface that announces 10 MB, sends one piece and then
    nothing: the client is mid-transfer with its FILE.part open."""
    router = zctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    yield router, port
    router.close(linger=0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_query_client_stopped_removes_its_part_file(sig, stalling_server, tmp_path):
    router, port = stalling_server
    out = tmp_path / "got.pcap"
    p = subprocess.Popen([tool("nflog-pcap-query"), str(port), "-o", str(out), "--timeout", "60",
                          "--log-format", "json"], stderr=subprocess.PIPE, text=True)
    try:
        assert router.poll(10000)
        ident, cmd, _body = router.recv_multipart()
        assert cmd == b"query"
        router.send_multipart([ident, b"header", json.dumps(
            {"version": 1, "records": 1000, "bytes": 10_000_000, "buffer": {}}).encode()])
        router.send_multipart([ident, b"data", pcap.GLOBAL_HEADER_BYTES])
        assert router.poll(10000)  # the client asks for more: it has written its first piece
        wait_until(lambda: (tmp_path / "got.pcap.part").exists(), what="FILE.part")
        p.send_signal(sig)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + sig, err
    assert not (tmp_path / "got.pcap.part").exists() and not out.exists()
    assert "Traceback" not in err
    assert f"stopped by {signal.Signals(sig).name}" in err and "removed" in err
