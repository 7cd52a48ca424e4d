"""Options, declared once: argparse and the environment are two views of them.

Each option has a name, type, default, help and an environment variable
(``NFLOG_PIPE_<NAME>``).  The command line wins over the environment, the
environment over the default; ``--help`` names the variable and the default.
A bad value from either source is a clear start-up error.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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
    #: a positional argument that takes one or more values (a list); its
    #: environment variable holds them separated by spaces
    many: bool = False
    #: an option of the original tool that cannot keep its meaning: using it
    #: (or its variable) is a one-line error with this text, naming the
    #: replacement (docs/migration.md)
    refused: str | None = None
    #: called with the parsed arguments when the option was given, to
    #: translate an original-style value (``-i 50/60``) into today's options
    finish: Callable[[argparse.Namespace], None] | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


# --- value types (argparse reports their messages) -------------------------
#
# Every option's type checks its value completely when it is parsed: numbers
# are finite and within the option's range (``range`` on the type, shown in
# --help), endpoints have a port from 1 to 65535, names and paths are not
# empty.  A value that passes never makes a daemon fail later with a
# traceback (tests/unit/test_option_fuzz.py feeds hostile values to every
# option of every command).

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _bad(message: str):
    raise argparse.ArgumentTypeError(message)


def _ascii_int(text: str) -> int | None:
    """An unsigned decimal in ASCII digits, at most 20 of them (``int()``
    accepts other scripts' digits and rejects very long numbers with an
    error of its own)."""
    t = text.strip()
    return int(t) if t.isascii() and t.isdigit() and len(t) <= 20 else None


def _fmt(v) -> str:
    return f"{v:.12g}" if isinstance(v, float) else str(v)


def number(conv: type, lo, hi, *, above: bool = False, or_zero: bool = False,
           what: str | None = None):
    """A parser for a finite ``int`` or ``float`` from ``lo`` to ``hi``
    (``above``: strictly greater than ``lo``; ``or_zero``: 0 too, which
    means "off" for the option)."""
    what = what or ("whole number" if conv is int else "number")
    rng = f"{'0, or ' if or_zero else ''}{'above ' if above else ''}{_fmt(lo)} to {_fmt(hi)}"

    def parse(text: str):
        if conv is int:
            t = text.strip()
            v = int(t) if re.fullmatch(r"[+-]?[0-9]{1,20}", t) else None
        else:
            try:
                v = float(text) if len(text) <= 64 and text.isascii() else None
            except ValueError:
                v = None
        if v is None or not math.isfinite(v):
            _bad(f"{text!r} is not a {what} ({rng})")
        if (v < lo or v > hi or (above and v == lo)) and not (or_zero and v == 0):
            _bad(f"{text!r} is out of range ({rng})")
        return v
    parse.range = rng
    parse.lo, parse.hi = (conv(0) if or_zero else lo), hi
    return parse


# the common kinds; each option names its own range
def count(lo: int = 1, hi: int = 1_000_000):
    return number(int, lo, hi)


def seconds(hi: float = 86400.0, lo: float = 0.001, zero: bool = False):
    """Seconds from ``lo`` to ``hi`` (``zero``: or 0, meaning off/never)."""
    return number(float, lo, hi, or_zero=zero, what="number of seconds")


def mib(hi: float, lo: float = 1 / 64, zero: bool = False):
    """A size or rate in MiB, from ``lo`` (16 KiB) to ``hi`` (``zero``: or 0)."""
    return number(float, lo, hi, or_zero=zero, what="size in MiB")


positive_int = count(1, 2**31 - 1)
nonneg_float = number(float, 0.0, 1e9)
positive_float = number(float, 0.0, 1e9, above=True)
fraction = number(float, 0.0, 1.0, above=True)


def auto_or(parse):
    def parse_auto(text: str):
        return "auto" if text.strip().lower() == "auto" else parse(text)
    parse_auto.range = f"auto, or {parse.range}"
    return parse_auto


auto_or_positive_int = auto_or(positive_int)


def text(max_bytes: int, what: str, empty: bool = False):
    """A name: UTF-8, no control characters, at most ``max_bytes`` bytes."""
    def parse(value: str) -> str:
        if not value and not empty:
            _bad(f"empty {what}")
        try:
            n = len(value.encode())
        except UnicodeEncodeError:
            _bad(f"{value!r}: the {what} is not valid UTF-8")
        if _CONTROL.search(value):
            _bad(f"{value!r}: the {what} contains control characters")
        if n > max_bytes:
            _bad(f"{value[:40]!r}...: the {what} is longer than {max_bytes} bytes")
        return value
    return parse


def path(value: str) -> str:
    """A file or directory name: not empty, no NUL, at most 4096 bytes."""
    if not value:
        _bad("empty path")
    if "\0" in value or len(os.fsencode(value)) > 4096:
        _bad(f"{value[:40]!r} is not a usable path")
    return value


def group_list(text: str) -> list[int]:
    """NFLOG groups: a comma list of numbers 0..65535, e.g. ``0,1,5``."""
    groups = []
    for part in text.split(","):
        g = _ascii_int(part)
        if g is None or g > 65535:
            _bad(f"{text!r}: NFLOG groups are a comma list of numbers from 0 to 65535")
        if g not in groups:
            groups.append(g)
    if not groups or len(groups) > 32:
        _bad(f"{text!r}: give between 1 and 32 NFLOG groups")
    return groups


_TRANSPORTS = ("tcp", "ipc", "inproc", "pgm", "epgm", "vmci")
_HOST_PORT = ("tcp", "pgm", "epgm", "vmci")


def split_host_port(text: str, address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` -> (host, port); the host is not empty."""
    host, sep, p = address.rpartition(":")
    if not sep or not host or host in ("[]",):
        _bad(f"{text!r} needs HOST:PORT (e.g. tcp://ids.example:1234, tcp://[2001:db8::7]:1234)")
    if host.startswith("[") != host.endswith("]"):
        _bad(f"{text!r}: an IPv6 address goes in brackets, e.g. [2001:db8::7]:1234")
    pn = _ascii_int(p)
    if pn is None or not 1 <= pn <= 65535:
        _bad(f"{text!r}: the port must be a number from 1 to 65535")
    return host, pn


