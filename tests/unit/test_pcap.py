import subprocess

from lab import PKT as IPV4_UDP  # the sample packet (tools/lib/testkit.py)

from nflog_pipe import pcap


def test_global_header_is_little_endian_linktype_raw():
    h = pcap.global_header()
    assert h == bytes.fromhex("d4c3b2a1" "0200" "0400" "00000000" "00000000" "00000400" "65000000")


def test_original_length_from_ip_header():
    assert pcap.ip_original_length(IPV4_UDP) == 29
    assert pcap.ip_original_length(IPV4_UDP[:20]) == 29          # truncated
    v6 = bytes([0x60, 0, 0, 0, 0x01, 0x00]) + bytes(34)
    assert pcap.ip_original_length(v6) == 256 + 40
    assert pcap.ip_original_length(b"\x45") == 1                 # too short to say


def test_tcpdump_and_tshark_read_our_bytes(tmp_path):
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap.GLOBAL_HEADER_BYTES + pcap.record(1700000000, 5, IPV4_UDP)
                     + pcap.record(1700000001, 6, IPV4_UDP[:24]))
    out = subprocess.run(["tcpdump", "-n", "-r", str(path)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(out) == 2 and "127.0.0.1.12345 > 127.0.0.1.53" in out[0]
    ts = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.len",
                         "-e", "frame.cap_len", "-e", "ip.len"],
                        capture_output=True, text=True, check=True).stdout.split("\n")
    assert ts[0].split("\t") == ["29", "29", "29"]
    assert ts[1].split("\t") == ["29", "24", "29"]


def test_parse_round_trip():
    blob = pcap.GLOBAL_HEADER_BYTES + pcap.record(1, 2, IPV4_UDP)
    info, recs = pcap.parse(blob)
    assert info["linktype"] == 101 and recs[0].data == IPV4_UDP and recs[0].origlen == 29
