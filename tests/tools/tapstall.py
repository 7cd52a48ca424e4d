"""A PCAP-over-IP client that connects and then reads nothing (a stalled
viewer).  Small receive buffer, bounded lifetime.

    tapstall.py HOST PORT SECONDS
"""

import socket
import sys
import time


def main() -> None:
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, port))
    print("connected", flush=True)
    time.sleep(seconds)
    s.close()


if __name__ == "__main__":
    main()
