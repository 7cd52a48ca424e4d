"""Dropping privileges after the netlink socket is bound.

The original swapped uid and gid.  Here: supplementary groups cleared, gid
then uid set (real, effective and saved), checked afterwards; setting a
non-zero uid clears every capability set, and ``no_new_privs`` keeps any
later exec from regaining one.  Without ``--user`` a root process keeps its
uid but drops every capability.
"""

from __future__ import annotations

import grp
import os
import pwd

from .errors import PipeError


class PrivilegeError(PipeError, RuntimeError):
    """A user, group or capability change that cannot be made."""


def _id(text: str) -> int | None:
    """A numeric uid/gid (ASCII digits, below 2**32 - 1), or None for a name."""
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) > 10 or int(text) >= 2**32 - 1:
        raise PrivilegeError(f"{text}: ids go from 0 to {2**32 - 2}")
    return int(text)


def resolve_user(spec: str) -> tuple[int, int, str]:
    """``name``, ``uid``, ``name:group`` or ``uid:gid`` -> (uid, gid, name)."""
    user, _, group = spec.partition(":")
    if not user:
        raise PrivilegeError(f"{spec!r}: empty user name")
    uid = _id(user)
    try:
        pw = pwd.getpwnam(user) if uid is None else pwd.getpwuid(uid)
        uid, gid, name = pw.pw_uid, pw.pw_gid, pw.pw_name
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        if uid is None:
            raise PrivilegeError(f"no such user: {user!r}") from None
        gid, name = uid, user
    if group:
        gid = _id(group)
        if gid is None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except (KeyError, ValueError):
                raise PrivilegeError(f"no such group: {group!r}") from None
    return uid, gid, name


def capabilities() -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of this process, as integers."""
    caps = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Cap"):
                key, value = line.split(":")
                caps[key] = int(value, 16)
    return caps


def drop(user: str | None) -> dict:
    """Drop to ``user`` (if given) and clear every capability.  Returns what
    the process now is, for the start-up log record."""
    from ._nflog import lib  # the capset helper lives in the compiled module

    if user:
        uid, gid, name = resolve_user(user)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
            raise PrivilegeError(f"could not become {name} ({uid}:{gid})")
    rc = lib.nzp_drop_caps()
    if rc < 0:
        raise PrivilegeError(f"capset/no_new_privs: {os.strerror(-rc)}")
    caps = capabilities()
    if caps.get("CapEff") or caps.get("CapPrm"):
        raise PrivilegeError(f"capabilities remain after dropping: {caps}")
    return {"uid": os.getuid(), "gid": os.getgid(), "cap_eff": caps.get("CapEff", 0)}

