"""The live path never waits on a side service: real NFLOG traffic at 10 kpps flows
whole while the side service misbehaves."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import payload_file
from lab import send_udp, wait_until

from nflog_pipe import pcap

RATE_PACE = 10          # udpsend pauses 1 ms every 10 datagrams: at most 10 kpps
PACKETS = 20_000        # two seconds of it
#: the silent resolver holds each lookup this long (glibc's maximum); all traffic must
#: be through in a fraction of it, and SIGTERM obeyed long before it ends
RESOLVER_HANG = 30


def whole_records(reader) -> int:
    try:
        return len(pcap.parse(bytes(reader.data))[1])
    except ValueError:
        return 0


def test_a_silent_resolver_for_statsd_costs_the_data_path_nothing(pipe, tmp_path):
    """Both daemons name a statsd server that only a resolver which never answers could
    resolve (getaddrinfo hangs 30 s there): every packet arrives long before the lookup
    gives up, and both daemons obey SIGTERM while it still hangs. (Before, the loop made
    the lookup itself: nothing moved for the whole 30 s.)"""
    etc = Path("/etc/netns") / pipe.gw.name
    etc_ids = Path("/etc/netns") / pipe.ids.name
    for d in (etc, etc_ids):
        d.mkdir(parents=True)
        # the resolver: the other namespace's address, where port 53 is dropped
        (d / "resolv.conf").write_text(
            f"nameserver {pipe.link.b4 if d == etc else pipe.link.a4}\n"
            f"options timeout:{RESOLVER_HANG} attempts:1\n")
    try:
        for ns in (pipe.gw, pipe.ids):
            for proto in ("udp", "tcp"):
                ns.iptables("-I", "INPUT", "-p", proto, "--dport", "53", "-j", "DROP")
        # the resolver really is silent: a lookup from the gateway hangs past 3 s
        probe = pipe.gw.exec("timeout", "3", "getent", "hosts", "statsd.example.invalid",
                             check=False)
        assert probe.returncode == 124, (probe.returncode, probe.stdout, probe.stderr)

        statsd = ("-m", "statsd.example.invalid:8125", "--statsd-interval", "0.2")
        pipe.nflog_rule(3, 7400)
        pipe.start_receiver(*statsd)
        reader = pipe.reader()
        sender = pipe.start_sender("3", *statsd)
        sent = send_udp(pipe.gw, pipe.link.b4, 7400,
                        payload_file(tmp_path / "p", [b"s" * 64] * PACKETS), pace=RATE_PACE)
        assert sent == PACKETS
        # well inside the resolver's 30 s: the daemons' lookups are still hanging
        wait_until(lambda: whole_records(reader) >= sent, timeout=RESOLVER_HANG * 2 / 3,
                   what=f"{sent} records in the FIFO while the resolver hangs")
        s_totals = sender.stop(timeout=RESOLVER_HANG / 3)
        r_totals = pipe.receiver.stop(timeout=RESOLVER_HANG / 3)
        got = whole_records(reader)
        reader.close()
    finally:
        for d in (etc, etc_ids):
            shutil.rmtree(d, ignore_errors=True)
    sc, rc = s_totals["counters"], r_totals["counters"]
    assert got == sent == PACKETS
    assert sc["packets_in"] == sc["packets_out"] == PACKETS
    assert rc["packets_out"] == PACKETS
    assert not any(v for k, v in {**sc, **rc}.items() if k.startswith("dropped.")), (sc, rc)
    assert sc["statsd.send_errors"] == 0   # nothing sent: there was no address
