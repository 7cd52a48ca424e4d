"""What a listening ZeroMQ socket needs so that strangers cannot starve it.

A peer that connects and goes silent costs the receiver a file descriptor and a
half-done handshake; a thousand of them used to exhaust the usual soft limit of 1024
open files, after which libzmq's listener spins on accept() and no legitimate sender
can connect. Three measures, all applied by the daemons that bind:

- ``raise_fd_limit()``: the soft limit of open files up to the hard limit, at start;
- ``harden(sock)``: a handshake must complete within ``HANDSHAKE_S`` seconds
  (``ZMQ_HANDSHAKE_IVL``; libzmq's default is 30 s), so a silent peer gives its
  descriptor back quickly;
- ``Monitor``: the socket's connection events (accepted, closed, handshake failed or
  done) read without blocking from the daemon's loop, counted
  (``connections.accepted``, ``connections.closed``, ``handshakes.failed``,
  ``handshakes.succeeded``) and logged rate-limited.
"""

from __future__ import annotations

import logging
import resource

import zmq
from zmq.utils.monitor import parse_monitor_message

from .counters import init as init_counters
from .logs import RateLimited
from .metrics import Counters

log = logging.getLogger(__name__)

#: seconds a peer has to complete the ZMTP (and CURVE) handshake
HANDSHAKE_S = 5.0
#: monitor events read per call (the loop calls again on its next turn)
MONITOR_BATCH = 256

_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPT_FAILED
          | zmq.EVENT_HANDSHAKE_SUCCEEDED | _FAILED)


def raise_fd_limit() -> dict[str, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; returns both, for the start record."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:  # e.g. a seccomp profile that refuses it
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, e)
    return {"nofile": soft, "nofile_hard": hard}


def harden(sock: zmq.Socket) -> None:
    """Settings of every socket that accepts connections from the network."""
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_S * 1000))


class Monitor:
    """Connection events of one listening socket, counted and logged rate-limited."""

    def __init__(self, sock: zmq.Socket, counters: Counters, what: str):
        self.what = what
        self.c = counters
        self.pair = sock.get_monitor_socket(EVENTS)
        self._warn = RateLimited(log, 60.0)
        init_counters(self.c, "connections.accepted", "connections.closed", "handshakes.failed",
                  "handshakes.succeeded", "connections.accept_failed")

    def poll(self) -> int:
        """Read the events that are there (never waits); returns how many."""
        n = 0
        pair = self.pair
        # ask first: an empty recv raises zmq.Again, whose construction costs more
        # than the check, and this runs on every turn of the daemons' loops
        while n < MONITOR_BATCH and pair.get(zmq.EVENTS) & zmq.POLLIN:
            try:
                msg = pair.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            ev = parse_monitor_message(msg)
            kind = ev["event"]
            if kind == zmq.EVENT_ACCEPTED:
                self.c["connections.accepted"] += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                self.c["connections.closed"] += 1
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.c["handshakes.succeeded"] += 1
            elif kind == zmq.EVENT_ACCEPT_FAILED:
                self.c["connections.accept_failed"] += 1
                self._warn.warning("accept", "%s: cannot accept a connection (errno %d): "
                                   "out of file descriptors?", self.what, ev["value"],
                                   event="accept_failed", errno=ev["value"])
            elif kind & _FAILED:
                self.c["handshakes.failed"] += 1
                self._warn.warning("handshake", "%s: a peer failed the handshake (%s) or "
                                   "did not complete it within %g s", self.what,
                                   ev["endpoint"].decode(errors="replace"), HANDSHAKE_S,
                                   event="handshake_failed", code=kind)
        return n

    def close(self) -> None:
        self.pair.close(linger=0)
