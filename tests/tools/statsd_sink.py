"""A statsd stand-in for tests: appends every UDP datagram received on
ADDR:PORT to FILE (one datagram per line group).  Stops after MAX_SECONDS.

    statsd_sink.py ADDR PORT FILE [MAX_SECONDS]
"""

import socket
import sys
import time


def main() -> None:
    addr, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    limit = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(0.5)
    deadline = time.monotonic() + limit
    with open(path, "ab", buffering=0) as f:
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            f.write(data.rstrip(b"\n") + b"\n")


if __name__ == "__main__":
    main()
