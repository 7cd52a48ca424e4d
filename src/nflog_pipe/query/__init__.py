"""The query interface of the receiver's buffer (``docs/query-protocol.md``).

- ``protocol``: requests, message kinds, ``Transfer`` (one response) -- no I/O;
- ``server``: ``QueryServer``, the ROUTER layer the receiver's loop drives;
- ``client``: ``fetch`` and the ``nflog-pcap-query`` command.

The client's import chain stays free of libpcap and the native modules (the query
image installs neither): ``server`` is imported only when one of its names is used.
"""

from __future__ import annotations

from .client import (  # noqa: F401
    OPTIONS,
    SERVICE,
    Progress,
    QueryFailed,
    Stopped,
    duration,
    fetch,
    main,
    size,
    timestamp,
)
from .protocol import (  # noqa: F401
    CMD_CANCEL,
    CMD_MORE,
    CMD_QUERY,
    DEFAULT_CREDIT,
    INFLIGHT,
    MAX_CREDIT,
    MAX_DURATION,
    MAX_EXPRESSION,
    MAX_PARTS,
    MAX_REQUEST,
    MAX_TIME,
    MSG_DATA,
    MSG_END,
    MSG_ERROR,
    MSG_HEADER,
    PIECE,
    PROTOCOL_VERSION,
    Request,
    RequestError,
    Transfer,
    buffer_endpoint,
    parse_request,
)

_SERVER = ("QueryServer",)


def __getattr__(name: str):
    if name in _SERVER:
        from . import server
        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
