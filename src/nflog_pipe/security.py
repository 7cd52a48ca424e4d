"""ZeroMQ CURVE for every network socket: the "ironhouse" model.

A server (a socket that binds: receiver, relay inputs, buffer interface)
accepts only clients whose public keys are in an allow-list directory; a
client (sender, relay outputs, query) pins the server's public key.  The ZAP
authenticator is running before any bind, so nothing is ever accepted
unauthenticated by accident.  Without keys the daemons run in plaintext, as
the original did, and say so in a start-up warning; a half configuration is
a start-up error, never a silent fallback.

Key files are ZeroMQ certificates (``nflog-pipe-keygen NAME`` writes
``NAME.key`` and ``NAME.key_secret``).
"""

from __future__ import annotations

import datetime
import logging
import os
import stat
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from . import config
from .config import Option
from .counters import init as init_counters
from .errors import PipeError
from .logs import RateLimited
from .metrics import Counters

log = logging.getLogger(__name__)

SECRET_KEY = Option(
    "curve_secret_key", ("--curve-secret-key",), type=config.path, metavar="FILE",
    help="this daemon's CURVE key pair (a ZeroMQ certificate with its secret key, from "
    "nflog-pipe-keygen); turns on encryption and authentication")
SERVER_KEY = Option(
    "curve_server_key", ("--curve-server-key",), type=config.path, metavar="FILE",
    help="public key of the server this daemon connects to (pinned: any other is refused)")
ALLOW = Option(
    "curve_allow", ("--curve-allow",), type=config.path, metavar="DIR",
    help="directory of the public keys (*.key) of the clients allowed to connect; "
    "re-read on SIGHUP (applies to new connections)")

CLIENT_OPTIONS = [SECRET_KEY, SERVER_KEY]
SERVER_OPTIONS = [SECRET_KEY, ALLOW]
RELAY_OPTIONS = [SECRET_KEY, SERVER_KEY, ALLOW]


class SecurityError(PipeError, ValueError):
    """A key or a combination of options that cannot be used."""


def _load(path: str, need_secret: bool) -> tuple[bytes, bytes | None]:
    p = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as e:
        raise SecurityError(f"cannot read CURVE key {path}: {e}") from None
    if not public:
        raise SecurityError(f"{path} holds no public key")
    if need_secret:
        if not secret:
            raise SecurityError(f"{path} holds no secret key (give the NAME.key_secret file)")
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            log.warning("secret key %s is readable by others (mode %o): use 0600 or 0400",
                        path, mode, extra={"event": "key_mode"})
    return public, secret


class AllowList:
    """Client public keys allowed to connect; the ZAP callback counts and
    logs (rate-limited) every refusal."""

    def __init__(self, directory: str, counters: Counters):
        self.directory = Path(directory)
        self.c = counters
        init_counters(self.c, "auth_refused")
        self._warn = RateLimited(log, 10.0)
        #: public key -> the file it came from
        self.keys: dict[bytes, str] = {}
        self.reload()

    def reload(self) -> int:
        """Read the directory again (at start and on SIGHUP).  A missing
        directory or an unreadable key raises SecurityError and leaves the
        list as it was.  Applies to new connections; ZeroMQ authenticates a
        client once, at its handshake."""
        if not self.directory.is_dir():
            raise SecurityError(f"--curve-allow {self.directory}: not a directory")
        keys = {}
        for f in sorted(self.directory.glob("*.key")):
            keys[_load(str(f), need_secret=False)[0]] = f.name
        old, self.keys = self.keys, keys  # one assignment: the ZAP thread sees old or new
        added = sorted(keys[k] for k in keys.keys() - old.keys())
        removed = sorted(old[k] for k in old.keys() - keys.keys())
        log.info("allowing %d client keys from %s (%d added, %d removed)", len(keys),
                 self.directory, len(added), len(removed),
                 extra={"event": "allow_list", "keys": len(keys), "added": added,
                        "removed": removed})
        return len(keys)

    def callback(self, domain: str, client_key: bytes) -> bool:
        if client_key in self.keys:
            return True
        self.c["auth_refused"] += 1
        self._warn.warning("auth_refused", "refused a client with an unknown CURVE key %s",
                           client_key.decode(errors="replace"), event="auth_refused",
                           client_key=client_key.decode(errors="replace"))
        return False


class Curve:
    """The CURVE set-up of one daemon (one ZeroMQ context)."""

    def __init__(self, secret_key: str, server_key: str | None = None,
                 allow: AllowList | None = None):
        self.public, self.secret = _load(secret_key, need_secret=True)
        self.server_public = _load(server_key, need_secret=False)[0] if server_key else None
        self.allow = allow
        self.auth: ThreadAuthenticator | None = None

    @classmethod
    def from_args(cls, args, counters: Counters, client: bool, server: bool) -> Curve | None:
        """None when no key option is set (plaintext, warned); raises
        SecurityError on a half configuration."""
        secret = getattr(args, "curve_secret_key", None)
        server_key = getattr(args, "curve_server_key", None) if client else None
        allow = getattr(args, "curve_allow", None) if server else None
        if not (secret or server_key or allow):
            log.warning("no CURVE keys: traffic is sent in plaintext and any peer is accepted "
                        "(see --curve-secret-key)", extra={"event": "plaintext"})
            return None
        if not secret:
            raise SecurityError("--curve-server-key/--curve-allow need --curve-secret-key "
                                "(this daemon's own key pair)")
        if client and not server_key:
            raise SecurityError("--curve-secret-key without --curve-server-key: a client must "
                                "pin the server's public key")
        if server and not allow:
            raise SecurityError("--curve-secret-key without --curve-allow: a server must know "
                                "which client keys to accept")
        return cls(secret, server_key, AllowList(allow, counters) if allow else None)

    def start(self, ctx: zmq.Context) -> None:
        """Start the authenticator; call before binding any server socket."""
        if self.allow is None or self.auth is not None:
            return
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("nflog_pipe.zap"))
        self.auth.start()
        self.auth.configure_curve_callback("*", self.allow)

    def server(self, sock: zmq.Socket) -> None:
        if self.auth is None:
            raise SecurityError("a CURVE server socket needs the authenticator started first")
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def client(self, sock: zmq.Socket) -> None:
        if self.server_public is None:
            raise SecurityError("a CURVE client needs --curve-server-key")
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_public

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


def is_loopback(endpoint: str) -> bool:
    """tcp://127.x / [::1] / localhost, ipc:// and inproc:// stay on this host."""
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def write_keypair(directory: str, name: str, force: bool = False) -> tuple[Path, Path]:
    """NAME.key (public, 0644) and NAME.key_secret (0600, created with that
    mode: never readable by others, not even briefly)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    paths = (d / f"{name}.key", d / f"{name}.key_secret")
    for path, with_secret, mode in ((paths[0], False, 0o644), (paths[1], True, 0o600)):
        text = (f"#   ****  nflog-pipe CURVE key for {name}, {stamp}  ****\n"
                + ("#   ZeroMQ CURVE **Secret** Certificate\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS\n"
                   if with_secret else "#   ZeroMQ CURVE Public Certificate\n")
                + "\nmetadata\n    name = \"" + name + "\"\ncurve\n"
                + f"    public-key = \"{public.decode()}\"\n"
                + (f"    secret-key = \"{secret.decode()}\"\n" if with_secret else ""))
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise SecurityError(f"{path} exists (use --force to replace it)") from None
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
    return paths
