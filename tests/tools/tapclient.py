"""A PCAP-over-IP client that reconnects: ``SESSIONS`` connections one after
the other, each kept open for ``SECONDS`` (reading everything), its bytes
saved to ``OUT.N``; the next connects at once.  Prints the sessions done.

    tapclient.py HOST PORT OUT SESSIONS SECONDS
"""

import socket
import sys
import time


def main() -> None:
    host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sessions, seconds = int(sys.argv[4]), float(sys.argv[5])
    for n in range(sessions):
        s = socket.create_connection((host, port), timeout=10)
        deadline = time.monotonic() + seconds * (0.5 + (n % 3) / 2)
        data = bytearray()
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                chunk = s.recv(1 << 16)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        s.close()
        with open(f"{out}.{n}", "wb") as f:
            f.write(data)
    print(sessions)


if __name__ == "__main__":
    main()
