"""cffi build scripts (API mode, compiled out of line).

Three extension modules:
- ``nflog_pipe._nflog``: the NFLOG data-plane walker and the libnetfilter_log
  control plane; links libnetfilter_log (sender only).
- ``nflog_pipe._records``: record-area validation and indexing; no external
  library (receiver, relays, query).
- ``nflog_pipe._bpf``: record selection for the traffic buffer (time window,
  BPF programs compiled by libpcap, gathering selected records); links
  libpcap (receiver).
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _module(name: str, cdefs: list[str], source: str, libraries: list[str]) -> FFI:
    ffi = FFI()
    ffi.cdef("\n".join((HERE / c).read_text() for c in cdefs))
    ffi.set_source(
        f"nflog_pipe.{name}",
        (HERE / source).read_text(),
        include_dirs=[str(HERE)],
        libraries=libraries,
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    )
    return ffi


nflog_ffi = _module("_nflog", ["nflog.h", "nflog_lib.cdef"], "nflog.c", ["netfilter_log"])
records_ffi = _module("_records", ["records.h"], "records.c", [])
bpf_ffi = _module("_bpf", ["bpf.h"], "bpf.c", ["pcap"])

if __name__ == "__main__":
    nflog_ffi.compile(tmpdir=str(HERE.parent.parent), verbose=True)
    records_ffi.compile(tmpdir=str(HERE.parent.parent), verbose=True)
    bpf_ffi.compile(tmpdir=str(HERE.parent.parent), verbose=True)
