"""Copy stdin to a file at a bounded rate (a slow consumer of a query).

    slowpipe.py OUT BYTES_PER_SECOND
"""

import sys
import time


def main() -> None:
    out, rate = sys.argv[1], float(sys.argv[2])
    started = time.monotonic()
    total = 0
    with open(out, "wb") as f:
        while chunk := sys.stdin.buffer.read1(64 << 10):
            f.write(chunk)
            total += len(chunk)
            ahead = total / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    print(total)


if __name__ == "__main__":
    main()
