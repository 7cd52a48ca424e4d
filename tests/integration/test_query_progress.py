"""nflog-pcap-query -o FILE on a terminal: a progress line on stderr (bytes
of the announced total, rate, time left); nothing when stderr is not a
terminal or with --quiet; --wait says when it asks again.  The real client
process, against a ZeroMQ buffer interface scripted by the test."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import threading

import pytest
import zmq
from lab import tool

from nflog_pipe import pcap
from nflog_pipe.query import Progress

PIECE = 256 * 1024
PIECES = 8
BODY = pcap.GLOBAL_HEADER_BYTES + b"\0" * (PIECE * PIECES - len(pcap.GLOBAL_HEADER_BYTES))


def serve(router: zmq.Socket, busy_first: bool = False) -> None:
    """Answer one query (after one 'busy' refusal if asked): the header,
    then a piece per credit the client returns."""
    def next_query() -> bytes:
        while True:  # skipping the client's "cancel" after a refusal
            ident, cmd, *_ = router.recv_multipart()
            if cmd == b"query":
                return ident
    if busy_first:
        router.send_multipart([next_query(), b"error", json.dumps(
            {"error": "busy: 4 queries in progress, try again", "kind": "busy"}).encode()])
    ident = next_query()
    router.send_multipart([ident, b"header", json.dumps(
        {"version": 1, "records": 1, "bytes": len(BODY), "buffer": {}}).encode()])
    for i in range(PIECES):
        router.send_multipart([ident, b"data", BODY[i * PIECE:(i + 1) * PIECE]])
        if not router.poll(10000):
            return
        router.recv_multipart()  # "more"
    router.send_multipart([ident, b"end", b"{}"])


@pytest.fixture
def server():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    yield router, port
    router.close()
    ctx.term()


def run_query(port: int, out, *extra: str, tty: bool, busy_first: bool = False,
              router=None) -> tuple[int, str]:
    t = threading.Thread(target=serve, args=(router, busy_first), daemon=True)
    t.start()
    argv = [tool("nflog-pcap-query"), str(port), "-o", str(out), "--log-format", "text", *extra]
    if tty:
        master, slave = pty.openpty()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the client closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        rc = p.wait(30)
        err = b"".join(chunks).decode(errors="replace")
    else:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        rc, err = r.returncode, r.stderr
    t.join(10)
    return rc, err


def test_progress_on_a_terminal(server, tmp_path):
    router, port = server
    out = tmp_path / "q.pcap"
    rc, err = run_query(port, out, tty=True, router=router)
    assert rc == 0, err
    assert out.read_bytes() == BODY
    total = f"of {len(BODY) / 2**20:.1f} MiB"
    assert total in err and "MiB/s" in err and "s left" in err and "(0%)" in err
    assert "2.0 MiB of 2.0 MiB (100%)" in err and "done in" in err
    assert "\r" in err  # one line, rewritten


@pytest.mark.parametrize("extra,tty", [((), False), (("--quiet",), True), (("-q",), True)])
def test_no_progress_when_not_a_terminal_or_quiet(server, tmp_path, extra, tty):
    router, port = server
    out = tmp_path / "q.pcap"
    rc, err = run_query(port, out, *extra, tty=tty, router=router)
    assert rc == 0, err
    assert out.read_bytes() == BODY
    assert "MiB/s" not in err and "\r" not in err.replace("\r\n", "\n")


def test_wait_says_when_it_asks_again(server, tmp_path):
    router, port = server
    rc, err = run_query(port, tmp_path / "q.pcap", "--wait", "20", tty=False, router=router,
                        busy_first=True)
    assert rc == 0, err
    assert "busy: 4 queries in progress" in err and "asking again in 1.0 s (at " in err
    assert "--wait gives up in" in err


def test_progress_line_figures():
    now = [100.0]
    p = Progress(clock=lambda: now[0], interval=0.25)
    p.start(10 * 2**20)
    now[0] = 102.0
    assert p.update(4 * 2**20) == "4.0 MiB of 10.0 MiB (40%)  2.0 MiB/s  3 s left"
    now[0] = 102.1
    assert p.update(2**20) is None  # at most 4 lines a second
    now[0] = 105.0
    assert p.update(5 * 2**20) == "10.0 MiB of 10.0 MiB (100%)  2.0 MiB/s  done in 5.0 s"
