"""Every option of every command, fed random and hostile values: each one is
either refused with one line ``COMMAND: error: ...`` and exit status 2, or
parsed into a value a daemon can start with (finite numbers in range).
Parse-only (``config.parse_args`` is what each ``main`` calls first); the
console scripts themselves run in tests/integration/test_cli_errors.py."""

from __future__ import annotations

import contextlib
import io
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nflog_pipe import config, keygen, query, receiver, relay, sender

COMMANDS = {
    "nflog-zmq-send": (sender.OPTIONS, {"groups": "0", "dst": "tcp://127.0.0.1:5"}),
    "nflog-pcap-recv": (receiver.OPTIONS, {"src": "tcp://127.0.0.1:5", "dst": "/tmp/x.pcap"}),
    "nflog-zmq-compress": (relay.COMPRESS_OPTIONS,
                           {"src": "tcp://127.0.0.1:5", "dst": "tcp://127.0.0.1:6"}),
    "nflog-zmq-decompress": (relay.DECOMPRESS_OPTIONS,
                             {"src": "tcp://127.0.0.1:5", "dst": "tcp://127.0.0.1:6"}),
    "nflog-pcap-query": (query.OPTIONS, {"endpoint": "1234"}),
    "nflog-pipe-keygen": (keygen.OPTIONS, {"name": "gw1"}),
}

HOSTILE = [
    "", " ", "-", "--", "0", "-1", "1", "65535", "65536", "99999", "99999999999", "1e-9",
    "1e9", "1e30", "1e308", "1e309", "-0", "inf", "-inf", "nan", "NaN", "Infinity", "0x10",
    "1_000", "²", "٣", "1/0", "50/60", "auto", "nobody", "nobody:", ":nogroup", "root:root",
    "no-such-user", "tcp://", "tcp://:1", "tcp://h", "tcp://h:0", "tcp://h:99999",
    "tcp://h:*", "tcp://[::1]:5611", "tcp://::1:5", "tcp://[::1:5", "ipc://", "ipc:///x",
    "inproc://x", "udp://h:1", "tcp://h:1 2", "a\nb", "a\"b", "a\x00b", "\udcff", "é" * 300,
    "x" * 5000, "9" * 5000, "../x", "/", ".", "[]:1", "[::1]", "host:", ":", "-m",
]

values = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)


def run_parse(prog, options, argv, env):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = config.parse_args(prog, "x", options, argv, env)
        except SystemExit as e:
            return None, e.code, err.getvalue()
    return args, 0, err.getvalue()


def check(prog, options, argv, env):
    args, code, err = run_parse(prog, options, argv, env)
    if args is None:
        assert code == 2, (argv, env, code, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), (argv, env, err)
        return
    for opt in options:
        v = getattr(args, opt.name)
        if isinstance(v, float):
            assert math.isfinite(v), (opt.name, v)
        if isinstance(v, int | float) and not isinstance(v, bool):
            assert abs(v) <= 2**40, (opt.name, v)
        if isinstance(v, str) and opt.flags and opt.name != "statsd_metrics_prefix":
            assert v != "", (opt.name, argv)


def argv_for(options, good, opt, value, joined):
    opts = []
    pos = dict(good)
    if opt.flags:
        opts = [f"{opt.flags[-1]}={value}"] if joined else [opt.flags[0], value]
    else:
        pos[opt.name] = value
    return opts + ["--"] + [pos[o.name] for o in options if not o.flags]


@pytest.mark.parametrize("prog", sorted(COMMANDS))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=values, joined=st.booleans(), via_env=st.booleans())
def test_every_option_refuses_cleanly_or_parses_sane(prog, data, value, joined, via_env):
    options, good = COMMANDS[prog]
    opt = data.draw(st.sampled_from([o for o in options if not o.flag]), label="option")
    if via_env and "\x00" not in value:
        names = [o.name for o in options if not o.flags]
        if opt.flags:
            check(prog, options, [good[n] for n in names], {opt.env: value})
        else:
            # positionals fill from the left: the ones after this one come from
            # the environment too
            i = names.index(opt.name)
            env = {opt.env: value}
            env.update({o.env: good[o.name] for o in options
                        if not o.flags and names.index(o.name) > i})
            check(prog, options, [good[n] for n in names[:i]], env)
    else:
        check(prog, options, argv_for(options, good, opt, value, joined), {})


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_option_of_every_command_is_exercised(prog):
    """Each hostile value against each option, exhaustively (what the
    property test samples)."""
    options, good = COMMANDS[prog]
    for opt in options:
        if opt.flag:
            continue
        for value in HOSTILE:
            check(prog, options, argv_for(options, good, opt, value, True), {})


@pytest.mark.parametrize("argv,msg", [
    (["0", "tcp://127.0.0.1:99999"], "port must be a number from 1 to 65535"),
    (["0", "tcp://h:1", "-u", ""], "empty user name"),
    (["0", "tcp://h:1", "-u", "nobody:"], "empty group name"),
    (["0", "tcp://h:1", "-u", "no-such-user-x"], "no such user"),
    (["0", "tcp://h:1", "--batch-size", "10000000"], "out of range (1 to 16384)"),
    (["0", "tcp://h:1", "--zmq-linger", "inf"], "not a number of seconds"),
    (["0", "tcp://h:1", "--libnflog-timeout", "1e30"], "out of range (0, or 0.01 to 600)"),
    (["0", "tcp://h:1", "--libnflog-qthresh", "99999999999"], "out of range"),
])
def test_sender_values_from_the_issue(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        config.parse_args("nflog-zmq-send", "x", sender.OPTIONS, argv, {})
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.splitlines()) == 1


def test_keygen_names_are_a_safe_alphabet(capsys):
    for bad in ('a"b', "a\nb", ".hidden", "a/b", "", "x" * 65, "é"):
        with pytest.raises(SystemExit):
            config.parse_args("nflog-pipe-keygen", "x", keygen.OPTIONS, [bad], {})
        assert "bad key name" in capsys.readouterr().err or bad == ""
    assert config.parse_args("nflog-pipe-keygen", "x", keygen.OPTIONS, ["gw-1.a_b"], {}).name


def test_help_shows_each_range():
    text = config.build_parser("x", "x", receiver.OPTIONS, {}).format_help()
    assert "1 to 100000" in " ".join(text.split())
