#!/usr/bin/env python3
"""Coverage-guided fuzzing campaign (atheris/libFuzzer) over every target of
tests/fuzz/targets.py.  See docs/fuzzing.md.

    bench/fuzz.py                         # 1 000 000 inputs per target
    bench/fuzz.py --runs 20000 --targets frame
    bench/fuzz.py --worker frame -runs=1000 ...   # one libFuzzer process (internal)

Each target runs in its own process with nflog_pipe instrumented for Python
coverage, the target's structure-aware mutator, tracemalloc budgets on, and
libFuzzer's RSS limit as a backstop.  Inputs that break a target are written
to tests/fuzz/corpus/<target>/crash-<sha1> (the regression corpus CI
replays); the campaign then restarts that target until it has executed its
runs or hit --max-crashes.  The growing working corpus stays in
bench/build/fuzz/<target>/ (not committed).  A summary goes to stdout and to
bench/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
RESULTS = ROOT / "bench" / "results" / "fuzz.json"
WORK = ROOT / "bench" / "build" / "fuzz"


def _targets():
    sys.path.insert(0, str(TESTS))
    from fuzz import harness, targets  # noqa: F401  (registers the targets)

    return harness.TARGETS


def worker(name: str, libfuzzer_args: list[str]) -> None:
    """One libFuzzer process for one target (never returns)."""
    import atheris

    sys.path.insert(0, str(TESTS))
    # every nflog_pipe module the targets import gets Python coverage
    with atheris.instrument_imports(include=["nflog_pipe"]):
        from fuzz import harness, mutators, targets  # noqa: F401
    t = harness.TARGETS[name]
    atheris.Setup([sys.argv[0], *libfuzzer_args], t.fn, custom_mutator=t.mutator)
    # atheris.Mutate is rebound when Fuzz() loads libFuzzer: look it up per call
    mutators.set_engine(lambda data, max_size: atheris.Mutate(data, max_size))
    atheris.Fuzz()


_DONE = re.compile(r"^Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"^stat::(\w+):\s*(\d+)")
_PULSE = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")


def run_target(t, runs: int, max_crashes: int, timeout: float, log) -> dict:
    work = WORK / t.name
    work.mkdir(parents=True, exist_ok=True)
    t.corpus.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in t.corpus_files()}
    res = {"runs": 0, "seconds": 0.0, "crashes": [], "restarts": 0, "cov": 0, "ft": 0,
           "corpus_units": 0, "peak_rss_mb": 0}
    started = time.monotonic()
    while res["runs"] < runs:
        left = runs - res["runs"]
        # isolated targets (name resolution) run without network
        cmd = (["unshare", "-n"] if t.isolate else []) + [
               sys.executable, str(Path(__file__).resolve()), "--worker", t.name,
               f"-runs={left}", f"-max_len={t.max_len}", "-len_control=0",
               f"-artifact_prefix={t.corpus}/", "-rss_limit_mb=2048", "-timeout=60",
               f"-max_total_time={int(timeout)}", "-print_final_stats=1", "-print_pcs=0",
               str(work), str(t.corpus)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout + 120, cwd=ROOT)
        out = proc.stderr.splitlines() + proc.stdout.splitlines()
        log.write(f"## {t.name} rc={proc.returncode} {' '.join(cmd)}\n")
        log.write("\n".join(out[-60:]) + "\n")
        log.flush()
        executed = None
        for line in out:
            if m := _STAT.match(line):
                if m.group(1) == "number_of_executed_units":
                    executed = int(m.group(2))
                elif m.group(1) == "peak_rss_mb":
                    res["peak_rss_mb"] = max(res["peak_rss_mb"], int(m.group(2)))
            elif m := _DONE.match(line):
                executed = executed or int(m.group(1))
            elif m := _PULSE.match(line):
                res["cov"], res["ft"], res["corpus_units"] = (int(m.group(2)), int(m.group(3)),
                                                             int(m.group(4)))
        if executed is None:
            raise RuntimeError(f"{t.name}: libFuzzer printed no statistics (rc "
                               f"{proc.returncode}):\n" + "\n".join(out[-30:]))
        res["runs"] += executed
        if proc.returncode == 0:
            break
        new = sorted({p.name for p in t.corpus_files()} - before - set(res["crashes"]))
        res["crashes"] += new
        res["restarts"] += 1
        print(f"  {t.name}: input broke the target after {res['runs']} runs: "
              f"{', '.join(new) or '(no artifact)'}", flush=True)
        if not new or len(res["crashes"]) >= max_crashes:
            break
    res["seconds"] = round(time.monotonic() - started, 1)
    res["execs_per_s"] = round(res["runs"] / max(res["seconds"], 0.1))
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--targets", default="", help="comma list (default: all)")
    ap.add_argument("--max-crashes", type=int, default=5,
                    help="stop a target after this many distinct breaking inputs")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per target")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="JSON summary ('' for none)")
    args = ap.parse_args(argv)
    all_targets = _targets()
    names = [n for n in args.targets.split(",") if n] or list(all_targets)
    unknown = set(names) - set(all_targets)
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}; known: {sorted(all_targets)}")
    import atheris  # noqa: F401  (fail here, not in every worker)

    WORK.mkdir(parents=True, exist_ok=True)
    summary = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
               "engine": "atheris " + _version("atheris"), "runs_per_target": args.runs,
               "targets": {}}
    if str(args.results) and args.results.exists() and set(names) != set(all_targets):
        # a partial campaign updates the targets it ran, keeps the others
        try:
            summary["targets"] = json.loads(args.results.read_text()).get("targets", {})
        except ValueError:
            pass
    with open(WORK / f"campaign-{'-'.join(names)}.log", "w") as log:
        for name in names:
            print(f"fuzzing {name}: {args.runs} inputs ...", flush=True)
            r = run_target(all_targets[name], args.runs, args.max_crashes, args.timeout, log)
            r["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            summary["targets"][name] = r
            print(f"  {name}: {r['runs']} inputs in {r['seconds']} s ({r['execs_per_s']}/s), "
                  f"cov {r['cov']} ft {r['ft']}, corpus {r['corpus_units']}, "
                  f"peak RSS {r['peak_rss_mb']} MB, {len(r['crashes'])} breaking inputs",
                  flush=True)
    total = sum(r["runs"] for r in summary["targets"].values())
    crashes = sum(len(summary["targets"][n]["crashes"]) for n in names)
    summary["total_runs"] = total
    summary["total_seconds"] = round(sum(r["seconds"] for r in summary["targets"].values()), 1)
    summary["result"] = "no failures" if not crashes else f"{crashes} breaking inputs"
    print(f"total: {total} inputs in {summary['total_seconds']} s, {summary['result']}")
    if str(args.results):
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if crashes else 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "?"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
