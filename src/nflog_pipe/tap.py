"""The live tap: PCAP-over-IP on a plain TCP port (``--tap``).

Any number of clients (Wireshark's ``TCP@host:port`` interface, NetworkMiner,
Arkime, Zeek, ``nc host port | tcpdump -r -``) connect and receive a pcap
header (little-endian, LINKTYPE_RAW) followed by every record the receiver
accepts from then on, whole frames only.  The tap never slows the receiver:
sockets are non-blocking, each client may have at most ``max_pending`` bytes
waiting; a client that falls further behind is disconnected and counted
(``dropped.tap_slow``).  Anything a client sends is read and ignored.

No authentication or encryption: bind to loopback (the default when only a
port is given) or to a trusted network.
"""

from __future__ import annotations

import argparse
import logging
import socket

from . import pcap
from .logs import RateLimited
from .metrics import Counters
from .writeq import WriteQueue

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


def tap_endpoint(text: str) -> tuple[str, int]:
    """``tcp://HOST:PORT``, ``HOST:PORT`` or ``PORT`` (loopback)."""
    rest = text[len("tcp://"):] if text.startswith("tcp://") else text
    if "://" in rest:
        raise argparse.ArgumentTypeError(f"{text!r}: the tap is plain TCP (tcp://HOST:PORT)")
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = DEFAULT_HOST, rest
    host = host.strip("[]")
    if host == "*":
        host = "0.0.0.0"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a TCP endpoint (tcp://HOST:PORT, HOST:PORT or PORT)")
    return host, int(port)


class TapClient:
    __slots__ = ("sock", "fd", "peer", "q", "sent")

    def __init__(self, sock: socket.socket, peer: str):
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.q = WriteQueue(sock.sendmsg)
        self.sent = 0


class Tap:
    def __init__(self, address: tuple[str, int], counters: Counters,
                 max_pending: int = 4 << 20, max_clients: int = 16):
        self.c = counters
        self.max_pending = max_pending
        self.max_clients = max_clients
        self.clients: dict[int, TapClient] = {}
        self._warn = RateLimited(log, 10.0)
        for k in ("tap.clients", "dropped.tap_slow", "tap.refused", "tap.bytes_out"):
            self.c.setdefault(k, 0)
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
        family, kind, proto, _, addr = infos[0]
        self.listener = socket.socket(family, kind, proto)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(addr)
            self.listener.listen(16)
        except OSError:
            self.listener.close()
            raise
        self.listener.setblocking(False)
        self.fd = self.listener.fileno()
        self.address = self.listener.getsockname()[:2]

    # -- clients ---------------------------------------------------------------
    def accept(self) -> None:
        while True:
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. EMFILE: try again on the next event
                self._warn.warning("tap.accept", "tap accept failed: %s", e.strerror)
                return
            peer = f"{addr[0]}:{addr[1]}"
            if len(self.clients) >= self.max_clients:
                self.c["tap.refused"] += 1
                self._warn.warning("tap.refused", "tap client %s refused: %d clients already",
                                   peer, len(self.clients), event="tap_refused", peer=peer)
                sock.close()
                continue
            sock.setblocking(False)
            client = TapClient(sock, peer)
            self.clients[client.fd] = client
            self.c["tap.clients"] += 1
            log.info("tap client %s attached", peer, extra={"event": "tap_attached",
                                                            "peer": peer,
                                                            "clients": len(self.clients)})
            client.q.push(memoryview(pcap.GLOBAL_HEADER_BYTES))
            self.flush(client)

    def _drop(self, client: TapClient, why: str, slow: bool = False) -> None:
        self.clients.pop(client.fd, None)
        client.sock.close()
        if slow:
            self.c["dropped.tap_slow"] += 1
            self._warn.warning("tap.slow", "tap client %s dropped: %s", client.peer, why,
                               event="tap_dropped", peer=client.peer, reason="slow")
        else:
            log.info("tap client %s left: %s", client.peer, why,
                     extra={"event": "tap_detached", "peer": client.peer, "sent": client.sent})

    # -- data --------------------------------------------------------------------
    def write(self, records: memoryview, count: int) -> None:
        """A validated record area for every client (no copy)."""
        n = len(records)
        for client in list(self.clients.values()):
            if client.q.bytes + n > self.max_pending:
                self._drop(client, f"more than {self.max_pending} bytes behind", slow=True)
                continue
            client.q.push(records)
            self.flush(client)

    def flush(self, client: TapClient) -> None:
        done = client.q.write()
        client.sent += done.bytes
        self.c["tap.bytes_out"] += done.bytes
        if done.error is not None:
            self._drop(client, done.error.strerror or str(done.error))

    def readable(self, fd: int) -> None:
        """A client sent something or closed: read and ignore, or drop it."""
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._drop(client, e.strerror or str(e))
            return
        if not data:
            self._drop(client, "closed by the client")

    def writable(self, fd: int) -> None:
        client = self.clients.get(fd)
        if client is not None:
            self.flush(client)

    def poll_items(self) -> list[tuple[int, bool]]:
        """(fd, wants POLLOUT) of every client."""
        return [(fd, bool(c.q)) for fd, c in self.clients.items()]

    def close(self) -> None:
        for client in list(self.clients.values()):
            client.sock.close()
        self.clients.clear()
        self.listener.close()

