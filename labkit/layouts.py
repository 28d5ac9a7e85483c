"""Lesson 04: how three of Docker's storage drivers laid an image out on disk, rebuilt from
labkit's own store so the directories can be listed, read and counted.

* **aufs** (``/var/lib/docker/aufs``): ``diff/<id>/`` holds each layer's files exactly as in
  its tar, whiteouts included as ``.wh.NAME`` files (aufs used the same names, which is why
  image layers still do: image-spec layer.md); ``layers/<id>`` is a text file naming the
  layer's parents, nearest first; ``mnt/<id>/`` is where the union was mounted. A container
  added ``<id>-init`` (hostname, hosts, resolv.conf placeholders) below its own ``<id>``.
* **overlay** (the first OverlayFS driver, removed in Docker 24): the kernel then took a single
  lowerdir, so each layer's ``<id>/root/`` was a *whole* tree: the parent's root hard-linked
  (``cp -al``: every file shared, every directory new) with the layer applied on top.
* **overlay2** (Docker's default since 17.06): ``<id>/diff/`` holds only the layer's changes in
  OverlayFS's own form (whiteouts as 0/0 char devices); ``<id>/link`` a short name and
  ``l/<short>`` a symlink to the diff, and ``<id>/lower`` the short names of all layers below,
  top first: the lowerdir string. Short names keep the mount(2) options under one page
  (4096 bytes) for images of many layers.

Layer ids here are the first 12 hex digits of the ChainID (Docker uses random cache ids).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from . import lab, overlay
from .errors import LabError
from .image import layer, store as st

DRIVERS = ("aufs", "overlay", "overlay2")


@dataclass(frozen=True)
class Layout:
    """One driver's directory for one image: where it is, and what it costs in inodes."""
    driver: str
    root: Path
    layers: int
    inodes: int          # distinct inodes below root (a hard link counts once)
    directories: int     # of which directories
    lowerdir: str        # what the driver would give mount(2) for a container of the image


def build(driver: str, image: str, root: str | os.PathLike, *, store: st.Store | None = None) -> Layout:
    """Lay ``image`` out under ``root`` as ``driver`` did (one of DRIVERS)."""
    if driver not in DRIVERS:
        raise LabError(f"unknown driver layout {driver!r}", f"use one of {', '.join(DRIVERS)}")
    s = store or st.Store()
    img = s.image(image)
    ids = [c[7:19] for c in img.chain_ids]
    top = lab.fresh_dir(Path(root) / driver)
    lowerdir = {"aufs": _aufs, "overlay": _overlay, "overlay2": _overlay2}[driver](s, img, ids, top)
    inodes, dirs = count_inodes(top)
    return Layout(driver, top, len(ids), inodes, dirs, lowerdir)


def _aufs(s: st.Store, img: st.Image, ids: list[str], top: Path) -> str:
    for sub in ("diff", "layers", "mnt"):
        (top / sub).mkdir()
    for i, (desc, lid) in enumerate(zip(img.layers, ids)):
        _unpack_as_is(s.open_layer(desc), top / "diff" / lid)
        (top / "layers" / lid).write_text("".join(p + "\n" for p in reversed(ids[:i])))
        (top / "mnt" / lid).mkdir()
    return ":".join(f"{top}/diff/{lid}=ro+wh" for lid in reversed(ids))


def _overlay(s: st.Store, img: st.Image, ids: list[str], top: Path) -> str:
    parent = None
    for desc, lid in zip(img.layers, ids):
        root = top / lid / "root"
        (top / lid).mkdir()
        if parent is None:
            root.mkdir()
        else:
            _link_tree(parent, root)
            (top / lid / "lower-id").write_text(parent.parent.name)
        layer.apply(s.open_layer(desc), root)          # flattened: whiteouts delete, files replace
        parent = root
    return str(parent)


def _overlay2(s: st.Store, img: st.Image, ids: list[str], top: Path) -> str:
    (top / "l").mkdir()
    short = {}
    for i, (desc, lid) in enumerate(zip(img.layers, ids)):
        d = top / lid
        layer.apply(s.open_layer(desc), d / "diff", overlay_form=True)
        short[lid] = hashlib.sha256(lid.encode()).hexdigest()[:26].upper()
        (d / "link").write_text(short[lid])
        os.symlink(f"../{lid}/diff", top / "l" / short[lid])
        if i:
            (d / "lower").write_text(":".join(f"l/{short[p]}" for p in reversed(ids[:i])))
            (d / "work").mkdir()
    return ":".join(f"l/{short[lid]}" for lid in reversed(ids))


def _unpack_as_is(tar_path: Path, dest: Path) -> None:
    """The layer with its whiteouts as the tar spells them (``.wh.NAME``, ``.wh..wh..opq``):
    the form aufs kept on disk. Unpacked by layer.apply (every entry checked) in OverlayFS's
    form, then each 0/0 device and opaque mark renamed back."""
    layer.apply(tar_path, dest, overlay_form=True)
    for dirpath, dirnames, filenames in os.walk(dest):
        d = Path(dirpath)
        if overlay.xattr(d, "trusted.overlay.opaque") == b"y":
            os.removexattr(d, "trusted.overlay.opaque")
            (d / ".wh..wh..opq").touch(0o444)
        for name in filenames:
            if overlay.is_whiteout(d / name):
                os.unlink(d / name)
                (d / f".wh.{name}").touch(0o444)


def _link_tree(src: Path, dst: Path) -> None:
    """``cp -al src dst``: new directories, every other entry a hard link to the same inode."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        os.mkdir(dst / rel, os.lstat(dirpath).st_mode & 0o7777)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            os.link(os.path.join(dirpath, name), dst / rel / name, follow_symlinks=False)


def count_inodes(top: Path) -> tuple[int, int]:
    """(distinct inodes, directories) below ``top``, ``top`` itself not counted."""
    seen, dirs = set(), 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            if (st_.st_dev, st_.st_ino) not in seen:
                seen.add((st_.st_dev, st_.st_ino))
                dirs += os.path.isdir(os.path.join(dirpath, name)) and not os.path.islink(os.path.join(dirpath, name))
    return len(seen), dirs
