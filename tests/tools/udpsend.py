"""Send UDP datagrams from a file of payloads (4-byte big-endian length
prefix each).  Bounded: sends at most what the file holds, pausing 1 ms after
every ``pace`` datagrams.  Prints the number sent.

    udpsend.py DST PORT PAYLOADS_FILE [PACE] [SRC_PORT]
"""

import socket
import struct
import sys
import time


def main() -> None:
    dst, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    pace = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    src_port = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if src_port:
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", src_port))
    data = open(path, "rb").read()
    off = sent = 0
    while off < len(data):
        (n,) = struct.unpack_from(">I", data, off)
        off += 4
        s.sendto(data[off : off + n], (dst, port))
        off += n
        sent += 1
        if pace and sent % pace == 0:
            time.sleep(0.001)
    print(sent)


if __name__ == "__main__":
    main()
