"""nflog-zmq-send's start-up: privileges, refused settings, clear errors."""

import subprocess

from lab import tool


def _status(pid: int) -> dict:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        out[k] = v.split()
    return out


def test_missing_permission_is_a_clear_error(lab):
    gw = lab.netns("gw")
    r = subprocess.run(gw.prefix() + ["setpriv", "--reuid=nobody", "--regid=nogroup",
                                      "--clear-groups", "--inh-caps=-all", tool("nflog-zmq-send"),
                                      "0", "tcp://127.0.0.1:9", "--log-format", "text"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "binding NFLOG group 0 needs root or CAP_NET_ADMIN" in r.stderr


def test_group_already_bound_is_a_clear_error(lab):
    gw = lab.netns("gw")
    first = lab.daemon(gw, "nflog-zmq-send", "9", "tcp://127.0.0.1:9")
    first.wait_log("start")
    r = subprocess.run(gw.prefix() + [tool("nflog-zmq-send"), "9", "tcp://127.0.0.1:9",
                                      "--log-format", "text"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "group 9 is already bound by another process" in r.stderr
    first.stop()


def test_refused_kernel_buffer_is_an_error(lab):
    gw = lab.netns("gw")
    r = subprocess.run(gw.prefix() + [tool("nflog-zmq-send"), "1", "tcp://127.0.0.1:9",
                                      "--libnflog-kbufsiz", "512", "--log-format", "text"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "the kernel accepts 4096 to 131072" in r.stderr


def test_user_drops_uid_gid_groups_and_capabilities(lab):
    gw = lab.netns("gw")
    d = lab.daemon(gw, "nflog-zmq-send", "2", "tcp://127.0.0.1:9", "--user", "nobody")
    start = d.wait_log("start")
    st = _status(d.pid)
    import pwd
    nobody = pwd.getpwnam("nobody")
    assert st["Uid"] == [str(nobody.pw_uid)] * 4
    assert st["Gid"] == [str(nobody.pw_gid)] * 4
    assert st["Groups"] == []
    assert int(st["CapEff"][0], 16) == 0 and int(st["CapPrm"][0], 16) == 0
    assert st["NoNewPrivs"] == ["1"]
    assert start["uid"] == nobody.pw_uid and start["cap_eff"] == 0
    d.stop()


def test_root_without_user_keeps_no_capability(lab):
    gw = lab.netns("gw")
    d = lab.daemon(gw, "nflog-zmq-send", "2", "tcp://127.0.0.1:9")
    d.wait_log("start")
    st = _status(d.pid)
    assert int(st["CapEff"][0], 16) == 0 and int(st["CapPrm"][0], 16) == 0
    # threads (ZeroMQ's I/O thread) were created after the drop
    import os
    for tid in os.listdir(f"/proc/{d.pid}/task"):
        for line in open(f"/proc/{d.pid}/task/{tid}/status"):
            if line.startswith("CapEff:"):
                assert int(line.split()[1], 16) == 0
    d.stop()


def test_unknown_user_is_refused_before_binding(lab):
    gw = lab.netns("gw")
    r = subprocess.run(gw.prefix() + [tool("nflog-zmq-send"), "1", "tcp://127.0.0.1:9",
                                      "--user", "no-such-user-x", "--log-format", "text"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no such user: 'no-such-user-x'" in r.stderr
