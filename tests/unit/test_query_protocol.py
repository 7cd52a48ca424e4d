"""Query protocol without sockets: request validation (requests come from the
network), the client's argument types, and one response's message flow."""

import argparse
import json
from datetime import UTC, datetime

import pytest

from nflog_pipe import pcap, query, ring


@pytest.mark.parametrize("body,expect", [
    (b"", query.Request()),
    (b"  ", query.Request()),
    (b"{}", query.Request()),
    (b'{"version": 1, "last": 30}', query.Request(last=30.0)),
    (b'{"since": 1700000000.5, "until": 1700000001}',
     query.Request(since=1700000000.5, until=1700000001.0)),
    (b'{"max_bytes": 1000, "filter": "udp and port 5353", "credit": 3}',
     query.Request(max_bytes=1000, filter="udp and port 5353", credit=3)),
    (b'{"filter": "  "}', query.Request()),
])
def test_valid_requests(body, expect):
    assert query.parse_request(body) == expect


@pytest.mark.parametrize("body,words", [
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1]", "JSON object"),
    (b'"x"', "JSON object"),
    (b'{"lats": 3}', "unknown request field"),
    (b'{"version": 2}', "version 2"),
    (b'{"version": true}', "version True"),
    (b'{"last": 0}', "last"),
    (b'{"last": -5}', "last"),
    (b'{"last": "30s"}', "last must be a number"),
    (b'{"last": true}', "last must be a number"),
    (b'{"last": NaN}', "not valid JSON"),
    (b'{"last": Infinity}', "not valid JSON"),
    (b'{"since": 1e400}', "since must be a number"),
    (b'{"since": -1}', "since"),
    (b'{"until": 5e9}', "until"),
    (b'{"since": 20, "until": 10}', "not before until"),
    (b'{"since": 10, "until": 10}', "not before until"),
    (b'{"last": 5, "since": 10}', "cannot be combined"),
    (b'{"max_bytes": 23}', "max_bytes"),
    (b'{"max_bytes": 100.5}', "whole number"),
    (b'{"filter": 5}', "filter must be a string"),
    (b'{"filter": "' + b"x" * 2100 + b'"}', "longer than"),
    (b'{"credit": 0}', "credit"),
    (b'{"credit": 65}', "credit"),
    (b"[" * 3000 + b"]" * 3000, "limit"),
    (b"[" * 2000 + b"]" * 2000, "not valid JSON"),  # nesting deeper than the parser goes
])
def test_invalid_requests_say_why(body, words):
    with pytest.raises(query.RequestError) as e:
        query.parse_request(body)
    assert words in str(e.value)


def test_request_round_trip():
    req = query.Request(since=1.5, until=2.5, max_bytes=100, filter="ip6", credit=2)
    assert query.parse_request(req.encode()) == req
    assert json.loads(query.Request().encode()) == {"version": 1}


def test_window_is_relative_to_the_receivers_clock():
    assert query.Request(last=30).window_us(1000.0) == (970_000_000, None)
    assert query.Request(since=1.5, until=2).window_us(99.0) == (1_500_000, 2_000_000)
    assert query.Request().window_us(5.0) == (None, None)


@pytest.mark.parametrize("text,value", [("30s", 30.0), ("5m", 300.0), ("2h", 7200.0),
                                        ("1d", 86400.0), ("250ms", 0.25), ("1.5", 1.5),
                                        (".5s", 0.5)])
def test_duration(text, value):
    assert query.duration(text) == value


@pytest.mark.parametrize("text", ["", "s", "-3s", "0", "3 weeks", "1e3", "99999d"])
def test_bad_duration(text):
    with pytest.raises(argparse.ArgumentTypeError):
        query.duration(text)


