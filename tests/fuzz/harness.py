"""Fuzzing harness shared by the CI run (tests/fuzz/test_fuzz.py, hypothesis)
and the long campaign (bench/fuzz.py, atheris).

A *target* is one small function ``fn(data: bytes) -> None`` registered with
``@target(...)`` in ``targets.py``.  It feeds hostile bytes to one parser and
raises (AssertionError or anything else) when a property breaks; a clean
return means the input was handled correctly (accepted or rejected).  Code
under test runs inside ``budget(limit)``, which fails the input when the
Python heap grew by more than ``limit`` bytes at its peak (tracemalloc) or the
process's peak RSS jumped by more than that.

Each target may bring:
- ``strategy``: a hypothesis strategy of inputs (structured, mostly near-valid);
- ``mutator``: an atheris custom mutator ``(data, max_size, seed) -> bytes``;
- ``max_len``: the largest input the campaign generates.

Every input that ever broke a target is kept in ``corpus/<target>/`` and
replayed by CI; hand-made seeds live there too (``seeds.py`` writes them).
"""

from __future__ import annotations

import contextlib
import hashlib
import resource
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

#: heap growth allowed to any parser call on top of its own budget: small
#: objects, interpreter caches, a zlib stream's state and window
SLACK = 1 << 20
#: the same for the process's peak RSS (allocator arenas, page granularity)
RSS_SLACK = 16 << 20


class BudgetExceeded(AssertionError):
    """The code under test allocated more than the harness allows."""


@dataclass
class Target:
    name: str
    fn: Callable[[bytes], None]
    strategy: object = None
    mutator: Callable[[bytes, int, int], bytes] | None = None
    max_len: int = 65536
    doc: str = ""
    #: run only without network (``unshare -n``): the parser may resolve names
    isolate: bool = False

    @property
    def corpus(self) -> Path:
        return CORPUS / self.name

    def corpus_files(self) -> list[Path]:
        d = self.corpus
        return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")) \
            if d.is_dir() else []


TARGETS: dict[str, Target] = {}


def target(name: str, strategy=None, mutator=None, max_len: int = 65536,
           isolate: bool = False):
    """Register ``fn`` as the fuzz target ``name``."""

    def deco(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        if name in TARGETS:
            raise ValueError(f"fuzz target {name!r} registered twice")
        TARGETS[name] = Target(name, fn, strategy, mutator, max_len,
                               (fn.__doc__ or "").strip().split("\n")[0], isolate)
        return fn

    return deco


@contextlib.contextmanager
def budget(limit: int, what: str = "parser"):
    """Fail when the block's heap grows by more than ``limit`` + SLACK bytes at
    its peak (tracemalloc, traced only inside the block: the harness's own
    work, mutators and checks run at full speed), or when it raises the
    process's peak RSS by more than ``limit`` + RSS_SLACK (allocations of C
    libraries that tracemalloc does not see)."""
    if tracemalloc.is_tracing():
        raise RuntimeError("budget() blocks do not nest")
    rss = _maxrss()
    tracemalloc.start(1)
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if peak > limit + SLACK:
            raise BudgetExceeded(
                f"{what} allocated {peak} bytes at its peak, budget {limit} + {SLACK} slack")
        grew = _maxrss() - rss
        if grew > limit + RSS_SLACK:
            raise BudgetExceeded(
                f"{what} raised the peak RSS by {grew} bytes, budget {limit} + {RSS_SLACK}")


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def input_name(data: bytes, prefix: str = "crash") -> str:
    return f"{prefix}-{hashlib.sha1(data).hexdigest()}"


def save_input(target_name: str, data: bytes, prefix: str = "crash") -> Path:
    """Keep an input in the regression corpus (idempotent)."""
    d = CORPUS / target_name
    d.mkdir(parents=True, exist_ok=True)
    p = d / input_name(data, prefix)
    if not p.exists():
        p.write_bytes(data)
    return p
