"""Flow traffic for the sharding tests, run inside a namespace.

    flows.py server ADDR4 ADDR6 UDP_PORT TCP_PORT SECONDS
        UDP echo (every datagram sent back as it came) and a TCP service that
        reads until the client closes, on both addresses; ends after SECONDS.
    flows.py udp SERVER4 SERVER6 PORT SRC_LIST ROUND BIG_EVERY
        one flow per source address in SRC_LIST (a file, one address a line):
        2 small datagrams, and every BIG_EVERY-th flow a 3000-byte one too
        (its echo comes back fragmented); waits up to 1 s for each echo.
        Prints JSON: {src: [datagrams sent, echoes received, big sent]}.
    flows.py tcp SERVER4 SERVER6 PORT SRC_LIST
        one TCP connection per source address; the marker is written in two
        segments (TCP_NODELAY, a pause between), so that only the reassembled
        stream holds it.  Prints JSON: {src: local port}.
Bounded: every socket has a timeout; the server a lifetime.
"""

import json
import socket
import sys
import threading
import time

MARKER = b"NFLOG-PIPE-SHARD-" + b"STREAM-MARKER"


def server(a4, a6, uport, tport, seconds):
    end = time.monotonic() + seconds

    def udp(fam, addr):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((addr, uport))
        s.settimeout(0.5)
        while time.monotonic() < end:
            try:
                data, peer = s.recvfrom(65535)
            except TimeoutError:
                continue
            s.sendto(data, peer)

    def conn(c):
        c.settimeout(10)
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass
        c.close()

    def tcp(fam, addr):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, tport))
        s.listen(128)
        s.settimeout(0.5)
        while time.monotonic() < end:
            try:
                c, _ = s.accept()
            except TimeoutError:
                continue
            threading.Thread(target=conn, args=(c,), daemon=True).start()

    ts = [threading.Thread(target=f, args=a, daemon=True) for f, a in
          ((udp, (socket.AF_INET, a4)), (udp, (socket.AF_INET6, a6)),
           (tcp, (socket.AF_INET, a4)), (tcp, (socket.AF_INET6, a6)))]
    for t in ts:
        t.start()
    print("ready", flush=True)
    for t in ts:
        t.join()


def _sources(path):
    return [x.strip() for x in open(path) if x.strip()]


def udp_flows(s4, s6, port, srcs, rnd, big_every):
    out = {}
    for i, src in enumerate(_sources(srcs)):
        fam, dst = (socket.AF_INET6, s6) if ":" in src else (socket.AF_INET, s4)
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.settimeout(1.0)
        msgs = [b"flow %s round %s msg %d" % (src.encode(), rnd.encode(), k) for k in range(2)]
        if big_every and i % big_every == 0:
            msgs.append((b"big %s round %s " % (src.encode(), rnd.encode())) * 200)
            msgs[-1] = msgs[-1][:3000]
        got = 0
        for m in msgs:
            s.sendto(m, (dst, port))
            try:
                if s.recv(65535) == m:
                    got += 1
            except TimeoutError:
                pass
        s.close()
        out[src] = [len(msgs), got, int(len(msgs) > 2)]
    print(json.dumps(out))


def tcp_flows(s4, s6, port, srcs):
    out = {}
    for src in _sources(srcs):
        fam, dst = (socket.AF_INET6, s6) if ":" in src else (socket.AF_INET, s4)
        c = socket.socket(fam, socket.SOCK_STREAM)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.settimeout(5)
        c.bind((src, 0))
        c.connect((dst, port))
        c.sendall(b"hello " + MARKER[:9])
        time.sleep(0.05)
        c.sendall(MARKER[9:] + b" bye")
        out[src] = c.getsockname()[1]
        c.shutdown(socket.SHUT_WR)
        try:
            while c.recv(100):
                pass
        except OSError:
            pass
        c.close()
    print(json.dumps(out))


if __name__ == "__main__":
    cmd, *a = sys.argv[1:]
    if cmd == "server":
        server(a[0], a[1], int(a[2]), int(a[3]), float(a[4]))
    elif cmd == "udp":
        udp_flows(a[0], a[1], int(a[2]), a[3], a[4], int(a[5]))
    else:
        tcp_flows(a[0], a[1], int(a[2]), a[3])
