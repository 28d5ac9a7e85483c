"""Lesson 07: a snapshotter in containerd's shape, over OverlayFS.

containerd's snapshots.Snapshotter has a handful of verbs (containerd/snapshots/snapshotter.go):

* ``prepare(key, parent)``: a new *active* (writable) snapshot on top of a committed parent;
  it returns the mounts that make it: the parents as lowerdirs, a fresh upper dir;
* ``view(key, parent)``: the same, read-only;
* ``commit(name, key)``: the active snapshot becomes a *committed* one called ``name``;
* ``mounts(key)``, ``stat(key)``, ``walk()``, ``usage(key)``, ``remove(key)``.

The snapshotter is the only writer of its directory (one per image store)::

    committed/<hex>    a committed snapshot's files, in overlay form (a lowerdir as it is)
    active/<id>/fs     an active snapshot's upper dir (and work/ beside it)
    meta/<id>.json     what each snapshot is (Info)

Image layers are unpacked the way containerd's unpacker does it (:func:`unpack`):
Prepare on the parent's ChainID -> apply the layer tar into the upper dir -> Commit under
the layer's ChainID, and only after the tar's bytes were checked against the config's
DiffID. So a committed snapshot named by a ChainID always holds exactly that layer stack.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from . import lab, procfs
from .errors import LabError
from .image import digest, layer
from .image.store import Descriptor, Store
from .tree import du


class SnapshotError(LabError):
    """A snapshot that does not exist, already exists, or is still needed."""


@dataclass(frozen=True)
class Info:
    key: str
    parent: str | None
    kind: str            # "active", "view" or "committed"
    created: float
    owner: int = 0       # for active and view snapshots: the process using it, and its start time
    owner_start: int = 0


@dataclass(frozen=True)
class Mounts:
    """What to mount for a snapshot: lowerdirs top first, and an upper/work pair if writable."""
    lowerdirs: list[Path]
    upperdir: Path | None
    workdir: Path | None


class Snapshotter:
    """Snapshots under ``root`` (by default ``<lab root>/snapshots``, the default store's).
    The first time a process opens it, active snapshots whose process died are swept away
    (see :meth:`sweep`)."""

    def __init__(self, root: str | os.PathLike | None = None, sweep: bool = True):
        self.root = lab.inside(root or lab.root() / "snapshots")
        for sub in ("committed", "active", "meta"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.meta = self.root / "meta"
        if sweep and self.root not in _SWEPT:     # once per process and directory: not on every unpack
            _SWEPT.add(self.root)
            self.sweep()

    # --- where things are ---
    def _id(self, key: str) -> str:
        try:
            return digest.encoded(key)                 # a ChainID names its directory
        except LabError:
            return "k-" + hashlib.sha256(key.encode()).hexdigest()[:40]

    def _meta(self, key: str) -> Path:
        return self.meta / f"{self._id(key)}.json"

    def exists(self, key: str) -> bool:
        return self._meta(key).is_file()

    def dir(self, key: str) -> Path:
        info = self.stat(key)
        base = "committed" if info.kind == "committed" else "active"
        return self.root / base / self._id(key)

    def stat(self, key: str) -> Info:
        if not self.exists(key):
            raise SnapshotError(f"there is no snapshot {key!r}", "list them with Snapshotter().walk()")
        return Info(**json.loads(self._meta(key).read_text()))

    def walk(self) -> list[Info]:
        out = []
        for p in self.meta.glob("*.json"):
            try:
                out.append(Info(**json.loads(p.read_text())))
            except FileNotFoundError:          # removed by another process meanwhile
                pass
        return sorted(out, key=lambda i: i.created)

    def _save(self, info: Info) -> None:
        tmp = self.meta / f".{self._id(info.key)}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(asdict(info)))
        tmp.rename(self._meta(info.key))

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
    def prepare(self, key: str, parent: str | None = None) -> Mounts:
        """A writable snapshot on top of ``parent``; returns its mounts."""
        return self._new(key, parent, "active")

    def view(self, key: str, parent: str | None = None) -> Mounts:
        """A read-only snapshot of ``parent``."""
        return self._new(key, parent, "view")

    def _new(self, key: str, parent: str | None, kind: str) -> Mounts:
        if self.exists(key):
            raise SnapshotError(f"snapshot {key!r} exists", "pick another key or remove it")
        self.chain(parent)                          # the parent must exist and be committed
        d = lab.fresh_dir(self.root / "active" / self._id(key))
        (d / "fs").mkdir()
        (d / "work").mkdir()
        me = os.getpid()
        self._save(Info(key, parent, kind, time.time(), me, procfs.stat(me).starttime))
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
        """Turn active snapshot ``key`` into committed ``name``: its upper dir is renamed into
        place (atomic), then recorded. If ``name`` is already committed, the copy is dropped."""
        info = self.stat(key)
        if info.kind != "active":
            raise SnapshotError(f"{key!r} is {info.kind}, not active", "only an active snapshot can be committed")
        src = self.dir(key)
        # One committer at a time: two lessons unpacking the same layer both reach here, and
        # between the rename and the record the other would take the fresh dir for a crash's
        # leftover and delete it, under the first one's overlay mount.
        with open(self.root / ".commit.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.exists(name):
                target = self.root / "committed" / self._id(name)
                if os.path.lexists(target):            # left by a crash before it was recorded
                    lab.remove_tree(target)
                (src / "fs").rename(target)
                self._save(Info(name, info.parent, "committed", time.time()))
        lab.remove_tree(src)
        self._meta(key).unlink()
        return self.stat(name)

    def remove(self, key: str) -> None:
        """Remove a snapshot nothing builds on."""
        children = [i.key for i in self.walk() if i.parent == key]
        if children:
            raise SnapshotError(f"{key!r} is the parent of {children[0]!r}", "remove its children first")
        d = self.dir(key)
        self._meta(key).unlink()
        if d.exists():
            lab.remove_tree(d)

    def sweep(self) -> list[str]:
        """Remove active and view snapshots whose process is gone (a kernel killed in the
        middle of a build or an unpack); returns their keys. Committed ones stay."""
        gone = []
        for info in self.walk():
            if info.kind == "committed" or _alive(info.owner, info.owner_start):
                continue
            lab.remove_tree(self.root / "active" / self._id(info.key))
            self._meta(info.key).unlink(missing_ok=True)
            gone.append(info.key)
        known = {self._id(i.key) for i in self.walk()}
        for d in (self.root / "active").iterdir():       # a directory whose record never got written
            if d.name not in known and time.time() - d.stat().st_mtime > 60:
                lab.remove_tree(d)
        return gone

    def usage(self, key: str) -> int:
        """Bytes of disk of the snapshot's own directory (not its parents')."""
        d = self.dir(key)
        return du(d / "fs" if (d / "fs").is_dir() else d)


_SWEPT: set[Path] = set()


def _alive(pid: int, start: int) -> bool:
    try:
        st = procfs.stat(pid)
    except OSError:
        return False
    return st.state != "Z" and (not start or st.starttime == start)


def of(store: Store) -> Snapshotter:
    """The snapshotter that holds ``store``'s unpacked layers."""
    return Snapshotter(store.snapshot_root)


def unpack(name: str, store: Store | None = None) -> list[Path]:
    """The layers of image ``name`` as committed snapshots of ``store`` (the lab's store by
    default), top first: ready to be an overlay's lowerdirs."""
    store = store or Store()
    img = store.image(name)
    return unpack_layers(img.layers, img.diff_ids, store)


def unpack_layers(layers: list[Descriptor], diff_ids: list[str], store: Store) -> list[Path]:
    """containerd's unpacker: for each ChainID of the stack (descriptors base first, with the
    config's DiffIDs) not yet committed in the store's snapshotter, Prepare on the parent, apply
    the layer tar (its DiffID verified), Commit under the ChainID. Returns the dirs top first."""
    snaps = of(store)
    parent = None
    for desc, diff_id, chain in zip(layers, diff_ids, digest.chain_ids(diff_ids)):
        if not snaps.exists(chain):
            key = f"extract-{uuid.uuid4().hex}"
            m = snaps.prepare(key, parent)
            try:
                layer.apply(store.open_layer(desc, diff_id), m.upperdir, overlay_form=True)
                snaps.commit(chain, key)
            except BaseException:
                snaps.remove(key)
                raise
        parent = chain
    return snaps.chain(parent)
