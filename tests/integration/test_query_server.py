"""QueryServer on a real ROUTER socket (loopback TCP), driven by a loop like
the receiver's in a thread (Server) or step by step by the test (Stepped);
clients are query.fetch and raw DEALER sockets."""

import json
import threading
import time

import pytest
import zmq
from lab import wait_until

from nflog_pipe import pcap, query, ring
from nflog_pipe.metrics import Counters

RECORDS = [pcap.record(1_700_000_000 + i // 1000, i % 1000, b"\x45" + bytes(200 + i % 900))
           for i in range(12000)]  # ~7 MiB
WHOLE = pcap.GLOBAL_HEADER_BYTES + b"".join(RECORDS)


def ring_of(frames, window=64 << 20) -> tuple[ring.Ring, Counters]:
    """A ring filled with ``frames``: lists of records, one frame each."""
    c = Counters()
    r = ring.Ring(window, c)
    for f in frames:
        r.append(memoryview(b"".join(f)), len(f))
    return r, c


class Stepped:
    """A QueryServer on a real ROUTER socket (loopback TCP), driven by the
    test itself, step by step."""

    def __init__(self, r: ring.Ring, c: Counters, timeout=30.0, max_queries=4, rate=0.0,
                 inflight=query.INFLIGHT):
        self.ctx = zmq.Context()
        self.c = c
        self.ring = r
        self.sock = self.ctx.socket(zmq.ROUTER)
        query.QueryServer.configure(self.sock)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.srv = query.QueryServer(self.sock, self.ring, self.c, timeout, max_queries, rate,
                                     inflight=inflight)

    def client(self):
        return raw_client(self.ctx, self.endpoint)

    def close(self):
        self.sock.close(linger=0)
        self.ctx.term()


class Server(Stepped):
    """The same, driven by a loop like the receiver's in a thread."""

    def __init__(self, timeout=10.0, max_queries=4, rate=0.0):
        super().__init__(*ring_of(RECORDS[i : i + 100] for i in range(0, len(RECORDS), 100)),
                         timeout, max_queries, rate)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stop.is_set():
            wait = 0.0 if self.srv.busy else 0.02
            if not self.srv.busy and (due := self.srv.next_deadline()) is not None:
                wait = max(0.0, min(wait, due - time.monotonic()))
            events = dict(poller.poll(wait * 1000))
            if self.sock in events:
                self.srv.readable()
            self.srv.work()

    def close(self):
        self.stop.set()
        self.thread.join(10)
        super().close()


@pytest.fixture
def server():
    """A patient server: no client in these tests is slow on purpose, and a
    busy 2-core machine can hold a client thread back for a good part of a second."""
    s = Server()
    yield s
    s.close()


@pytest.fixture
def impatient():
    """For the tests about --buffer-timeout itself."""
    s = Server(timeout=0.5)
    yield s
    s.close()


class Buf(bytearray):
    def write(self, data):
        self += data


def wait_for(cond, timeout=20.0, what="condition"):
    wait_until(cond, timeout, 0.02, what)


def raw_client(ctx, endpoint):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(endpoint)
    return s


def test_whole_buffer(server):
    out = Buf()
    header = query.fetch(server.endpoint, query.Request(), out, 20)
    assert bytes(out) == WHOLE
    assert header["records"] == len(RECORDS) and header["bytes"] == len(WHOLE)
    wait_for(lambda: server.c["query.served"] == 1, what="served count")
    assert server.c["query.bytes_out"] == len(WHOLE)


def test_several_clients_at_once(server):
    results, errors = {}, []

    def one(i):
        out = Buf()
        try:
            query.fetch(server.endpoint, query.Request(credit=1 + i), out, 30)
        except Exception as e:  # reported below
            errors.append(e)
        results[i] = bytes(out)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert all(results[i] == WHOLE for i in range(4))
    assert server.c["query.served"] == 4


def test_narrowed_request(server):
    out = Buf()
    since = 1_700_000_003.0
    query.fetch(server.endpoint, query.Request(since=since, until=since + 2,
                                               max_bytes=100_000), out, 20)
    _, recs = pcap.parse(bytes(out))
    inside = [r for r in RECORDS[3000:5000]]
    expect = []
    total = 24
    for r in reversed(inside):
        if total + len(r) > 100_000:
            break
        expect.append(r)
        total += len(r)
    assert bytes(out) == pcap.GLOBAL_HEADER_BYTES + b"".join(reversed(expect))
    assert all(since <= r.ts < since + 2 for r in recs)


def test_errors_come_back_to_the_client(server):
    for req, words in [(query.Request(filter="udp and port"), "syntax error"),
                       (query.Request(since=10, until=5), "not before until")]:
        with pytest.raises(query.QueryFailed) as e:
            query.fetch(server.endpoint, req, Buf(), 10)
        assert words in str(e.value)
    s = raw_client(server.ctx, server.endpoint)
    try:
        s.send_multipart([b"query", b'{"last": "yesterday"}'])
        kind, body = s.recv_multipart()
        assert kind == b"error" and json.loads(body)["kind"] == "request"
        s.send_multipart([b"hello"])
        kind, body = s.recv_multipart()
        assert kind == b"error" and "not a query protocol message" in json.loads(body)["error"]
    finally:
        s.close()
    assert server.c["query.refused"] == 4
    # the server still answers
    out = Buf()
    query.fetch(server.endpoint, query.Request(), out, 20)
    assert bytes(out) == WHOLE


def test_client_that_takes_nothing_times_out(impatient):
    server = impatient
    s = raw_client(server.ctx, server.endpoint)
    try:
        s.send_multipart([b"query", b'{"credit": 1}'])
        assert s.recv_multipart()[0] == b"header"
        assert s.recv_multipart()[0] == b"data"   # the pcap header, then no more credit
        wait_for(lambda: server.c["query.timeouts"] == 1, what="the timeout")
        assert not server.srv.transfers
    finally:
        s.close()


def test_client_that_vanishes_mid_transfer(impatient):
    server = impatient
    s = raw_client(server.ctx, server.endpoint)
    s.send_multipart([b"query", b'{"credit": 2}'])
    assert s.recv_multipart()[0] == b"header"
    s.recv_multipart()
    s.close()  # gone, with the transfer half done
    wait_for(lambda: not server.srv.transfers, what="the transfer to be forgotten")
    assert server.c["query.timeouts"] + server.c["query.aborted"] == 1
    out = Buf()
    query.fetch(server.endpoint, query.Request(), out, 20)
    assert bytes(out) == WHOLE


def test_credit_after_vanishing_is_an_abort():
    """A transfer with credit left whose client is gone ends at the next send
    (EHOSTUNREACH), not after --buffer-timeout.  The server is driven step by
    step so that the client is gone before the server uses the credit."""
    s = Stepped(*ring_of([RECORDS]))
    router, srv, c = s.sock, s.srv, s.c
    monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    client = s.client()
    try:
        client.send_multipart([b"query", b'{"credit": 1}'])
        wait_for(lambda: router.poll(10) != 0, what="the request")
        srv.readable()
        wait_for(lambda: (srv.work(), client.poll(10))[1] != 0, what="the answer")
        assert client.recv_multipart()[0] == b"header"
        assert client.recv_multipart()[0] == b"data"  # the pcap header; credit used up
        client.send_multipart([b"more", b"2"])  # less than the response needs: no way to finish
        wait_for(lambda: router.poll(10) != 0, what="the credit")
        srv.readable()
        client.close()
        assert monitor.poll(10_000), "no disconnect event"
        monitor.recv_multipart()
        # the event comes just before the session ends the pipe: let the
        # socket take the pipe's end (a send into a pipe not yet ended
        # succeeds, and the credit would be spent on a client that is gone)
        time.sleep(0.3)
        router.getsockopt(zmq.EVENTS)
        wait_for(lambda: (srv.work(), not srv.transfers)[1], timeout=5,
                 what="the transfer to be forgotten")
        assert c["query.aborted"] == 1
        assert c["query.timeouts"] == 0 and c["query.served"] == 0
    finally:
        monitor.close()
        s.close()


def test_cancel(server):
    s = raw_client(server.ctx, server.endpoint)
    try:
        s.send_multipart([b"query", b'{"credit": 1}'])
        s.recv_multipart(), s.recv_multipart()
        s.send_multipart([b"cancel"])
        wait_for(lambda: server.c["query.aborted"] == 1, what="the cancel")
        assert not server.srv.transfers
    finally:
        s.close()


def test_busy_when_too_many_queries():
    srv = Server(timeout=30, max_queries=1)
    try:
        s = raw_client(srv.ctx, srv.endpoint)
        s.send_multipart([b"query", b'{"credit": 1}'])
        assert s.recv_multipart()[0] == b"header"
        with pytest.raises(query.QueryFailed) as e:
            query.fetch(srv.endpoint, query.Request(), Buf(), 10)
        assert "busy" in str(e.value)
        s.close()
    finally:
        srv.close()


def test_oversized_message_does_not_reach_the_server(server):
    s = raw_client(server.ctx, server.endpoint)
    try:
        s.send_multipart([b"query", b" " * (query.MAX_REQUEST + 4096)])
        assert not s.poll(500)  # libzmq drops the connection (ZMQ_MAXMSGSIZE)
    finally:
        s.close()
    out = Buf()
    query.fetch(server.endpoint, query.Request(), out, 20)
    assert bytes(out) == WHOLE
    assert server.c["query.requests"] == 1


def test_no_receiver_is_a_clear_error():
    with pytest.raises(query.QueryFailed) as e:
        query.fetch("tcp://127.0.0.1:1", query.Request(), Buf(), 0.3)
    assert "no answer from tcp://127.0.0.1:1" in str(e.value)


def test_live_backlog_gets_priority():
    """While the live path has a backlog, a transfer sends one message per
    loop turn instead of a burst."""
    s = Stepped(*ring_of([RECORDS]))
    router, srv = s.sock, s.srv
    client = s.client()
    try:
        client.send_multipart([b"query", b'{"credit": 64}'])
        wait_for(lambda: router.poll(10) != 0, what="the request")
        srv.readable()
        t = next(iter(srv.transfers.values()))
        while t.state == "plan":
            t.plan()
        for busy in (True, True, False):
            srv.work(busy_live=busy)
        kinds = []
        while client.poll(200):
            kinds.append(client.recv_multipart()[0])
        # busy, busy: header, pcap header; then a burst of 4 data messages
        assert kinds == [b"header", b"data"] + [b"data"] * srv.BURST
    finally:
        client.close()
        s.close()


def test_rate_limit_slows_queries_without_timing_them_out():
    """--buffer-rate: 7 MiB at 4 MiB/s (4 MiB burst) takes at least 0.75 s;
    waiting for the rate limit is not the client's fault (timeout 0.5 s)."""
    srv = Server(timeout=0.5, rate=4 * 2**20)
    try:
        out = Buf()
        t = time.monotonic()
        query.fetch(srv.endpoint, query.Request(), out, 30)
        elapsed = time.monotonic() - t
        assert bytes(out) == WHOLE
        assert elapsed >= (len(WHOLE) - query.QueryServer.RATE_BURST) / (4 * 2**20) - 0.05
        wait_for(lambda: srv.c["query.served"] == 1, what="served")
        assert srv.c["query.timeouts"] == 0
    finally:
        srv.close()


def test_no_new_query_while_one_holds_evicted_traffic():
    """Memory bound: while a running query still holds chunks the ring has
    evicted, a new query is refused as busy (its snapshot would keep another
    window alive); once the first is done, it is served."""
    frames = [RECORDS[i : i + 200] for i in range(0, 1200, 200)]  # ~140 KB each
    s = Stepped(*ring_of(frames[:3], window=sum(len(b"".join(f)) for f in frames[:3])))
    router, srv, c, r = s.sock, s.srv, s.c, s.ring
    a, b = s.client(), s.client()

    def serve():
        wait_for(lambda: router.poll(10) != 0, what="a request")
        srv.readable()
        for _ in range(5):
            srv.work()

    try:
        a.send_multipart([b"query", b'{"credit": 1}'])  # the pcap header, then it waits
        serve()
        assert a.recv_multipart()[0] == b"header" and a.recv_multipart()[0] == b"data"
        for f in frames[3:]:  # the ring moves on: everything A holds is evicted
            r.append(memoryview(b"".join(f)), len(f))
        b.send_multipart([b"query", b"{}"])
        serve()
        kind, body = b.recv_multipart()
        assert kind == b"error" and json.loads(body)["kind"] == "busy"
        assert "left the window" in json.loads(body)["error"]
        assert c["query.refused_memory"] == 1
        a.send_multipart([b"cancel"])
        serve()
        assert not srv.transfers
        b.send_multipart([b"query", b"{}"])
        serve()
        kind, body = b.recv_multipart()
        assert kind == b"header" and json.loads(body)["records"] == r.records > 0
    finally:
        a.close()
        b.close()
        s.close()


def test_client_waits_while_the_receiver_is_busy(tmp_path, capfd):
    """nflog-pcap-query --wait: a busy answer is retried every second until
    the slot is free; without --wait it fails at once."""
    srv = Server(timeout=30, max_queries=1)
    holder = raw_client(srv.ctx, srv.endpoint)
    try:
        holder.send_multipart([b"query", b'{"credit": 1}'])
        assert holder.recv_multipart()[0] == b"header"  # the only slot is taken
        out = tmp_path / "out.pcap"
        assert query.main([srv.endpoint, "-o", str(out)]) == 1
        assert not out.exists() and "busy" in capfd.readouterr().err
        release = threading.Timer(1.5, holder.send_multipart, ([b"cancel"],))
        release.start()
        t = time.monotonic()
        assert query.main([srv.endpoint, "-o", str(out), "--wait", "20"]) == 0
        release.join()
        assert time.monotonic() - t >= 1.0
        assert out.read_bytes() == WHOLE
        assert srv.c["query.refused"] >= 2 and srv.c["query.served"] == 1
    finally:
        holder.close()
        srv.close()


def test_idle_clients_hold_no_more_than_the_shared_budget():
    """Clients that ask and never take anything (receive HWM 1, credit 64): together
    they never get more than the budget of pieces sent; each is dropped after the
    timeout although it has credit left; once they are gone their share is free, and
    a client that reads gets its whole answer."""
    big = [pcap.record(1_700_000_000, i, bytes(60_000)) for i in range(400)]  # ~23 MiB
    r, c = ring_of([big[i : i + 20] for i in range(0, len(big), 20)])
    srv = Stepped(r, c, timeout=0.5, max_queries=16, inflight=4)
    idle = []
    try:
        for _ in range(10):
            s = srv.client()
            s.rcvhwm = 1
            s.send_multipart([query.CMD_QUERY, query.Request(credit=64).encode()])
            idle.append(s)
        peak = 0
        deadline = time.monotonic() + 3   # six timeouts long
        while time.monotonic() < deadline:
            srv.srv.readable()
            srv.srv.work()
            peak = max(peak, srv.srv.owed_total)
            assert srv.srv.owed_total <= 4
            time.sleep(0.01)
        assert peak == 4, "the budget was never used: the test did not test it"
        # those that were sent something and took nothing are dropped (credit left or
        # not); the others wait for the budget, which the dropped ones still hold
        # while connected: a bound on memory, not a way round it
        assert 1 <= c["query.timeouts"] <= 4 and c["query.served"] == 0
        for s in idle:
            s.close()
        idle = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and srv.srv.owed_total:
            srv.srv.readable()
            srv.srv.work()
            time.sleep(0.01)
        assert srv.srv.owed_total == 0 and not srv.srv.owed, "gone clients still hold the budget"
        out = Buf()
        done = []
        t = threading.Thread(target=lambda: done.append(
            query.fetch(srv.endpoint, query.Request(), out, 20, ctx=srv.ctx)))
        t.start()
        deadline = time.monotonic() + 30
        while t.is_alive() and time.monotonic() < deadline:
            srv.srv.readable()
            srv.srv.work()
            assert srv.srv.owed_total <= 4
            time.sleep(0.001)
        t.join(1)
        assert done and bytes(out) == pcap.GLOBAL_HEADER_BYTES + b"".join(big)
    finally:
        for s in idle:
            s.close()
        srv.close()
