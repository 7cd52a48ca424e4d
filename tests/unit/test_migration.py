"""Command lines of the original tool (docs/migration.md): each option is
accepted with its original meaning or refused with one line naming its
replacement (parse-only; tests/system/test_original_readme.py runs the
README's examples)."""

from __future__ import annotations

import socket

import pytest

from nflog_pipe import config, query, receiver, relay, sender
from nflog_pipe.metrics import StatsdReporter


def parse(opts, argv, env=None):
    return config.parse_args("nflog-zmq-send", "x", opts, argv, env or {})


def test_original_sender_options_keep_their_meaning():
    a = parse(sender.OPTIONS, [
        "0,1", "tcp://ids.host:1234", "-u", "nobody", "--libnflog-nlbufsiz", "10",
        "--libnflog-qthresh", "1000", "--libnflog-timeout", "2", "--rate-control",
        "--lwm", "1.0", "--hwm", "5.0", "--wm-interval", "10", "-m", "statsd.example:8125",
        "-n", "{host}.nflog_pipe.", "-i", "50/60", "-t", "c", "--debug"])
    assert a.groups == [0, 1] and a.user == "nobody" and a.libnflog_nlbufsiz == 10.0
    assert a.libnflog_qthresh == 1000 and a.libnflog_timeout == 2.0 and a.rate_control
    assert (a.lwm, a.hwm, a.wm_interval) == (1.0, 5.0, 10.0)
    assert a.statsd == ("statsd.example", 8125) and a.statsd_sampling == 1.0
    assert a.statsd_type == "counter" and a.debug


@pytest.mark.parametrize("given,rate", [("50/60", 1.0), ("50", 1.0), ("1000/0.5", 1.0),
                                        ("0.5", 0.5), ("1", 1.0)])
def test_statsd_sampling_count_interval_or_rate(given, rate):
    assert parse(sender.OPTIONS, ["0", "tcp://h:1", "-i", given]).statsd_sampling == rate


@pytest.mark.parametrize("given,kind", [("c", "counter"), ("counter", "counter"), ("g", "g"),
                                        ("gauge", "gauge"), ("ms", "ms")])
def test_statsd_types_of_the_original(given, kind):
    assert parse(sender.OPTIONS, ["0", "tcp://h:1", "-t", given]).statsd_type == kind


@pytest.mark.parametrize("argv,env,words", [
    (["--zmq-buffer", "100"], {}, "use --zmq-buffer-frames"),
    ([], {"NFLOG_PIPE_ZMQ_BUFFER": "100"}, "use --zmq-buffer-frames"),
    (["-t", "d"], {}, "use -t counter"),
    (["-t", "h"], {}, "counter (increments), gauge"),
    (["-i", "50/0"], {}, "interval"),
])
def test_refused_originals_name_their_replacement(argv, env, words, capsys):
    with pytest.raises(SystemExit) as e:
        parse(sender.OPTIONS, ["0", "tcp://h:1", *argv], env)
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err and len(err.splitlines()) == 1, err


def test_original_receiver_relay_and_query_options():
    r = config.parse_args("r", "x", receiver.OPTIONS, [
        "tcp://0.0.0.0:1234", "/run/snort.pcap", "--rate-control", "--buffer-interface",
        "tcp://127.0.0.1:1235", "--buffer-window", "10", "--buffer-timeout", "1.0", "--debug",
        "-i", "50/60", "-t", "ms"], {})
    assert r.buffer_window == 10.0 and r.buffer_timeout == 1.0 and r.statsd_type == "ms"
    for opts in (relay.COMPRESS_OPTIONS, relay.DECOMPRESS_OPTIONS):
        a = config.parse_args("c", "x", opts, ["tcp://0.0.0.0:1", "tcp://h:2", "--zmq-buffer",
                                               "50", "--debug"], {})
        assert a.zmq_buffer == 50
    a = config.parse_args("c", "x", relay.COMPRESS_OPTIONS, ["tcp://0.0.0.0:1", "tcp://h:2",
                                                            "--lwm", "1", "--hwm", "5"], {})
    assert (a.lwm, a.hwm) == (1.0, 5.0)
    q = config.parse_args("q", "x", query.OPTIONS, ["tcp://127.0.0.1:1235", "--debug"], {})
    assert q.endpoint == "tcp://127.0.0.1:1235" and q.output == "-"


@pytest.mark.parametrize("kind,line", [
    ("counter", "p.send.packets_in:5|c"), ("g", "p.send.packets_in:5|g"),
    ("ms", "p.send.packets_in:5.000000|ms"), ("gauge", "p.send.packets_in:15|g")])
def test_original_types_send_the_increments(kind, line):
    """What a real UDP listener gets for the second flush of each -t type."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(10)
    r = StatsdReporter(("127.0.0.1", sink.getsockname()[1]), "p.", "send", kind)
    try:
        r.flush({"packets_in": 10})
        first = sink.recv(512).decode()
        assert first.startswith("p.send.packets_in:10")
        r.flush({"packets_in": 15})
        assert sink.recv(512).decode() == line
    finally:
        r.close()
        sink.close()
