"""--libnflog-nlbufsiz-max works: after a kernel overrun the netlink receive
buffer doubles, applied by the controller process that keeps only
CAP_NET_ADMIN (the sender itself keeps no capability), as root and with
--user."""

import time

import pytest
from conftest import payload_file
from lab import send_udp, wait_until

PORT = 7311
KiB = 1024


def _status(pid: int) -> dict:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        out[k] = v.split()
    return out


@pytest.mark.parametrize("user", [None, "nobody"])
def test_receive_buffer_grows_after_an_overrun(pipe, tmp_path, user):
    pipe.nflog_rule(5, PORT)
    pipe.start_receiver()
    reader = pipe.reader()
    extra = ["--user", user] if user else []
    sender = pipe.start_sender("5", "--libnflog-nlbufsiz", "0.0625", "--libnflog-nlbufsiz-max",
                               "1", "--libnflog-qthresh", "1", "--stats-interval", "0.2", *extra)
    start = sender.wait_log("start")
    assert start["rcvbuf"] == 64 * KiB and start["controller_pid"]
    # the sender holds no capability; its controller only CAP_NET_ADMIN (bit 12)
    assert int(_status(sender.pid)["CapEff"][0], 16) == 0
    ctl = _status(start["controller_pid"])
    assert int(ctl["CapEff"][0], 16) == 1 << 12
    if user:
        assert ctl["Uid"][0] == str(start["uid"]) != "0"

    def gauge() -> int:
        recs = [r for r in sender.records() if r.get("event") == "stats"]
        return recs[-1]["gauges"]["netlink_rcvbuf"] if recs else 0
    wait_until(lambda: gauge() == 64 * KiB, what="the start size in the gauge")
    sizes = [64 * KiB]
    for i in range(6):  # each burst overruns the current buffer once: it doubles
        pipe.burst_while_stopped(sender, PORT, payload_file(tmp_path / f"b{i}", [b"x" * 1400] * 2000))
        send_udp(pipe.gw, pipe.link.b4, PORT, payload_file(tmp_path / f"a{i}", [b"after"]))
        wait_until(lambda: gauge() > sizes[-1], timeout=10, what="the buffer grown")
        sizes.append(gauge())
        if sizes[-1] >= 1024 * KiB:
            break
    assert sizes[-1] == 1024 * KiB, sizes  # up to --libnflog-nlbufsiz-max, never past it
    # doubling (twice, when one burst overran it twice)
    assert all(b in (2 * a, 4 * a, 8 * a) for a, b in zip(sizes, sizes[1:], strict=False)), sizes
    overruns = [r for r in sender.records() if r.get("event") == "kernel_overrun"]
    assert overruns and overruns[-1]["rcvbuf"] == 1024 * KiB
    assert not any("cannot grow" in r.get("message", "") for r in sender.records())
    time.sleep(0.3)
    s = sender.stop()["counters"]
    reader.close()
    pipe.receiver.stop()
    assert s["kernel_enobufs"] >= len(sizes) - 1
    assert s["packets_in"] == s["packets_out"] + s["dropped.kernel_overrun"]
