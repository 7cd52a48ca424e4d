"""BPF filters over record areas, compiled by libpcap (``pcap_compile``).

The expression language is tcpdump's (``man pcap-filter``), compiled for
LINKTYPE_RAW packets, so ``ip``, ``ip6``, ``udp and port 5353``,
``net 10.0.0.0/8`` work and link-layer terms (``ether host ...``) are a
compile error.  Matching runs in C over a whole record area
(``nzp_select`` in ``_native/bpf.c``, ``pcap_offline_filter`` per record);
Python only hands over the area and its index.
"""

from __future__ import annotations

from ._bpf import ffi, lib
from .pcap import SNAPLEN

#: longest filter expression accepted (queries come from the network)
MAX_EXPRESSION = 2048


class FilterError(ValueError):
    """An expression libpcap refuses, with libpcap's message."""


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
