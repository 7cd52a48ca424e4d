"""BPF filters over record areas, compiled by libpcap (``pcap_compile``).

The expression language is tcpdump's (``man pcap-filter``), compiled for
LINKTYPE_RAW packets, so ``ip``, ``ip6``, ``udp and port 5353``,
``net 10.0.0.0/8`` work and link-layer terms (``ether host ...``) are a
compile error.  Matching runs in C over a whole record area
(``nzp_select`` in ``_native/bpf.c``, ``pcap_offline_filter`` per record);
Python only hands over the area and its index.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys

from ._bpf import ffi, lib
from .errors import PipeError
from .pcap import SNAPLEN
from .query.protocol import MAX_EXPRESSION  # noqa: F401  (a limit of the query protocol)


class FilterError(PipeError, ValueError):
    """An expression libpcap refuses, with libpcap's message."""


_TOKEN = re.compile(r"[A-Za-z0-9_.:/-]+")

#: The words of tcpdump's filter language (pcap-filter(7)) a query may use. Any other
#: word would be a name that libpcap resolves while compiling (a host or network name
#: through DNS, a port, protocol or Ethernet name through NSS): a lookup of a name the
#: client chose, which can block for as long as the resolver likes. Only literals
#: (numbers, addresses, networks, MAC addresses) and these words are accepted.
KEYWORDS = frozenset("""
    dst src host net mask port portrange proto protochain less greater len and or not
    inbound outbound broadcast multicast ifindex vlan mpls pppoed pppoes geneve vxlan
    ether ip ip6 arp rarp tcp udp icmp icmp6 sctp igmp igrp pim ah esp vrrp carp
    decnet atalk aarp iso stp ipx netbeui lat sca moprc mopdl clnp esis isis l1 l2 iih
    lsp snp csnp psnp llc fddi tr wlan
    tcpflags icmptype icmpcode icmp6type icmp6code
    tcp-fin tcp-syn tcp-rst tcp-push tcp-ack tcp-urg tcp-ece tcp-cwr
    icmp-echoreply icmp-unreach icmp-sourcequench icmp-redirect icmp-echo
    icmp-routeradvert icmp-routersolicit icmp-timxceed icmp-paramprob icmp-tstamp
    icmp-tstampreply icmp-ireq icmp-ireqreply icmp-maskreq icmp-maskreply
    icmp6-destinationunreach icmp6-packettoobig icmp6-timeexceeded
    icmp6-parameterproblem icmp6-echo icmp6-echoreply icmp6-multicastlistenerquery
    icmp6-multicastlistenerreportv1 icmp6-multicastlistenerdone icmp6-routersolicit
    icmp6-routeradvert icmp6-neighborsolicit icmp6-neighboradvert icmp6-redirect
    icmp6-routerrenum icmp6-nodeinformationquery icmp6-nodeinformationresponse
    icmp6-ineighbordiscoverysolicit icmp6-ineighbordiscoveryadvert
    icmp6-multicastlistenerreportv2 icmp6-homeagentdiscoveryrequest
    icmp6-homeagentdiscoveryreply icmp6-mobileprefixsolicit icmp6-mobileprefixadvert
    icmp6-certpathsolicit icmp6-certpathadvert icmp6-multicastrouteradvert
    icmp6-multicastroutersolicit icmp6-multicastrouterterm
""".split())
_NUMBER = re.compile(r"(0[xX][0-9A-Fa-f]+|[0-9]+)([:-][0-9]+)?")   # 53, 0x1f, ip[2:2], 1-1024
_PARTIAL_NET = re.compile(r"[0-9]+(\.[0-9]+){0,3}")                # libpcap's "net 10.1"
_MAC = re.compile(r"([0-9A-Fa-f]{1,2}[:.-]){5}[0-9A-Fa-f]{1,2}")


def _literal(token: str) -> bool:
    if _NUMBER.fullmatch(token) or _PARTIAL_NET.fullmatch(token) or _MAC.fullmatch(token):
        return True
    try:
        ipaddress.ip_network(token, strict=False)
    except ValueError:
        return False
    return True


