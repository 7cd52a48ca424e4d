"""nflog-pipe-keygen: write a CURVE key pair for one daemon or client.

    nflog-pipe-keygen NAME [-d DIR]     ->  DIR/NAME.key, DIR/NAME.key_secret

Hand NAME.key (public) to the peers: a server's to its clients
(--curve-server-key), a client's into the server's allow-list directory
(--curve-allow).  NAME.key_secret stays with its owner (mode 0600).
"""

from __future__ import annotations

import argparse
import re
import sys

from . import config
from .config import Option
from .security import SecurityError, write_keypair


def key_name(text: str) -> str:
    """Letters, digits, ``.``, ``_``, ``-``, up to 64, not starting with a
    dot: the name is part of two file names and is written into the key
    files' metadata."""
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", text):
        raise argparse.ArgumentTypeError(
            f"bad key name {text!r}: use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with .)")
    return text


OPTIONS = [
    Option("name", type=key_name, metavar="NAME", required=True,
           help="key name, e.g. the host or service (gw1, receiver)"),
    Option("dir", ("-d", "--dir"), type=config.path, default=".", metavar="DIR",
           help="where to write the files"),
    Option("force", ("--force",), flag=True, default=False, help="replace existing files"),
]


def main(argv: list[str] | None = None) -> int:
    a = config.parse_args("nflog-pipe-keygen", __doc__, OPTIONS, argv)
    try:
        pub, sec = write_keypair(a.dir, a.name, a.force)
    except (SecurityError, OSError) as e:
        print(f"nflog-pipe-keygen: {e}", file=sys.stderr)
        return 1
    print(f"public key: {pub}\nsecret key: {sec} (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
