"""The arithmetic behind dropped.reader_gone: which records of a buffer a
reader that stopped at byte N received whole."""

import pytest

from nflog_pipe import pcap
from nflog_pipe.output import records_within

SIZES = (20, 1, 1400, 60)
AREA = memoryview(b"".join(pcap.record(1, i, b"\x45" + bytes(n - 1)) for i, n in enumerate(SIZES)))
ENDS = [sum(16 + n for n in SIZES[: i + 1]) for i in range(len(SIZES))]  # 36, 53, 1469, 1545


@pytest.mark.parametrize("limit, whole", [
    (0, 0), (15, 0), (16, 0), (35, 0), (36, 1), (37, 1), (52, 1), (53, 2), (1468, 2),
    (1469, 3), (1544, 3), (1545, 4), (10**6, 4)])
def test_records_read_whole(limit, whole):
    n, nbytes = records_within(AREA, limit)
    assert n == whole
    assert nbytes == sum(SIZES[:whole])
    assert ENDS[-1] == len(AREA)
