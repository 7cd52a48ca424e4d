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

from ._bpf import ffi, lib
from .pcap import SNAPLEN

#: longest filter expression accepted (queries come from the network)
MAX_EXPRESSION = 2048


class FilterError(ValueError):
    """An expression libpcap refuses, with libpcap's message."""


_TOKEN = re.compile(r"[A-Za-z0-9_.:/-]+")
_NAME_TAKING = {"host", "net", "gateway"}


def _refuse_names(expression: str) -> None:
    """libpcap resolves host and network names while compiling (a blocking
    DNS lookup of a name the client chose, inside the receiver's loop):
    only literal addresses are accepted after ``host``, ``net``, ``gateway``."""
    tokens = _TOKEN.findall(expression)
    for kw, operand in zip(tokens, tokens[1:], strict=False):
        if kw.lower() not in _NAME_TAKING:
            continue
        try:
            ipaddress.ip_network(operand, strict=False)
            continue
        except ValueError:
            pass
        if re.fullmatch(r"[0-9]+(\.[0-9]+){0,3}", operand):  # libpcap's partial nets: net 10.1
            continue
        if re.fullmatch(r"([0-9A-Fa-f]{1,2}[:.-]){5}[0-9A-Fa-f]{1,2}", operand):  # a MAC literal
            continue
        raise FilterError(f"bad filter {expression!r}: {operand!r} is not an address; names are "
                          "not resolved in filters (the receiver would look them up)")


class Filter:
    """A compiled BPF program; its native memory is freed with the object."""

    def __init__(self, expression: str):
        if not isinstance(expression, str):
            raise FilterError("a filter expression is text")
        if len(expression) > MAX_EXPRESSION:
            raise FilterError(f"filter expression longer than {MAX_EXPRESSION} characters")
        if "\x00" in expression:
            raise FilterError("filter expression contains a NUL character")
        try:
            raw = expression.encode("ascii")
        except UnicodeEncodeError:
            raise FilterError("filter expression is not ASCII") from None
        _refuse_names(expression)
        err = ffi.new("char[]", 512)
        ptr = lib.nzp_filter_new(raw, SNAPLEN, err, 512)
        if ptr == ffi.NULL:
            msg = ffi.string(err).decode("utf-8", "replace")
            raise FilterError(f"bad filter {expression!r}: {msg}")
        self.expression = expression
        self.ptr = ffi.gc(ptr, lib.nzp_filter_free)

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
