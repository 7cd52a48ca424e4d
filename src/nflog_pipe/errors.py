"""The project's exception family (pyzmq's ``zmq.error``, pyroute2's
``netlink.exceptions``): every error the library raises on purpose is a
``PipeError``; ``kind`` names the check or the refusal where callers need to tell
them apart (a frame rejection counted by reason, a query refusal sent back to the
client).  Each subclass also keeps its historical builtin base (``ValueError``,
``OSError``...) so that existing ``except`` clauses still match."""

from __future__ import annotations


class PipeError(Exception):
    """Base of the project's errors."""

    #: what went wrong, as a short word (``magic``, ``busy``, ``codec``...), or None
    kind: str | None = None

    def __init__(self, message: str = "", kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
