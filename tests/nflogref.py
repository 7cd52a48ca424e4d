"""Reference capture with tcpdump's own NFLOG reader (LINKTYPE_NFLOG, 239):
an oracle independent of this project's parser."""

from __future__ import annotations

import struct

from nflog_pipe import pcap


def nflog_payloads(pcap_bytes: bytes) -> list[bytes]:
    """The NFULA_PAYLOAD TLV of each record of a LINKTYPE_NFLOG pcap."""
    info, records = pcap.parse(pcap_bytes)
    assert info["linktype"] == 239, info
    out = []
    for r in records:
        d = r.data
        off = 4  # family, version, resource id
        payload = None
        while off + 4 <= len(d):
            tlv_len, tlv_type = struct.unpack_from("<HH", d, off)  # host order (LE here)
            if tlv_len < 4:
                break
            if tlv_type == 9:
                payload = d[off + 4 : off + tlv_len]
            off += (tlv_len + 3) & ~3
        assert payload is not None, "NFLOG record without payload TLV"
        out.append(payload)
    return out


def udp_payload(ip: bytes) -> bytes:
    if ip[0] >> 4 == 4:
        ihl = (ip[0] & 0x0F) * 4
        assert ip[9] == 17
        return ip[ihl + 8 :]
    assert ip[0] >> 4 == 6 and ip[6] == 17
    return ip[48:]


def nflog_payload_count(path) -> int:
    """Packets in tcpdump's NFLOG capture file at ``path`` so far (0 while it
    cannot be read whole yet: tcpdump is still writing it)."""
    try:
        return len(nflog_payloads(path.read_bytes()))
    except (ValueError, AssertionError):
        return 0
