import pytest

from nflog_pipe import config, receiver, sender


def parse(opts, argv, env=None):
    return config.parse_args("x", "x", opts, argv, env or {})


def test_cli_wins_over_env_and_env_over_default():
    a = parse(sender.OPTIONS, ["0,1", "tcp://h:1"], {"NFLOG_PIPE_ZMQ_BUFFER_FRAMES": "7"})
    assert a.zmq_buffer_frames == 7 and a.groups == [0, 1] and a.dst == ["tcp://h:1"]
    a = parse(sender.OPTIONS, ["0", "tcp://h:1", "--zmq-buffer-frames", "9"],
              {"NFLOG_PIPE_ZMQ_BUFFER_FRAMES": "7"})
    assert a.zmq_buffer_frames == 9
    a = parse(sender.OPTIONS, ["0", "tcp://h:1"])
    assert a.zmq_buffer_frames == 50 and a.libnflog_nlbufsiz == 10.0


def test_positionals_from_env():
    a = parse(sender.OPTIONS, [], {"NFLOG_PIPE_GROUPS": "3", "NFLOG_PIPE_DST": "ipc:///x"})
    assert a.groups == [3] and a.dst == ["ipc:///x"]


def test_flags_from_env():
    assert parse(receiver.OPTIONS, ["tcp://*:1", "-"], {"NFLOG_PIPE_DEBUG": "yes"}).debug is True
    assert parse(receiver.OPTIONS, ["tcp://*:1", "-"], {"NFLOG_PIPE_DEBUG": "0"}).debug is False


@pytest.mark.parametrize("argv,env,msg", [
    ([], {}, "GROUPS is required"),
    (["0"], {}, "DST is required"),
    (["0,x", "tcp://h:1"], {}, "comma list"),
    (["70000", "tcp://h:1"], {}, "comma list"),
    (["0", "h:1"], {}, "not a ZeroMQ endpoint"),
    (["0", "tcp://h:1", "--zmq-buffer-frames", "0"], {}, "out of range"),
    (["0", "tcp://h:1"], {"NFLOG_PIPE_ZMQ_BUFFER_FRAMES": "lots"}, "NFLOG_PIPE_ZMQ_BUFFER_FRAMES"),
    (["0", "tcp://h:1"], {"NFLOG_PIPE_DEBUG": "maybe"}, "NFLOG_PIPE_DEBUG"),
    (["0", "tcp://h:1", "-m", "host:99999"], {}, "statsd address"),
])
def test_bad_values_are_clear_errors(argv, env, msg, capsys):
    with pytest.raises(SystemExit) as e:
        parse(sender.OPTIONS, argv, env)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_help_names_env_and_default():
    text = config.build_parser("x", "x", sender.OPTIONS, {}).format_help()
    for opt in sender.OPTIONS:
        assert opt.env in text.replace("\n", " ").replace("  ", " ") or opt.env in text
    assert "default: 10.0" in text
