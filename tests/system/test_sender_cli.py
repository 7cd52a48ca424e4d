"""nflog-zmq-send's start-up: privileges, refused settings, clear errors."""

import os
import subprocess

import pytest
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


def _ratio(pipe, tmp_path, *sender_args):
    from conftest import payload_file
    from lab import send_udp, wait_until
    pipe.nflog_rule(12, 7400)
    sender = pipe.start_sender("12", *sender_args)
    # a little light traffic, then a burst
    send_udp(pipe.gw, pipe.link.b4, 7400, payload_file(tmp_path / "l", [b"l"] * 20), pace=1)
    n = send_udp(pipe.gw, pipe.link.b4, 7400, payload_file(tmp_path / "b", [b"b" * 64] * 20000), pace=0)
    # settled: all packets, or the count stopped moving (qthresh 1 may overrun)
    seen = []
    wait_until(lambda: seen.append(_recv_packets(pipe)) or seen[-1] >= n + 20
               or (len(seen) > 20 and seen[-1] == seen[-20] > 0), timeout=60, what="packets")
    c = sender.stop()["counters"]
    read = c["packets_in"] - c["dropped.kernel_overrun"]
    return read / c["netlink_buffers"], c


def _recv_packets(pipe):
    recs = [r for r in pipe.receiver.records() if r.get("event") == "stats"]
    return recs[-1]["counters"]["packets_in"] if recs else 0


def test_adaptive_batch_size_reaches_the_kernel(pipe, tmp_path):
    """With the default (auto), a burst is read in kernel batches of many
    packets: one netlink buffer holds one batch, so packets per buffer > 1
    proves the kernel applied the threshold the controller sent."""
    pipe.start_receiver("--stats-interval", "0.2")
    ratio, c = _ratio(pipe, tmp_path)
    assert ratio > 4, c
    assert c.get("netlink_errors", 0) == 0


def test_static_batch_size_one_is_one_packet_per_buffer(pipe, tmp_path):
    pipe.start_receiver("--stats-interval", "0.2")
    ratio, c = _ratio(pipe, tmp_path, "--libnflog-qthresh", "1")
    assert ratio == 1.0, c


def test_qthresh_controller_keeps_only_net_admin(lab):
    gw = lab.netns("gw")
    d = lab.daemon(gw, "nflog-zmq-send", "13", "tcp://127.0.0.1:9", "--user", "nobody")
    start = d.wait_log("start")
    child = start["controller_pid"]
    assert child and child != d.pid
    st = _status(child)
    import pwd
    nobody = pwd.getpwnam("nobody")
    assert st["Uid"] == [str(nobody.pw_uid)] * 4 and st["Groups"] == []
    assert int(st["CapEff"][0], 16) == 1 << 12 and int(st["CapPrm"][0], 16) == 1 << 12
    assert st["NoNewPrivs"] == ["1"]
    # its open files: only the pipe from the parent, the netlink socket, stdio
    fds = os.listdir(f"/proc/{child}/fd")
    assert len(fds) <= 5, [os.readlink(f"/proc/{child}/fd/{f}") for f in fds]
    d.stop()
    assert not os.path.exists(f"/proc/{child}") or _status(child)["State"][0] == "Z"


def test_static_qthresh_and_no_room_to_grow_forks_no_controller(lab):
    gw = lab.netns("gw")
    d = lab.daemon(gw, "nflog-zmq-send", "14", "tcp://127.0.0.1:9", "--libnflog-qthresh", "64",
                   "--libnflog-nlbufsiz-max", "10")
    assert d.wait_log("start")["controller_pid"] is None
    d.stop()
    # a buffer that may grow needs the controller even with a static qthresh
    d = lab.daemon(gw, "nflog-zmq-send", "14", "tcp://127.0.0.1:9", "--libnflog-qthresh", "64")
    assert d.wait_log("start")["controller_pid"]
    d.stop()


@pytest.mark.parametrize("end", ["lo", "hi"])
def test_every_range_end_starts_cleanly(lab, end):
    """Each ranged option of nflog-zmq-send at the low or the high end of its
    range (--libnflog-kbufsiz within what the kernel takes, 4 to 128 KiB:
    beyond it the kernel's refusal is the clear error tested above)."""
    from nflog_pipe import sender
    gw = lab.netns("gw")
    argv = []
    for opt in sender.OPTIONS:
        if opt.flags and hasattr(opt.type, "lo") and opt.name != "libnflog_kbufsiz":
            argv += [opt.flags[-1], str(getattr(opt.type, end))]
    argv += ["--libnflog-kbufsiz", "4" if end == "lo" else "128"]
    d = lab.daemon(gw, "nflog-zmq-send", "15", "tcp://127.0.0.1:9", *argv)
    d.wait_log("start")
    assert d.stop()["reason"] == "SIGTERM"
