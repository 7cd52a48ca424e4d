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
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

#: header -> the Debian package that ships it; checked before anything is compiled,
#: so a missing one is one line naming the package, not a page of compiler output
HEADERS = {
    "Python.h": "python3-dev",
    "libnetfilter_log/libnetfilter_log.h": "libnetfilter-log-dev",
    "pcap/pcap.h": "libpcap-dev",
}


def _missing(message: str) -> None:
    print(f"nflog-zmq-pcap-pipe: {message}", file=sys.stderr)
    raise SystemExit(1)


def check_build_dependencies() -> None:
    """Fail in one line when the compiler or a header is missing."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not cc or not shutil.which(cc[0]):
        _missing(f"no C compiler ({cc[0] if cc else 'cc'} not found): apt-get install gcc libc6-dev")
    include = ["-I" + p for p in {sysconfig.get_path("include"), sysconfig.get_path("platinclude")}]
    for header, package in HEADERS.items():
        try:
            p = subprocess.run([*cc, *include, "-E", "-x", "c", "-o", os.devnull, "-"],
                               input=f"#include <{header}>\n", capture_output=True, text=True,
                               timeout=60)
        except OSError as e:
            _missing(f"cannot run the C compiler {cc[0]}: {e}")
        if p.returncode != 0:
            if "stdio.h" in p.stderr or "stddef.h" in p.stderr or "limits.h" in p.stderr:
                _missing(f"the C library headers are missing (building {header} failed): "
                         "apt-get install libc6-dev")
            _missing(f"{header} not found: apt-get install {package}")


check_build_dependencies()


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
records_ffi = _module("_records", ["records.h", "record.cdef"], "records.c", [])
bpf_ffi = _module("_bpf", ["bpf.h"], "bpf.c", ["pcap"])

if __name__ == "__main__":
    nflog_ffi.compile(tmpdir=str(HERE.parent.parent), verbose=True)
    records_ffi.compile(tmpdir=str(HERE.parent.parent), verbose=True)
    bpf_ffi.compile(tmpdir=str(HERE.parent.parent), verbose=True)
