"""The counter registry (src/nflog_pipe/counters.py): docs/metrics.md is its table, and
every counter name the code uses is registered."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from nflog_pipe import counters

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "nflog_pipe"


def test_docs_metrics_is_the_registry_table():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    assert counters.markdown() in doc, "docs/metrics.md: paste `python -m nflog_pipe.counters`"
    assert counters.markdown(gauges=True) in doc


def test_dropped_holds_packets_only():
    for m in counters.METRICS:
        if m.name.startswith("dropped.") and m.name != "dropped.tap_slow":  # clients, see docs
            assert m.packets, m
        if m.name.startswith("frames_dropped."):
            assert m.unit == "frames" and "dropped." + m.name.split(".", 1)[1] in counters.COUNTERS
        if m.name.startswith("bytes_dropped."):
            assert m.unit == "bytes"


def _names_in_code() -> dict[str, str]:
    """Counter names the code writes: c[...], counters[...], .add(...), .setdefault(...),
    the tuples of ``for k in (...): x.setdefault(k, 0)``, f"query.{...}" expanded."""
    found: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            keys = []
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Load):
                v = node.value
                target = v.attr if isinstance(v, ast.Attribute) else getattr(v, "id", "")
                if target in ("c", "counters") and isinstance(node.slice, ast.Constant):
                    keys.append(node.slice.value)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("add", "setdefault", "init") and node.args:
                v = node.func.value
                target = v.attr if isinstance(v, ast.Attribute) else getattr(v, "id", "")
                if target in ("c", "counters"):
                    keys += [a.value for a in node.args if isinstance(a, ast.Constant)
                             and isinstance(a.value, str)]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id == "init_counters":
                keys += [a.value for a in node.args if isinstance(a, ast.Constant)]
            elif isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple | ast.List) and \
                    "setdefault" in ast.unparse(node.body[0]):
                keys += [e.value for e in node.iter.elts if isinstance(e, ast.Constant)]
            for k in keys:
                if isinstance(k, str):
                    found[k] = f"{path.relative_to(ROOT)}:{node.lineno}"
    # the query server's f"query.{counter}"
    text = (SRC / "query" / "server.py").read_text()
    for k in re.findall(r'_forget\([^,]+, "(\w+)"', text):
        found[f"query.{k}"] = "src/nflog_pipe/query/server.py"
    return found


def test_every_counter_in_the_code_is_registered():
    found = _names_in_code()
    assert len(found) > 40  # the scan sees the code
    unknown = {k: where for k, where in found.items() if k not in counters.COUNTERS}
    assert not unknown, f"register these in src/nflog_pipe/counters.py: {unknown}"


def test_init_refuses_an_unregistered_name():
    c = {}
    counters.init(c, "packets_in")
    assert c == {"packets_in": 0}
    try:
        counters.init(c, "dropped.nonsense")
    except KeyError:
        pass
    else:
        raise AssertionError("an unregistered counter was accepted")
