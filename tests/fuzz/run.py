"""Run fuzz targets with hypothesis, and replay the regression corpus.

    .venv/bin/python -m fuzz.run [--examples N] [--no-replay] [TARGET ...]   (from tests/)

CI runs this through tests/fuzz/test_fuzz.py; targets that must not reach the
network (``isolate``) are run in a new network namespace (``unshare -n``).
A failing input is saved to ``corpus/<target>/crash-<sha1>`` and printed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback

from hypothesis import HealthCheck, Phase, given, settings

from . import targets  # noqa: F401  (registers every target)
from .harness import TARGETS, Target, save_input

#: seconds one input may take before it counts as a hang
HANG = 30


def _hang(signum, frame):
    raise TimeoutError(f"input still running after {HANG} s (a hang)")


class TargetFailed(AssertionError):
    def __init__(self, target: str, data: bytes, cause: BaseException, saved: str):
        super().__init__(f"fuzz target {target} failed on {len(data)} bytes "
                         f"(kept as {saved}): {type(cause).__name__}: {cause}")
        self.data = data


def run_hypothesis(t: Target, examples: int) -> int:
    """Feed ``examples`` generated inputs to ``t``; returns the calls made."""
    calls = 0
    last_failure: list[bytes] = []
    signal.signal(signal.SIGALRM, _hang)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.generate, Phase.shrink], print_blob=True)
    @given(t.strategy)
    def prop(data: bytes) -> None:
        nonlocal calls
        calls += 1
        signal.alarm(HANG)
        try:
            t.fn(data)
        except BaseException:
            last_failure[:] = [data]
            raise
        finally:
            signal.alarm(0)

    try:
        prop()
    except BaseException as e:
        if not last_failure:
            raise
        data = last_failure[0]  # hypothesis re-runs the shrunk example last
        raise TargetFailed(t.name, data, e, save_input(t.name, data).name) from e
    return calls


def replay(t: Target) -> int:
    """Every input of the target's regression corpus; returns how many."""
    files = t.corpus_files()
    signal.signal(signal.SIGALRM, _hang)
    for p in files:
        signal.alarm(HANG)
        try:
            t.fn(p.read_bytes())
        except BaseException as e:
            raise AssertionError(f"{t.name}: corpus input {p.name} fails: "
                                 f"{type(e).__name__}: {e}") from e
        finally:
            signal.alarm(0)
    return len(files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help="default: all")
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--no-replay", action="store_true")
    args = ap.parse_args(argv)
    names = args.targets or list(TARGETS)
    failed = 0
    for name in names:
        t = TARGETS[name]
        started = time.monotonic()
        try:
            replayed = 0 if args.no_replay else replay(t)
            calls = run_hypothesis(t, args.examples) if args.examples else 0
        except AssertionError:
            traceback.print_exc()
            failed += 1
            continue
        print(f"{name}: {replayed} corpus inputs replayed, {calls} generated inputs, "
              f"{time.monotonic() - started:.1f} s, no failure", flush=True)
    targets.close_receiver_sink()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
