"""A FIFO reader for the restart tests: every byte it takes from the pipe is
in its output file, even if it is killed with SIGKILL at any moment
(``splice(2)`` moves pipe pages into the file; nothing sits in a user buffer).

    fiforeader.py FIFO SESSIONS_JSON

SESSIONS_JSON is a list of sessions run one after the other, each
``{"out": PATH, "limit": BYTES, "rate": BYTES_PER_S, "seconds": S, "end": END,
"gap": S}``: open the FIFO (blocking, like an IDS), copy at most ``limit``
bytes (0: no limit) at most at ``rate`` (0: as fast as it comes) for at most
``seconds``, then ``end``: ``close`` (close, wait ``gap``, next session: 0 is
an immediate reopen), ``eof`` (read until the writer closes, within
``seconds``) or ``hang`` (print "hanging" and wait to be killed).  Prints
"opened N" when session N has its pipe.  Bounded: every wait has a deadline.
"""

import json
import os
import select
import signal
import sys
import time


def session(fifo: str, s: dict, n: int) -> None:
    signal.alarm(60)  # an open() that never finds a writer
    fd = os.open(fifo, os.O_RDONLY)
    signal.alarm(0)
    print(f"opened {n}", flush=True)
    out = os.open(s["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    limit = s.get("limit", 0) or (1 << 62)
    rate = s.get("rate", 0)
    started = time.monotonic()
    deadline = started + s.get("seconds", 10)
    got = 0
    while got < limit:
        now = time.monotonic()
        if now >= deadline:
            break
        if rate and got > (now - started) * rate:
            time.sleep(min(0.01, deadline - now))
            continue
        r, _, _ = select.select([fd], [], [], min(0.05, deadline - now))
        if not r:
            continue
        want = min(1 << 16, limit - got, max(1, int(rate * 0.01)) if rate else 1 << 16)
        try:
            k = os.splice(fd, out, want, flags=os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            continue
        if k == 0:
            break  # the writer closed
        got += k
    os.close(out)
    if s.get("end") == "hang":
        print("hanging", flush=True)
        time.sleep(60)
    os.close(fd)


def main() -> None:
    fifo, sessions = sys.argv[1], json.loads(sys.argv[2])
    for n, s in enumerate(sessions):
        session(fifo, s, n)
        if s.get("gap"):
            time.sleep(s["gap"])
    print("done", flush=True)


if __name__ == "__main__":
    main()