def endpoint(value: str) -> str:
    """A ZeroMQ endpoint: transport://address, with a port from 1 to 65535
    for the network transports."""
    transport, sep, address = value.partition("://")
    if not sep or not address or transport not in _TRANSPORTS:
        _bad(f"{value!r} is not a ZeroMQ endpoint (e.g. tcp://host:1234, ipc:///run/x.sock)")
    if _CONTROL.search(value) or " " in value or len(value) > 1024 or not value.isascii() \
            and transport in _HOST_PORT:
        _bad(f"{value!r} is not a ZeroMQ endpoint (spaces, control characters or too long)")
    if transport in _HOST_PORT:
        split_host_port(value, address)
    return value


def statsd_address(text: str) -> tuple[str, int]:
    host, sep, p = text.rpartition(":")
    if not sep or "]" in p:
        host, p = text, "8125"
    host = host.strip()
    if not host or host == "[]" or _CONTROL.search(host) or " " in host:
        _bad(f"{text!r}: statsd address is host[:port]")
    if host.startswith("[") != host.endswith("]"):
        _bad(f"{text!r}: statsd address is host[:port] ([v6]:port for an IPv6 address)")
    pn = _ascii_int(p)
    if pn is None or not 0 < pn < 65536:
        _bad(f"{text!r}: statsd address is host[:port], port from 1 to 65535")
    return host.strip("[]"), pn


def user_spec(text: str) -> str:
    """``USER[:GROUP]``: names that exist on this host, or numeric ids."""
    from . import privs

    user, sep, group = text.partition(":")
    if not user:
        _bad(f"{text!r}: empty user name")
    if sep and not group:
        _bad(f"{text!r}: empty group name")
    try:
        privs.resolve_user(text)
    except privs.PrivilegeError as e:
        _bad(str(e))
    return text


def statsd_prefix(value: str) -> str:
    """Metric names may not contain what the statsd line format uses."""
    value = text(200, "metrics prefix", empty=True)(value)
    if re.search(r"[\s:|@]", value):
        _bad(f"{value!r}: a metrics prefix cannot contain spaces, ':', '|' or '@'")
    return value


@dataclass(frozen=True)
class OriginalSampling:
    """``-i COUNT[/INTERVAL]`` of the original tool: a counter was sent, with
    its exact accumulated value, once COUNT updates and INTERVAL seconds had
    (roughly) both passed since the last send: under load within
    milliseconds, with light traffic after about a minute (``50/60``).
    Counters are now aggregated in memory and flushed with exact values every
    ``--statsd-interval`` (1 s), at least as often as the original under
    load: the value is accepted and means a sample rate of 1.0."""
    count: float
    interval: float | None


_interval = seconds(3600.0, lo=0.01)


def statsd_sampling(text: str) -> float | OriginalSampling:
    """A sample rate above 0 and up to 1, or the original ``COUNT[/INTERVAL]``
    (COUNT above 1, e.g. its default ``50/60``)."""
    count, sep, interval = text.partition("/")
    if not sep:
        try:
            v = float(count) if len(count) <= 64 and count.isascii() else None
        except ValueError:
            v = None
        if v is not None and math.isfinite(v) and 1 < v <= 1e9:
            return OriginalSampling(v, None)
        return fraction(text)
    c = number(float, 0.0, 1e9, above=True, what="count")(count)
    try:
        i = _interval(interval)
    except argparse.ArgumentTypeError as e:
        _bad(f"{text!r}: the interval of COUNT/INTERVAL: {e}")
    return OriginalSampling(c, i)


statsd_sampling.range = "a rate above 0 to 1, or the original COUNT[/INTERVAL]"


def _finish_sampling(args: argparse.Namespace) -> None:
    v = args.statsd_sampling
    if isinstance(v, OriginalSampling):
        args.statsd_sampling = 1.0