def check_expression(expression: str) -> None:
    """What can be decided without compiling, at once: size, characters, and no word
    that libpcap would look up as a name (``src a.example``, ``port domain``,
    ``proto ospf``...). Raises FilterError."""
    if not isinstance(expression, str):
        raise FilterError("a filter expression is text")
    if len(expression) > MAX_EXPRESSION:
        raise FilterError(f"filter expression longer than {MAX_EXPRESSION} characters")
    if "\x00" in expression:
        raise FilterError("filter expression contains a NUL character")
    try:
        expression.encode("ascii")
    except UnicodeEncodeError:
        raise FilterError("filter expression is not ASCII") from None
    for token in _TOKEN.findall(expression):
        if token.lower() in KEYWORDS or _literal(token):
            continue
        raise FilterError(f"bad filter {expression!r}: {token!r} is neither a filter keyword "
                          "nor an address or number; names are never resolved in filters "
                          "(use addresses, port and protocol numbers)")


class Filter:
    """A compiled BPF program; its native memory is freed with the object."""

    def __init__(self, expression: str):
        check_expression(expression)
        raw = expression.encode("ascii")
        err = ffi.new("char[]", 512)
        ptr = lib.nzp_filter_new(raw, SNAPLEN, err, 512)
        if ptr == ffi.NULL:
            msg = ffi.string(err).decode("utf-8", "replace")
            raise FilterError(f"bad filter {expression!r}: {msg}")
        self.expression = expression
        self.ptr = ffi.gc(ptr, lib.nzp_filter_free)

    @classmethod
    def from_program(cls, expression: str, program: bytes) -> Filter:
        """A filter from the instructions another process compiled (``export``)."""
        ptr = lib.nzp_filter_import(ffi.from_buffer(program), len(program))
        if ptr == ffi.NULL:
            raise FilterError(f"bad filter {expression!r}: the compiled program is not valid BPF")
        self = cls.__new__(cls)
        self.expression = expression
        self.ptr = ffi.gc(ptr, lib.nzp_filter_free)
        return self

    def export(self) -> bytes:
        """The compiled instructions (struct bpf_insn, host order)."""
        out = ffi.new("unsigned char[]", len(self) * 8)
        n = lib.nzp_filter_export(self.ptr, out, len(out))
        return bytes(ffi.buffer(out, n))

    def __len__(self) -> int:
        """Instructions of the compiled program."""
        return lib.nzp_filter_len(self.ptr)

    def match(self, packet: bytes, origlen: int | None = None) -> bool:
        """One packet (an IP datagram) through the program (tests, tools)."""
        n = len(packet)
        return bool(lib.nzp_filter_match(self.ptr, ffi.from_buffer(packet), n,
                                         n if origlen is None else origlen))

    def __repr__(self) -> str:
        return f"Filter({self.expression!r})"


#: a filter whose compilation takes longer than this is refused as such (seconds)
COMPILE_TIMEOUT = 2.0


def compile_bounded(expression: str, timeout: float = COMPILE_TIMEOUT) -> Filter:
    """Compile ``expression`` in a process of its own, killed after ``timeout`` seconds.

    libpcap's optimiser takes seconds on some long expressions (``portrange`` chains);
    run from a worker thread, this keeps the receiver's loop free and bounds the cost
    of a hostile filter: too slow is a FilterError, and the compiler is gone."""
    check_expression(expression)
    try:
        p = subprocess.run([sys.executable, "-m", "nflog_pipe.bpf"], input=expression.encode(),
                           capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise FilterError(f"bad filter {expression[:80]!r}: takes longer than {timeout:g} s to "
                          "compile") from None
    if p.stdout[:2] == b"OK":
        return Filter.from_program(expression, p.stdout[2:])
    if p.stdout[:2] == b"ER":
        raise FilterError(p.stdout[2:].decode("utf-8", "replace"))
    raise FilterError(f"bad filter {expression[:80]!r}: the compiler failed "
                      f"(exit {p.returncode}: {p.stderr[-200:].decode('utf-8', 'replace')})")


def _compile_main() -> int:
    """``python -m nflog_pipe.bpf``: compile stdin, write b"OK"+program or b"ER"+error."""
    expression = sys.stdin.buffer.read().decode("ascii", "replace")
    try:
        out = b"OK" + Filter(expression).export()
    except FilterError as e:
        out = b"ER" + str(e).encode()
    sys.stdout.buffer.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(_compile_main())
