"""A broken network link for tests: PULL frames on SRC, PUSH them to DST,
silently losing the frames whose sequence number is in DROP (comma list),
without renumbering anything, as a link that loses messages would.  On
SIGTERM prints JSON: frames and packets forwarded and lost.

    lossy_forwarder.py SRC DST DROP
"""

import json
import signal
import struct
import sys

import zmq

stop = False


def main() -> None:
    src, dst, drop = sys.argv[1], sys.argv[2], {int(x) for x in sys.argv[3].split(",")}
    signal.signal(signal.SIGTERM, lambda *a: globals().update(stop=True))
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind(src)
    push.connect(dst)
    push.linger = 2000
    stats = {"frames_forwarded": 0, "packets_forwarded": 0, "frames_lost": 0, "packets_lost": 0}
    while not stop:
        if not pull.poll(100):
            continue
        msg = pull.recv()
        count, seq = struct.unpack_from("<IQ", msg, 12)
        if seq in drop:
            stats["frames_lost"] += 1
            stats["packets_lost"] += count
        else:
            push.send(msg)
            stats["frames_forwarded"] += 1
            stats["packets_forwarded"] += count
    print(json.dumps(stats), flush=True)
    pull.close(0)
    push.close()
    ctx.term()


if __name__ == "__main__":
    main()
