"""The console scripts themselves, given values the issue found crashing or
accepted: one line ``COMMAND: error: ...``, exit status 2, no traceback,
nothing started or written."""

from __future__ import annotations

import subprocess

import pytest
from lab import free_port, tool

CASES = [
    ("nflog-pcap-recv", ["--buffer-interface", "47018", "--buffer-window", "inf", "tcp://127.0.0.1:{p}",
                         "{tmp}/o.pcap"]),
    ("nflog-pcap-recv", ["--buffer-window", "nan", "tcp://127.0.0.1:{p}", "{tmp}/o.pcap"]),
    ("nflog-pcap-recv", ["--buffer-window", "1e-9", "tcp://127.0.0.1:{p}", "{tmp}/o.pcap"]),
    ("nflog-pcap-recv", ["--output-buffer", "inf", "tcp://127.0.0.1:{p}", "{tmp}/o.pcap"]),
    ("nflog-pcap-recv", ["--zmq-buffer", "99999999999", "tcp://127.0.0.1:{p}", "{tmp}/o.pcap"]),
    ("nflog-pcap-recv", ["tcp://127.0.0.1:99999", "{tmp}/o.pcap"]),
    ("nflog-pcap-recv", ["tcp://127.0.0.1:{p}", ""]),
    ("nflog-zmq-send", ["-u", "99999999999", "0", "tcp://127.0.0.1:{p}"]),
    ("nflog-zmq-send", ["-u", "", "0", "tcp://127.0.0.1:{p}"]),
    ("nflog-zmq-send", ["--libnflog-timeout", "1e30", "0", "tcp://127.0.0.1:{p}"]),
    ("nflog-zmq-send", ["--libnflog-qthresh", "99999999999", "0", "tcp://127.0.0.1:{p}"]),
    ("nflog-zmq-send", ["--zmq-linger", "inf", "0", "tcp://127.0.0.1:{p}"]),
    ("nflog-zmq-send", ["--batch-size", "10000000", "0", "tcp://127.0.0.1:{p}"]),
    ("nflog-zmq-send", ["0", "tcp://127.0.0.1:99999"]),
    ("nflog-zmq-send", ["0", "tcp://127.0.0.1:{p}", "tcp://127.0.0.1:99999"]),
    ("nflog-zmq-send", ["--shard-key", "vlan", "0", "tcp://127.0.0.1:{p}", "tcp://127.0.0.1:9"]),
    ("nflog-pcap-recv", ["--shard-key", "x", "tcp://127.0.0.1:{p}", "{tmp}/a", "{tmp}/b"]),
    ("nflog-zmq-decompress", ["--zmq-linger", "inf", "tcp://127.0.0.1:{p}", "tcp://127.0.0.1:9"]),
    ("nflog-zmq-compress", ["--lwm", "nan", "tcp://127.0.0.1:{p}", "tcp://127.0.0.1:9"]),
    ("nflog-pcap-query", ["--timeout", "inf", "{p}"]),
    ("nflog-pcap-query", ["--timeout", "1e20", "{p}"]),
    ("nflog-pcap-query", ["-o", "", "{p}"]),
    ("nflog-pipe-keygen", ['a"b', "-d", "{tmp}"]),
    ("nflog-pipe-keygen", ["a\nb", "-d", "{tmp}"]),
]


@pytest.mark.parametrize("cmd,argv", CASES, ids=[f"{c}:{' '.join(a)[:40]}" for c, a in CASES])
def test_bad_value_is_one_line_exit_2(cmd, argv, tmp_path):
    p = free_port()
    argv = [a.format(p=p, tmp=tmp_path) for a in argv]
    r = subprocess.run([tool(cmd), *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{cmd}: error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())


def test_recv_to_closed_stdout_is_a_clear_error():
    r = subprocess.run([tool("nflog-pcap-recv"), f"tcp://127.0.0.1:{free_port()}", "-",
                        "--log-format", "text"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, timeout=30, pass_fds=(), close_fds=True,
                       preexec_fn=lambda: __import__("os").close(1))
    assert r.returncode == 2 and "standard output is closed" in r.stderr
    assert "Traceback" not in r.stderr


def _extremes(options, end: str) -> list[str]:
    """Every ranged option at the low or the high end of its range."""
    argv = []
    for opt in options:
        t = opt.type
        if opt.flags and hasattr(t, "lo") and opt.name not in ("compress_level",):
            argv += [opt.flags[-1], str(getattr(t, end))]
    return argv


@pytest.mark.parametrize("end", ["lo", "hi"])
@pytest.mark.parametrize("cmd", ["nflog-pcap-recv", "nflog-zmq-compress", "nflog-zmq-decompress"])
def test_every_range_end_starts_cleanly(cmd, end, tmp_path):
    """The ends of each documented range are values a daemon runs with: it
    starts, and SIGTERM ends it with its totals (nflog-zmq-send:
    tests/system/test_sender_cli.py)."""
    from lab import Daemon

    from nflog_pipe import receiver, relay
    options = {"nflog-pcap-recv": receiver.OPTIONS, "nflog-zmq-compress": relay.COMPRESS_OPTIONS,
               "nflog-zmq-decompress": relay.DECOMPRESS_OPTIONS}[cmd]
    src = f"tcp://127.0.0.1:{free_port()}"
    dst = str(tmp_path / "o.pcap") if cmd == "nflog-pcap-recv" else f"tcp://127.0.0.1:{free_port()}"
    extra = ["--buffer-interface", str(free_port()), "--tap", str(free_port())] \
        if cmd == "nflog-pcap-recv" else []
    d = Daemon([tool(cmd), src, dst, *extra, *_extremes(options, end), "--log-format", "json"],
               tmp_path / "d.log")
    d.wait_log("start")
    totals = d.stop()
    assert totals["reason"] == "SIGTERM"


SHARD_START_ERRORS = [
    ("nflog-zmq-send", ["0", "tcp://127.0.0.1:{p}", "tcp://127.0.0.1:{p}"], "given twice"),
    ("nflog-zmq-send", ["--rate-control", "0", "tcp://127.0.0.1:{p}", "tcp://127.0.0.1:9"],
     "one destination only"),
    ("nflog-zmq-send", ["0"] + [f"tcp://127.0.0.1:{9 + i}" for i in range(17)], "at most 16"),
    ("nflog-pcap-recv", ["tcp://127.0.0.1:{p}", "{tmp}/a", "{tmp}/a"], "given twice"),
    ("nflog-pcap-recv", ["tcp://127.0.0.1:{p}", "{tmp}/a", "{tmp}/nodir/b"], "does not exist"),
]


@pytest.mark.parametrize("cmd,argv,why", SHARD_START_ERRORS,
                         ids=[f"{c}:{w}" for c, _, w in SHARD_START_ERRORS])
def test_bad_shard_lists_are_start_up_errors(cmd, argv, why, tmp_path):
    """Several destinations / outputs: a list that cannot work is refused at
    start, in one line, nothing left behind."""
    p = free_port()
    args = [a.format(p=p, tmp=tmp_path) for a in argv]
    r = subprocess.run([tool(cmd), *args, "--log-format", "text"], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode != 0 and why in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists() or "given twice" in why
