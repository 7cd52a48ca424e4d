import os
import stat
import subprocess
from types import SimpleNamespace

import pytest
import zmq
from lab import tool

from nflog_pipe import security
from nflog_pipe.metrics import Counters


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    for n in ("server", "client", "stranger"):
        security.write_keypair(str(d), n)
    allow = tmp_path / "allow"
    allow.mkdir()
    (allow / "client.key").write_bytes((d / "client.key").read_bytes())
    return d, allow


def args(**kw):
    return SimpleNamespace(**{"curve_secret_key": None, "curve_server_key": None,
                              "curve_allow": None, **kw})


def test_keygen_modes_and_refuses_overwrite(tmp_path):
    r = subprocess.run([tool("nflog-pipe-keygen"), "gw1", "-d", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert stat.S_IMODE(os.stat(tmp_path / "gw1.key_secret").st_mode) == 0o600
    assert "secret-key" not in (tmp_path / "gw1.key").read_text()
    again = subprocess.run([tool("nflog-pipe-keygen"), "gw1", "-d", str(tmp_path)],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "exists (use --force" in again.stderr


def test_no_keys_is_plaintext_with_a_warning(caplog):
    assert security.Curve.from_args(args(), Counters(), client=True, server=True) is None
    assert "plaintext" in caplog.text


@pytest.mark.parametrize("kw,client,server,msg", [
    ({"curve_server_key": "x"}, True, False, "need --curve-secret-key"),
    ({"curve_allow": "x"}, False, True, "need --curve-secret-key"),
    ({"curve_secret_key": "S"}, True, False, "must pin the server's public key"),
    ({"curve_secret_key": "S"}, False, True, "which client keys to accept"),
])
def test_half_configuration_is_an_error(keys, kw, client, server, msg):
    d, _ = keys
    kw = {k: (str(d / "server.key_secret") if v == "S" else v) for k, v in kw.items()}
    with pytest.raises(security.SecurityError, match=msg):
        security.Curve.from_args(args(**kw), Counters(), client=client, server=server)


def test_public_file_as_secret_key_is_refused(keys):
    d, allow = keys
    with pytest.raises(security.SecurityError, match="holds no secret key"):
        security.Curve.from_args(args(curve_secret_key=str(d / "server.key"),
                                      curve_allow=str(allow)), Counters(), False, True)


def test_server_socket_needs_the_authenticator_first(keys):
    d, allow = keys
    curve = security.Curve.from_args(args(curve_secret_key=str(d / "server.key_secret"),
                                          curve_allow=str(allow)), Counters(), False, True)
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    with pytest.raises(security.SecurityError, match="authenticator started first"):
        curve.server(s)
    s.close()
    ctx.term()


def _pair(keys, client_name, counters):
    d, allow = keys
    ctx = zmq.Context()
    srv = security.Curve.from_args(args(curve_secret_key=str(d / "server.key_secret"),
                                        curve_allow=str(allow)), counters, False, True)
    srv.start(ctx)
    pull = ctx.socket(zmq.PULL)
    srv.server(pull)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    cli = security.Curve.from_args(args(curve_secret_key=str(d / f"{client_name}.key_secret"),
                                        curve_server_key=str(d / "server.key")), counters, True, False)
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    cli.client(push)
    push.connect(f"tcp://127.0.0.1:{port}")
    return ctx, srv, pull, push


def test_allowed_client_gets_through(keys):
    c = Counters()
    ctx, srv, pull, push = _pair(keys, "client", c)
    push.send(b"hello")
    assert pull.poll(5000) and pull.recv() == b"hello"
    assert c["auth_refused"] == 0
    for s in (pull, push):
        s.close(0)
    srv.stop()
    ctx.term()


def test_unknown_client_is_refused_and_counted(keys):
    c = Counters()
    ctx, srv, pull, push = _pair(keys, "stranger", c)
    push.send(b"hello")
    assert not pull.poll(1500)
    assert c["auth_refused"] >= 1
    for s in (pull, push):
        s.close(0)
    srv.stop()
    ctx.term()


@pytest.mark.parametrize("ep,loop", [("tcp://127.0.0.1:5", True), ("tcp://[::1]:5", True),
                                     ("ipc:///x", True), ("tcp://0.0.0.0:5", False),
                                     ("tcp://10.1.2.3:5", False), ("tcp://*:5", False)])
def test_is_loopback(ep, loop):
    assert security.is_loopback(ep) is loop
