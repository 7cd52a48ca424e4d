"""Send UDP datagrams from a file of payloads (4-byte big-endian length
prefix each).  Bounded: sends at most what the file holds, pausing 1 ms after
every ``pace`` datagrams, or at ``rate`` datagrams per second when given.
Prints the number sent; SIGTERM stops it early (it still prints).

    udpsend.py DST PORT PAYLOADS_FILE [PACE] [SRC_PORT] [RATE] [TOTAL]

With TOTAL, the file's datagrams are sent over and over until TOTAL are sent.
"""

import signal
import socket
import struct
import sys
import time


def main() -> None:
    dst, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    pace = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    src_port = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    rate = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    total = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if src_port:
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", src_port))
    data = open(path, "rb").read()
    off = sent = 0
    started = time.monotonic()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        if off >= len(data):
            if sent >= total or not data:
                break
            off = 0
        if total and sent >= total:
            break
        (n,) = struct.unpack_from(">I", data, off)
        off += 4
        s.sendto(data[off : off + n], (dst, port))
        off += n
        sent += 1
        if rate:
            if sent % 16 == 0 and (ahead := sent / rate - (time.monotonic() - started)) > 0:
                time.sleep(ahead)
        elif pace and sent % pace == 0:
            time.sleep(0.001)
    print(sent)


if __name__ == "__main__":
    main()
