"""Options, declared once: argparse and the environment are two views of them.

Each option has a name, type, default, help and an environment variable
(``NFLOG_PIPE_<NAME>``).  The command line wins over the environment, the
environment over the default; ``--help`` names the variable and the default.
A bad value from either source is a clear start-up error.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "NFLOG_PIPE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Option:
    name: str
    flags: tuple[str, ...] = ()  # empty: positional argument
    type: Callable[[str], Any] = str
    default: Any = None
    help: str = ""
    metavar: str | None = None
    flag: bool = False  # a switch (store_true)
    choices: tuple[str, ...] | None = None
    required: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


# --- value types (argparse reports their messages) -------------------------

def _num(conv, lo=None, hi=None, what="number"):
    def parse(text: str):
        try:
            v = conv(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if lo is not None and v < lo or hi is not None and v > hi:
            rng = f"from {lo}" + (f" to {hi}" if hi is not None else " up")
            raise argparse.ArgumentTypeError(f"{text} is out of range ({rng})")
        return v
    return parse


def nonneg_int(text: str) -> int:
    return _num(int, 0, what="whole number")(text)


def positive_int(text: str) -> int:
    return _num(int, 1, what="whole number")(text)


def auto_or_positive_int(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def nonneg_float(text: str) -> float:
    return _num(float, 0.0)(text)


def positive_float(text: str) -> float:
    v = _num(float, 0.0)(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return v


def fraction(text: str) -> float:
    v = _num(float, 0.0, 1.0)(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return v


def group_list(text: str) -> list[int]:
    """NFLOG groups: a comma list of numbers 0..65535, e.g. ``0,1,5``."""
    groups = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) > 65535:
            raise argparse.ArgumentTypeError(
                f"{text!r}: NFLOG groups are a comma list of numbers from 0 to 65535")
        if int(part) not in groups:
            groups.append(int(part))
    if not groups or len(groups) > 32:
        raise argparse.ArgumentTypeError(f"{text!r}: give between 1 and 32 NFLOG groups")
    return groups


def endpoint(text: str) -> str:
    """A ZeroMQ endpoint: transport://address."""
    transport, sep, address = text.partition("://")
    if not sep or not address or transport not in {"tcp", "ipc", "inproc", "pgm", "epgm", "vmci"}:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a ZeroMQ endpoint (e.g. tcp://host:1234, ipc:///run/x.sock)")
    return text


def statsd_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, "8125"
    host = host.strip("[]")
    try:
        p = int(port)
        if not 0 < p < 65536:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: statsd address is host[:port]") from None
    return host, p


# --- options every daemon shares -------------------------------------------

LOG_OPTIONS = [
    Option("debug", ("--debug",), flag=True, default=False, help="verbose logging"),
    Option("log_format", ("--log-format",), default="auto", choices=("auto", "json", "text"),
           help="log record format; auto: text on a terminal, JSON otherwise"),
    Option("stats_interval", ("--stats-interval",), type=nonneg_float, default=60.0, metavar="S",
           help="log a summary record with counters and rates every S seconds (0: only at exit)"),
    Option("health_file", ("--health-file",), metavar="PATH",
           help="touch PATH every second while the main loop runs (liveness probe)"),
]

STATSD_OPTIONS = [
    Option("statsd", ("-m", "--statsd"), type=statsd_address, metavar="HOST[:PORT]",
           help="send metrics to this statsd server (UDP, port 8125 by default); off if unset"),
    Option("statsd_metrics_prefix", ("-n", "--statsd-metrics-prefix"),
           default="{host}.nflog_pipe.", metavar="PREFIX",
           help="prefix of every metric name; {host} is replaced by the short host name"),
    Option("statsd_sampling", ("-i", "--statsd-sampling"), type=fraction, default=1.0,
           metavar="RATE", help="sample rate announced with counter updates (counters are "
           "aggregated in memory, so 1.0 sends exact values)"),
    Option("statsd_type", ("-t", "--statsd-type"), default="counter",
           choices=("counter", "gauge"),
           help="send packet/byte totals as statsd counters (deltas) or gauges (running totals)"),
    Option("statsd_interval", ("--statsd-interval",), type=positive_float, default=1.0,
           metavar="S", help="flush metrics every S seconds (and at exit)"),
]


def _env_value(opt: Option, raw: str) -> Any:
    if opt.flag:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{opt.env}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")
    value = opt.type(raw)
    if opt.choices and value not in opt.choices:
        raise ValueError(f"{opt.env}={raw!r}: expected one of {', '.join(opt.choices)}")
    return value


def build_parser(prog: str, description: str, options: Iterable[Option],
                 environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(_required=[])
    for opt in options:
        default = opt.default
        if opt.env in environ:
            try:
                default = _env_value(opt, environ[opt.env])
            except (ValueError, argparse.ArgumentTypeError) as e:
                msg = str(e) if str(e).startswith(opt.env) else f"{opt.env}: {e}"
                parser.error(msg)
        shown = "unset" if opt.default is None else opt.default
        help_text = f"{opt.help} [env {opt.env}; default: {shown}]"
        if not opt.flags:
            parser.add_argument(opt.name, metavar=opt.metavar or opt.name.upper(), nargs="?",
                                type=opt.type, default=default, help=help_text)
            if opt.required:
                parser.get_default("_required").append(opt)
        elif opt.flag:
            parser.add_argument(*opt.flags, dest=opt.name, action="store_true", default=default,
                                help=help_text)
        else:
            parser.add_argument(*opt.flags, dest=opt.name, type=opt.type, default=default,
                                choices=opt.choices, metavar=opt.metavar, help=help_text)
    return parser


def parse_args(prog: str, description: str, options: Iterable[Option],
               argv: list[str] | None = None,
               environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    parser = build_parser(prog, description, list(options), environ)
    args = parser.parse_args(argv)
    for opt in args._required:
        if getattr(args, opt.name) is None:
            parser.error(f"{opt.metavar or opt.name.upper()} is required (argument or {opt.env})")
    del args._required
    args.parser = parser
    return args


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]
