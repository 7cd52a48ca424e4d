"""tools/lib/apt-sources.sh reads apt's sources in every layout a stock Debian machine
can have: deb822 only (Debian's official images), one-line sources.list only, both,
backports already configured or not, a stanza switched off. The installer and the
base-image builder both rely on it; a file that is missing must never end them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "tools/lib/apt-sources.sh"

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: {suite} {suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: {suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
ONE_LINE = """\
# classic layout
deb http://classic.example/debian {suite} main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://classic.example/debian {suite}-updates main
deb-src http://classic.example/debian {suite} main
deb http://classic.example/debian-security {suite}-security main
"""
BACKPORTS_822 = "Types: deb\nURIs: http://bpo.example/debian\nSuites: {suite}-backports\nComponents: main\n"
BACKPORTS_OFF = BACKPORTS_822 + "Enabled: no\n"
BACKPORTS_LIST = "deb http://bpo.example/debian {suite}-backports main\n"


def layout(root: Path, files: dict[str, str], suite: str) -> Path:
    (root / "etc/apt/sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (root / "etc/apt" / name).write_text(text.format(suite=suite))
    return root


def sh(root: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", f". {LIB}; {script}"],
                          env={"APT_ROOT": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)


CASES = {
    # name: (files, mirror, backports configured)
    "deb822 only": ({"sources.list.d/debian.sources": DEB822}, "http://mirror.example/debian", False),
    "one-line only": ({"sources.list": ONE_LINE}, "http://classic.example/debian", False),
    "both": ({"sources.list.d/debian.sources": DEB822, "sources.list": ONE_LINE},
             "http://mirror.example/debian", False),
    "deb822 + backports": ({"sources.list.d/debian.sources": DEB822,
                            "sources.list.d/backports.sources": BACKPORTS_822},
                           "http://mirror.example/debian", True),
    "one-line + backports .list": ({"sources.list": ONE_LINE,
                                    "sources.list.d/backports.list": BACKPORTS_LIST},
                                   "http://classic.example/debian", True),
    "backports switched off": ({"sources.list.d/debian.sources": DEB822,
                                "sources.list.d/backports.sources": BACKPORTS_OFF},
                               "http://mirror.example/debian", False),
    "nothing at all": ({}, "http://deb.debian.org/debian", False),
}


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
@pytest.mark.parametrize("case", CASES)
def test_layouts(tmp_path, case, suite):
    files, mirror, has_backports = CASES[case]
    root = layout(tmp_path, files, suite)
    p = sh(root, f'apt_mirror {suite}; apt_has_suite {suite}-backports && echo BPO || echo NOBPO')
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    got_mirror, bpo = p.stdout.split()
    assert got_mirror == mirror
    assert bpo == ("BPO" if has_backports else "NOBPO")


def test_entries_skip_source_packages_and_comments(tmp_path):
    root = layout(tmp_path, {"sources.list": ONE_LINE}, "bookworm")
    p = sh(root, "apt_entries")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "http://classic.example/debian\tbookworm",
        "http://classic.example/debian\tbookworm-updates",
        "http://classic.example/debian-security\tbookworm-security",
    ]


def test_other_suite_mirror_is_reused(tmp_path):
    """A Debian 12 host building a Debian 13 root: the host's mirror, not a guess."""
    root = layout(tmp_path, {"sources.list.d/debian.sources": DEB822}, "bookworm")
    p = sh(root, "apt_mirror trixie")
    assert p.stdout.strip() == "http://mirror.example/debian"