def test_timestamp_forms():
    assert query.timestamp("1700000000.25") == 1700000000.25
    assert query.timestamp("2024-05-01T12:00:00Z") == datetime(
        2024, 5, 1, 12, tzinfo=UTC).timestamp()
    assert query.timestamp("2024-05-01 14:00:00.5+02:00") == datetime(
        2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC).timestamp()
    naive = datetime(2024, 5, 1, 12, 0, 0)
    assert query.timestamp("2024-05-01T12:00:00") == naive.timestamp()  # local time


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01T00:00:00", "-5", "1e20", "nan"])
def test_bad_timestamp(text):
    with pytest.raises(argparse.ArgumentTypeError):
        query.timestamp(text)


@pytest.mark.parametrize("text,value", [("1000", 1000), ("64K", 65536), ("10M", 10 << 20),
                                        ("1g", 1 << 30), ("2MiB", 2 << 20), ("24", 24)])
def test_size(text, value):
    assert query.size(text) == value


@pytest.mark.parametrize("text", ["", "10X", "-1", "1.5M", "23"])
def test_bad_size(text):
    with pytest.raises(argparse.ArgumentTypeError):
        query.size(text)


@pytest.mark.parametrize("text,endpoint", [("5600", "tcp://127.0.0.1:5600"),
                                           ("tcp://*:5600", "tcp://*:5600"),
                                           ("ipc:///run/q.sock", "ipc:///run/q.sock")])
def test_buffer_endpoint(text, endpoint):
    assert query.buffer_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["0", "70000", "localhost:5600", "http://x"])
def test_bad_buffer_endpoint(text):
    with pytest.raises(argparse.ArgumentTypeError):
        query.buffer_endpoint(text)


def _snapshot(n=3000, size=900):
    r = ring.Ring(64 << 20)
    recs = [pcap.record(1, i, b"\x45" + bytes(size)) for i in range(n)]
    for i in range(0, n, 100):
        r.append(memoryview(b"".join(recs[i : i + 100])), len(recs[i : i + 100]))
    return r.snapshot(), recs


def test_transfer_respects_credit_and_ends():
    snap, recs = _snapshot()
    t = query.Transfer(b"id", ring.Selection(snap), credit=2)
    assert t.peek() is None  # planning first
    t.plan()
    kinds, body = [], bytearray()
    while not t.done:
        msg = t.peek()
        if msg is None:
            assert t.credit == 0
            t.grant(1)
            continue
        kinds.append(msg[0])
        if msg[0] == query.MSG_DATA:
            body += msg[1]
        elif msg[0] == query.MSG_HEADER:
            header = json.loads(msg[1])
        t.sent()
    assert kinds[0] == query.MSG_HEADER and kinds[-1] == query.MSG_END
    assert set(kinds[1:-1]) == {query.MSG_DATA} and len(kinds) > 4
    assert bytes(body) == pcap.GLOBAL_HEADER_BYTES + b"".join(recs)
    assert header["records"] == 3000 and header["bytes"] == len(body)
    assert header["buffer"]["records"] == 3000


def test_transfer_keeps_an_unsent_message():
    snap, _ = _snapshot(10)
    t = query.Transfer(b"id", ring.Selection(snap), credit=1)
    t.plan()
    first = t.peek()
    assert t.peek() is first  # not sent yet (full queue): offered again
    t.sent()
    assert t.peek()[1] == pcap.GLOBAL_HEADER_BYTES


def test_credit_is_capped():
    snap, _ = _snapshot(1)
    t = query.Transfer(b"id", ring.Selection(snap), credit=1)
    t.grant(10**6)
    assert t.credit == query.MAX_CREDIT


def test_client_import_chain_needs_no_libpcap():
    """The query image installs no libpcap: the client must not import the native modules."""
    import subprocess
    import sys
    code = ("import sys, nflog_pipe.query.client, nflog_pipe.query; "
            "print(sorted(m for m in sys.modules if m.startswith('nflog_pipe.') and "
            "m.split('.')[-1] in ('_bpf', 'bpf', '_records', '_nflog', 'ring')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
