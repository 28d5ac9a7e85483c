"""Lesson 07: a snapshotter in containerd's shape, over OverlayFS.

containerd's snapshots.Snapshotter has a handful of verbs (containerd/snapshots/snapshotter.go):

* ``prepare(key, parent)``: a new *active* (writable) snapshot on top of a committed parent;
  it returns the mounts that make it: the parents as lowerdirs, a fresh upper dir;
* ``view(key, parent)``: the same, read-only;
* ``commit(name, key)``: the active snapshot becomes a *committed* one called ``name``;
* ``mounts(key)``, ``stat(key)``, ``walk()``, ``usage(key)``, ``remove(key)``.

Committed snapshots of image layers are named by ChainID and live in
``<lab root>/snapshots/<hex>`` in overlay form (the same directories Store.unpack makes), so a
builder, a container and the store all share one copy of each layer.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import lab
from .drivers import du
from .errors import LabError
from .image import digest


class SnapshotError(LabError):
    """A snapshot that does not exist, already exists, or is still needed."""


@dataclass(frozen=True)
class Info:
    key: str
    parent: str | None
    kind: str            # "active", "view" or "committed"
    created: float


@dataclass(frozen=True)
class Mounts:
    """What to mount for a snapshot: lowerdirs top first, and an upper/work pair if writable."""
    lowerdirs: list[Path]
    upperdir: Path | None
    workdir: Path | None


class Snapshotter:
    def __init__(self):
        self.root = lab.root()
        self.meta = self.root / "snapshots-meta"
        self.meta.mkdir(exist_ok=True)
        (self.root / "snapshots").mkdir(exist_ok=True)
        (self.root / "active").mkdir(exist_ok=True)

    # --- where things are ---
    def _id(self, key: str) -> str:
        try:
            return digest.encoded(key)                 # a ChainID: share the store's directory
        except LabError:
            return "k-" + hashlib.sha256(key.encode()).hexdigest()[:40]

    def dir(self, key: str) -> Path:
        info = self.stat(key)
        base = "snapshots" if info.kind == "committed" else "active"
        return self.root / base / self._id(key)

    def stat(self, key: str) -> Info:
        p = self.meta / f"{self._id(key)}.json"
        if not p.exists():
            raise SnapshotError(f"there is no snapshot {key!r}", "list them with Snapshotter().walk()")
        return Info(**json.loads(p.read_text()))

    def walk(self) -> list[Info]:
        return sorted((Info(**json.loads(p.read_text())) for p in self.meta.glob("*.json")),
                      key=lambda i: i.created)

    def _save(self, info: Info) -> None:
        tmp = self.meta / f".{self._id(info.key)}.tmp"
        tmp.write_text(json.dumps(asdict(info)))
        tmp.rename(self.meta / f"{self._id(info.key)}.json")

    def chain(self, key: str | None) -> list[Path]:
        """The committed directories from ``key`` down to the base, top first."""
        out = []
        while key:
            info = self.stat(key)
            if info.kind != "committed":
                raise SnapshotError(f"{key!r} is {info.kind}; only committed snapshots can be parents",
                                    "commit it first")
            out.append(self.dir(key))
            key = info.parent
        return out

    # --- the verbs ---
    def register(self, key: str, parent: str | None) -> Info:
        """Record an existing committed directory (e.g. one Store.unpack made)."""
        if (self.meta / f"{self._id(key)}.json").exists():
            return self.stat(key)
        if not (self.root / "snapshots" / self._id(key)).is_dir():
            raise SnapshotError(f"no directory for {key}", "unpack the image first")
        info = Info(key, parent, "committed", time.time())
        self._save(info)
        return info

    def prepare(self, key: str, parent: str | None = None) -> Mounts:
        """A writable snapshot on top of ``parent``; returns its mounts."""
        return self._new(key, parent, "active")

    def view(self, key: str, parent: str | None = None) -> Mounts:
        """A read-only snapshot of ``parent``."""
        return self._new(key, parent, "view")

    def _new(self, key: str, parent: str | None, kind: str) -> Mounts:
        if (self.meta / f"{self._id(key)}.json").exists():
            raise SnapshotError(f"snapshot {key!r} exists", "pick another key or remove it")
        self.chain(parent)                          # the parent must exist and be committed
        d = lab.fresh_dir(self.root / "active" / self._id(key))
        (d / "fs").mkdir()
        (d / "work").mkdir()
        self._save(Info(key, parent, kind, time.time()))
        return self.mounts(key)

    def mounts(self, key: str) -> Mounts:
        info = self.stat(key)
        lowers = self.chain(info.parent)
        if info.kind == "committed":
            return Mounts([self.dir(key), *lowers], None, None)
        d = self.dir(key)
        if info.kind == "view":
            return Mounts(lowers, None, None)
        return Mounts(lowers, d / "fs", d / "work")

    def commit(self, name: str, key: str) -> Info:
        """Turn active snapshot ``key`` into committed ``name`` (its upper dir becomes the layer dir)."""
        info = self.stat(key)
        if info.kind != "active":
            raise SnapshotError(f"{key!r} is {info.kind}, not active", "only an active snapshot can be committed")
        target = self.root / "snapshots" / self._id(name)
        src = self.dir(key)
        if target.exists():                        # the same layer was committed before
            lab.remove_tree(src)
        else:
            (src / "fs").rename(target)
            lab.remove_tree(src)
        (self.meta / f"{self._id(key)}.json").unlink()
        new = Info(name, info.parent, "committed", time.time())
        if not (self.meta / f"{self._id(name)}.json").exists():
            self._save(new)
        return self.stat(name)

    def remove(self, key: str) -> None:
        """Remove a snapshot nothing builds on."""
        children = [i.key for i in self.walk() if i.parent == key]
        if children:
            raise SnapshotError(f"{key!r} is the parent of {children[0]!r}", "remove its children first")
        d = self.dir(key)
        (self.meta / f"{self._id(key)}.json").unlink()
        if d.exists():
            lab.remove_tree(d)

    def usage(self, key: str) -> int:
        """Bytes of disk of the snapshot's own directory (not its parents')."""
        d = self.dir(key)
        return du(d / "fs" if (d / "fs").is_dir() else d)