#: -t/--statsd-type: today's names, and the original's type suffixes that keep
#: their meaning (it always sent the increments since the last send)
STATSD_TYPES = {"counter": "counter", "gauge": "gauge", "c": "counter", "g": "g", "ms": "ms"}


def statsd_type(text: str) -> str:
    if text in STATSD_TYPES:
        return STATSD_TYPES[text]
    if text == "d":
        _bad("'d' (the original's default) sent 'name:N|d' lines, which statsd rejects as bad "
             "lines: use -t counter (the same increments, as statsd counters)")
    _bad(f"{text!r}: use counter (increments), gauge (running totals), or the original's "
         "suffixes c (= counter), g (increments as gauges), ms (increments as timers)")


statsd_type.range = "counter, gauge, or the original's c, g, ms"


# --- options every daemon shares -------------------------------------------

LOG_OPTIONS = [
    Option("debug", ("--debug",), flag=True, default=False, help="verbose logging"),
    Option("log_format", ("--log-format",), default="auto", choices=("auto", "json", "text"),
           help="log record format; auto: text on a terminal, JSON otherwise"),
    Option("stats_interval", ("--stats-interval",), type=seconds(86400.0, lo=0.1, zero=True), default=60.0,
           metavar="S",
           help="log a summary record with counters and rates every S seconds (0: only at exit)"),
    Option("health_file", ("--health-file",), type=path, metavar="PATH",
           help="touch PATH every second while the main loop runs (liveness probe)"),
]

STATSD_OPTIONS = [
    Option("statsd", ("-m", "--statsd"), type=statsd_address, metavar="HOST[:PORT]",
           help="send metrics to this statsd server (UDP, port 8125 by default); off if unset"),
    Option("statsd_metrics_prefix", ("-n", "--statsd-metrics-prefix"),
           type=statsd_prefix, default="{host}.nflog_pipe.", metavar="PREFIX",
           help="prefix of every metric name; {host} is replaced by the short host name"),
    Option("statsd_sampling", ("-i", "--statsd-sampling"), type=statsd_sampling, default=1.0,
           metavar="RATE", finish=_finish_sampling,
           help="accepted for compatibility, changes nothing: counters are aggregated in memory "
           "and always sent exact, every --statsd-interval (a rate from 0 to 1, or the "
           "original's COUNT[/INTERVAL], e.g. 50/60)"),
    Option("statsd_type", ("-t", "--statsd-type"), type=statsd_type, default="counter",
           metavar="TYPE",
           help="send packet/byte totals as statsd counters (deltas) or gauges (running totals); "
           "the original's type suffixes: c (counter), g (deltas as gauges), ms (deltas as "
           "timers)"),
    Option("statsd_interval", ("--statsd-interval",), type=seconds(3600.0, lo=0.01), default=1.0,
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
    if opt.many:
        return [opt.type(v) for v in raw.split()] or None
    value = opt.type(raw)
    if opt.choices and value not in opt.choices:
        raise ValueError(f"{opt.env}={raw!r}: expected one of {', '.join(opt.choices)}")
    return value


class _Refuse(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.help_text}")


class Parser(argparse.ArgumentParser):
    """argparse, with every error on one line: ``COMMAND: error: ...``, exit
    status 2 (the usage is one ``--help`` away)."""

    def error(self, message: str):
        one_line = message.replace("\r", "\\r").replace("\n", "\\n")
        self.exit(2, f"{self.prog}: error: {one_line} (see --help)\n")


def build_parser(prog: str, description: str, options: Iterable[Option],
                 environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    environ = os.environ if environ is None else environ
    parser = Parser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(_required=[])
    for opt in options:
        if opt.refused:
            if opt.env in environ:
                parser.error(f"{opt.env}: {opt.refused}")
            action = parser.add_argument(*opt.flags, dest=opt.name, action=_Refuse, nargs="?",
                                         metavar=opt.metavar, default=None,
                                         help=f"from the original tool, refused: {opt.refused}")
            action.help_text = opt.refused
            continue
        default = opt.default
        if opt.env in environ:
            try:
                default = _env_value(opt, environ[opt.env])
            except (ValueError, argparse.ArgumentTypeError) as e:
                msg = str(e) if str(e).startswith(opt.env) else f"{opt.env}: {e}"
                parser.error(msg)
        shown = "unset" if opt.default is None else opt.default
        rng = getattr(opt.type, "range", None)
        help_text = f"{opt.help} [{rng + '; ' if rng else ''}env {opt.env}; default: {shown}]"
        if not opt.flags:
            parser.add_argument(opt.name, metavar=opt.metavar or opt.name.upper(),
                                nargs="*" if opt.many else "?", type=opt.type, default=default,
                                help=help_text)
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
    options = list(options)
    parser = build_parser(prog, description, options, environ)
    args = parser.parse_args(argv)
    for opt in args._required:
        if getattr(args, opt.name) in (None, []):
            parser.error(f"{opt.metavar or opt.name.upper()} is required (argument or {opt.env})")
    del args._required
    for opt in options:
        if opt.finish is not None and getattr(args, opt.name, None) is not None:
            opt.finish(args)
    args.parser = parser
    return args


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]
