"""The pip path on hosts that lack a part: a missing header is one line naming the
Debian package; a host without libnetfilter_log runs everything but the sender, and
the sender says in one line which package it needs.

The missing parts are made missing for real, in a private mount namespace
(`unshare -m`): an empty tmpfs over the header directory, an empty file over the
shared library. Needs root, as CI has."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def hidden(mounts: list[str], *cmd: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run cmd in a private mount namespace where every path in mounts is hidden."""
    if os.geteuid() != 0:
        pytest.fail("needs root (unshare -m to hide a header or a library)")
    assert shutil.which("unshare"), "unshare (util-linux) missing"
    script = "set -e; " + "; ".join(mounts) + '; exec "$@"'
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                           *cmd], capture_output=True, text=True, timeout=timeout, **kw)


def libnetfilter_log_path() -> str:
    """The libnetfilter_log the binding really loads (from this process's own maps)."""
    from nflog_pipe import _nflog  # noqa: F401  (loads the library)
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libnetfilter_log.so" in line:
            return line.split()[-1]
    raise AssertionError("libnetfilter_log is not mapped after importing nflog_pipe._nflog")


@pytest.mark.parametrize("header_dir, header, package", [
    ("/usr/include/libnetfilter_log", "libnetfilter_log/libnetfilter_log.h", "libnetfilter-log-dev"),
    ("/usr/include/pcap", "pcap/pcap.h", "libpcap-dev"),
])
def test_missing_header_is_one_line_naming_the_package(tmp_path, header_dir, header, package):
    assert Path(header_dir).is_dir(), f"{header_dir} missing: tools/install-deps.sh installs it"
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.so",
                                                            "*.egg-info", "__pycache__"))
    p = hidden([f"mount -t tmpfs none {header_dir}"],
               str(BIN / "python"), "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
               "--no-index", "-w", str(tmp_path / "wheels"), str(src))
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-2000:]
    line = f"nflog-zmq-pcap-pipe: {header} not found: apt-get install {package}"
    assert line in out.splitlines() or any(ln.strip() == line for ln in out.splitlines()), out[-2000:]
    assert "fatal error" not in out, "the compiler ran: the check must come first"


def test_host_without_libnetfilter_log(tmp_path):
    lib = libnetfilter_log_path()
    hide = [f": > {tmp_path}/empty", f"mount --bind {tmp_path}/empty {lib}"]

    # the sender: --help still works, a run is one line naming the package, exit 2
    p = hidden(hide, str(BIN / "nflog-zmq-send"), "--help")
    assert p.returncode == 0, p.stderr
    p = hidden(hide, str(BIN / "nflog-zmq-send"), "0", "tcp://127.0.0.1:9", "--log-format", "text")
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "install the Debian package libnetfilter-log1" in lines[0]
    assert "Traceback" not in p.stderr

    # the other commands need no libnetfilter_log at all
    for cmd in ("nflog-pcap-recv", "nflog-zmq-compress", "nflog-zmq-decompress", "nflog-pcap-query"):
        p = hidden(hide, str(BIN / cmd), "--help")
        assert p.returncode == 0, (cmd, p.stderr)
    probe = ("import sys, nflog_pipe.receiver, nflog_pipe.relay, nflog_pipe.query; "
             "assert 'nflog_pipe._nflog' not in sys.modules")
    p = hidden(hide, str(BIN / "python"), "-c", probe)
    assert p.returncode == 0, p.stderr

    # and the receiver really runs there: start it, stop it, its totals record comes out
    out = tmp_path / "out.pcap"
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         "; ".join(hide) + '; exec "$@"', "sh", str(BIN / "nflog-pcap-recv"),
         f"ipc://{tmp_path}/in.sock", str(out), "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert '"event": "totals"' in err or '"event":"totals"' in err, err
