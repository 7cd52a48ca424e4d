"""Every counter and gauge the daemons report: one registry, one place.

Each entry names the metric, its unit, the daemons that emit it and what it
means; ``docs/metrics.md`` carries the table ``markdown()`` generates (a unit test
keeps the two equal, and another checks that every counter name in the code is
registered here).  The Prometheus habit: the name, the unit and the meaning side
by side.

``dropped.*`` holds packets only, so that summing it (the natural dashboard
query) never double counts: frames go in ``frames_dropped.*``, bytes in
``bytes_dropped.*`` (``docs/migration.md`` lists the old names).
"""

from __future__ import annotations

from dataclasses import dataclass

SEND, RECV, COMPRESS, DECOMPRESS = "send", "recv", "compress", "decompress"
ALL = (SEND, RECV, COMPRESS, DECOMPRESS)
RELAYS = (COMPRESS, DECOMPRESS)


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # packets, bytes, frames, events, clients, requests, ...
    daemons: tuple[str, ...]
    meaning: str
    gauge: bool = False

    @property
    def packets(self) -> bool:
        return self.unit == "packets"


def _m(name, unit, daemons, meaning, gauge=False) -> Metric:
    return Metric(name, unit, tuple(daemons), meaning, gauge)


METRICS: tuple[Metric, ...] = (
    _m("packets_in", "packets", ALL, "packets that entered this stage (sender: logged by the kernel to "
       "its groups, including those the kernel then had to drop)"),
    _m("bytes_in", "bytes", ALL, "captured IP bytes of the packets that entered this stage and were "
       "actually read"),
    _m("packets_out", "packets", ALL, "packets this stage passed on: sender and relays, handed to "
       "ZeroMQ; receiver, received whole by a reader of the live pcap output (a FIFO: read "
       "out of the pipe, known from FIONREAD on the write end; a file or stdout: written)"),
    _m("bytes_out", "bytes", ALL, "IP bytes of `packets_out`"),
    _m("frames_in", "frames", (RECV,) + RELAYS, "frames received"),
    _m("frames_out", "frames", (SEND,) + RELAYS, "frames sent"),
    _m("dropped.kernel_overrun", "packets", (SEND,), "packets the kernel could not queue to the "
       "sender (its socket buffer was full): exact, from NFLOG sequence numbers "
       "(`NFULNL_CFG_F_SEQ`); a loss at the very end of a run shows once a later packet arrives"),
    _m("kernel_enobufs", "events", (SEND,), "ENOBUFS events on the netlink socket (each one doubles "
       "the buffer, up to `--libnflog-nlbufsiz-max`, through the controller process that keeps only "
       "CAP_NET_ADMIN)"),
    _m("dropped.queue_full", "packets", (SEND,) + RELAYS, "packets of frames refused because "
       "`--zmq-buffer-frames` (sender) or `--zmq-buffer` (relays) frames were already queued "
       "(ZeroMQ high-water mark) and the frame could not grow: the sender holds its own batch "
       "while it has room and drops it once full (docs/architecture.md, `outgoing.py`)"),
    _m("frames_dropped.queue_full", "frames", (SEND,) + RELAYS, "the frames of `dropped.queue_full`"),
    _m("dropped.hwm", "packets", (SEND, COMPRESS), "packets dropped by rate control above `--hwm` "
       "(only the excess)"),
    _m("frames_dropped.hwm", "frames", (SEND, COMPRESS), "frames rate control dropped whole above "
       "`--hwm`"),
    _m("dropped.malformed", "packets", (RECV,) + RELAYS, "packets of frames rejected by validation "
       "whose header was intact (the count was known)"),
    _m("frames_dropped.malformed", "frames", (RECV,) + RELAYS, "every frame rejected by validation, "
       "including unreadable ones"),
    _m("dropped.transit", "packets", (RECV,) + RELAYS, "packets missing in the sequence of a sender's "
       "frames: lost on the link into this stage (exact, from `pkt_seq`; per sender in the totals "
       "record). A jump further than a stream could have sent is not counted here but in "
       "`streams_reset` (`docs/frame-format.md`)"),
    _m("streams_reset", "events", (RECV,) + RELAYS, "`pkt_seq` jumps (forwards or backwards) larger "
       "than 65 536 packets plus 4 000 000 per second since the stream's previous frame: a forged or "
       "broken header, or a stream that restarted; tracking restarts there, nothing is counted as lost"),
    _m("frames_rewound", "frames", (RECV,) + RELAYS, "frames whose `pkt_seq` went backwards "
       "(replays): their records are delivered, nothing already counted is counted again"),
    _m("streams_forgotten", "streams", (RECV,) + RELAYS, "streams (sender id + instance) no longer "
       "tracked because more than 4 096 were seen (least recently used first, O(1))"),
    _m("out_streams_forgotten", "streams", RELAYS, "a relay's own numbering per sender id, likewise "
       "bounded to 4 096 ids: forged ids cost nothing beyond that"),
    _m("dropped.output", "packets", (RECV,), "packets the live output could not take: no FIFO reader "
       "attached, the reader too slow for `--output-buffer`, or queued for a reader that went away"),
    _m("dropped.reader_gone", "packets", (RECV,), "packets meant for a FIFO reader (or stdout) that "
       "left before it read them whole: what was still in its pipe when it closed or was killed, a "
       "record it read only part of (counted once), and what was still queued for it; also what a "
       "replaced reader had not read when the receiver let it go (more than 8 replaced readers "
       "that neither read nor leave)"),
    _m("dropped.unread_at_exit", "packets", (RECV,), "at exit, packets the attached reader had not "
       "read whole after 2 s of waiting (it may still read them after the receiver is gone; "
       "counted so that the totals close)"),
    _m("dropped.evicted", "packets", (RECV,), "packets pushed out of the `--buffer-window` ring by "
       "newer ones (they were delivered live; only the buffered copy is gone)"),
    _m("bytes_dropped.evicted", "bytes", (RECV,), "pcap bytes of the evicted packets"),
    _m("dropped.tap_slow", "clients", (RECV,), "`--tap` clients disconnected because they fell more "
       "than `--tap-buffer` behind (counted in clients: what a cut-off client would have received is "
       "unbounded; the live path and other clients are not affected)"),
    _m("tap.clients", "clients", (RECV,), "tap clients accepted"),
    _m("tap.refused", "clients", (RECV,), "tap clients refused (over `--tap-clients`)"),
    _m("tap.bytes_out", "bytes", (RECV,), "bytes sent to tap clients"),
    _m("query.requests", "requests", (RECV,), "buffer-interface requests received"),
    _m("query.served", "requests", (RECV,), "queries answered completely"),
    _m("query.refused", "requests", (RECV,), "queries refused (an error message went back)"),
    _m("query.refused_memory", "requests", (RECV,), "of `query.refused`: refused as `busy` because a "
       "running query still held traffic evicted from the window (the memory bound, "
       "`docs/query-protocol.md`)"),
    _m("query.timeouts", "requests", (RECV,), "queries dropped because the client took nothing for "
       "`--buffer-timeout` seconds"),
    _m("query.aborted", "requests", (RECV,), "queries cancelled, replaced by a new one, or whose "
       "client went away"),
    _m("query.records_out", "packets", (RECV,), "packets sent back to query clients (copies: not part "
       "of the live path)"),
    _m("query.bytes_out", "bytes", (RECV,), "pcap bytes sent back to query clients"),
    _m("statsd.send_errors", "datagrams", ALL, "statsd datagrams that could not be sent (with `-m`)"),
    _m("statsd.resolve_errors", "events", ALL, "failed resolutions of the statsd server's name "
       "(with `-m`)"),
    _m("connections.accepted", "connections", (RECV,) + RELAYS, "TCP connections accepted by the "
       "listening sockets (data, buffer interface), from ZeroMQ's socket monitor"),
    _m("connections.closed", "connections", (RECV,) + RELAYS, "TCP connections closed"),
    _m("connections.accept_failed", "events", (RECV,) + RELAYS, "failed accept() calls (out of file "
       "descriptors: each one is also logged, at most once a minute)"),
    _m("handshakes.succeeded", "connections", (RECV,) + RELAYS, "ZMTP/CURVE handshakes completed"),
    _m("handshakes.failed", "connections", (RECV,) + RELAYS, "handshakes failed or not completed "
       "within 5 s (`ZMQ_HANDSHAKE_IVL`): a silent or hostile peer gives its descriptor back after "
       "5 s; failures are logged at most once a minute"),
    _m("auth_refused", "connections", (RECV,) + RELAYS, "connection attempts refused because the "
       "client's CURVE key is not in `--curve-allow`"),
    _m("netlink_buffers", "buffers", (SEND,), "netlink buffers read (packets per buffer shows the "
       "kernel batch size)"),
    _m("netlink_malformed", "messages", (SEND,), "netlink messages that failed validation"),
    _m("netlink_errors", "messages", (SEND,), "NLMSG_ERROR replies"),
    _m("compressed_frames", "frames", (SEND, COMPRESS), "frames rate control compressed"),
    _m("compressed_packets", "packets", (SEND, COMPRESS), "packets in the compressed frames (not a "
       "loss: they are delivered)"),
    _m("compressed_raw_bytes", "bytes", (SEND, COMPRESS), "record bytes before compression"),
    _m("compressed_bytes", "bytes", (SEND, COMPRESS), "bytes after compression"),
    # gauges
    _m("netlink_queue_bytes", "bytes", (SEND,), "bytes the kernel holds for the sender, not yet read "
       "(near `netlink_rcvbuf`: overruns are coming)", gauge=True),
    _m("netlink_rcvbuf", "bytes", (SEND,), "the netlink receive buffer the kernel applies now (grows "
       "after overruns)", gauge=True),
    _m("pending_bytes", "bytes", RELAYS, "record bytes rate control holds in a frame not sent "
       "yet (squashing or compressing)", gauge=True),
    _m("output_pending_bytes", "bytes", (RECV,), "bytes waiting for the FIFO reader (at most "
       "`--output-buffer`)", gauge=True),
    _m("buffer_bytes", "bytes", (RECV,), "bytes the `--buffer-window` ring holds", gauge=True),
    _m("buffer_packets", "packets", (RECV,), "packets the `--buffer-window` ring holds", gauge=True),
    _m("query_active", "requests", (RECV,), "queries being served", gauge=True),
    _m("tap_clients", "clients", (RECV,), "tap clients connected", gauge=True),
    _m("query_inflight", "pieces", (RECV,), "pieces (at most 1 MiB each) sent to query clients and not "
       "yet taken by them (at most 64: the shared budget of `docs/query-protocol.md`)", gauge=True),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
COUNTERS = frozenset(m.name for m in METRICS if not m.gauge)
GAUGES = frozenset(m.name for m in METRICS if m.gauge)
#: the packet counters whose sum is the loss of the live path (``docs/metrics.md``)
LIVE_LOSSES = ("dropped.kernel_overrun", "dropped.queue_full", "dropped.hwm", "dropped.malformed",
               "dropped.transit", "dropped.output", "dropped.reader_gone", "dropped.unread_at_exit")


def init(counters: dict, *names: str) -> None:
    """Create the named counters at 0 (so that the totals show them); each must be registered."""
    for name in names:
        if name not in COUNTERS:
            raise KeyError(f"counter {name!r} is not in nflog_pipe.counters")
        counters.setdefault(name, 0)


def markdown(gauges: bool = False) -> str:
    """The table of ``docs/metrics.md`` (counters, or gauges)."""
    head = "| gauge | daemons | unit | meaning |" if gauges else "| counter | daemons | unit | meaning |"
    rows = [head, "|---|---|---|---|"]
    for m in METRICS:
        if m.gauge == gauges:
            who = "all" if m.daemons == ALL else ", ".join(m.daemons)
            rows.append(f"| `{m.name}` | {who} | {m.unit} | {m.meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(), markdown(gauges=True), sep="\nGauges:\n\n")
