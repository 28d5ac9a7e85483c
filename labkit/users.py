"""Lesson 06: who a container's process is. ``USER`` in a Dockerfile and ``--user`` name a user
the way the image knows them, so the runtime reads the image's /etc/passwd and /etc/group
(passwd(5), group(5)), as runc's libcontainer/user does for docker and podman:

* ``name`` or ``uid``: the uid, the primary gid from passwd (gid 0 for a uid passwd lacks);
* ``name:group`` or ``uid:gid``: the group given instead (by name from /etc/group, or a number);
* supplementary groups: the primary group, then every group in /etc/group that lists the
  user's name unless a group was given ("supplementary group ids only make sense in the
  implicit group", runc says). The primary group is always one of them, as docker (since
  20.10.18, CVE-2022-36109) and podman set it: without it, a process that changes its group
  escapes a file's "not for this group" permission bits (mode 0604, say);
* HOME: the home directory in passwd, "/" if the user is not there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import LabError


class UserError(LabError):
    """A USER the image does not know."""


@dataclass
class Identity:
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    home: str = "/"


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#") and line.count(":") >= 2]


def resolve(user: str, passwd: str, group: str) -> Identity:
    """The Identity of ``user`` ("name", "uid", "name:group", "uid:gid") in an image whose
    /etc/passwd and /etc/group read ``passwd`` and ``group`` ("" where the file is missing)."""
    name, _, grp = (user or "0").partition(":")
    users = _table(passwd)
    entry = next((f for f in users if len(f) >= 6 and (f[0] == name or (name.isdigit() and f[2] == name))), None)
    if entry is None and not name.isdigit():
        raise UserError(f"unable to find user {name}: no matching entries in the image's /etc/passwd",
                        "use a numeric uid (USER 1000), or add the user in the image (RUN adduser -D NAME)")
    uid = int(name) if name.isdigit() else int(entry[2])
    gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    groups = _table(group)
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            g = next((f for f in groups if f[0] == grp), None)
            if g is None or not g[2].isdigit():
                raise UserError(f"unable to find group {grp}: no matching entries in the image's /etc/group",
                                "use a numeric gid (USER 1000:1000), or add the group in the image (RUN addgroup)")
            gid = int(g[2])
    login = entry[0] if entry and not grp else None
    extra = [int(f[2]) for f in groups if login and len(f) >= 4 and f[2].isdigit() and login in f[3].split(",")]
    return Identity(uid, gid, list(dict.fromkeys([gid, *extra])), entry[5] if entry and entry[5] else "/")
