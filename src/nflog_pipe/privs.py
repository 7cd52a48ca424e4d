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


class PrivilegeError(RuntimeError):
    pass


def resolve_user(spec: str) -> tuple[int, int, str]:
    """``name``, ``uid``, ``name:group`` or ``uid:gid`` -> (uid, gid, name)."""
    user, _, group = spec.partition(":")
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        uid, gid, name = pw.pw_uid, pw.pw_gid, pw.pw_name
    except KeyError:
        if not user.isdigit():
            raise PrivilegeError(f"no such user: {user!r}") from None
        uid, gid, name = int(user), int(user), user
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
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

