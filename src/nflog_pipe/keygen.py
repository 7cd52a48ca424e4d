"""nflog-pipe-keygen: write a CURVE key pair for one daemon or client.

    nflog-pipe-keygen NAME [-d DIR]     ->  DIR/NAME.key, DIR/NAME.key_secret

Hand NAME.key (public) to the peers: a server's to its clients
(--curve-server-key), a client's into the server's allow-list directory
(--curve-allow).  NAME.key_secret stays with its owner (mode 0600).
"""

from __future__ import annotations

import argparse
import sys

from .security import SecurityError, write_keypair


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nflog-pipe-keygen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="key name, e.g. the host or service (gw1, receiver)")
    p.add_argument("-d", "--dir", default=".", help="where to write the files (default: .)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    a = p.parse_args(argv)
    if not a.name or "/" in a.name or a.name.startswith("."):
        p.error(f"bad key name {a.name!r}")
    try:
        pub, sec = write_keypair(a.dir, a.name, a.force)
    except (SecurityError, OSError) as e:
        print(f"nflog-pipe-keygen: {e}", file=sys.stderr)
        return 1
    print(f"public key: {pub}\nsecret key: {sec} (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
