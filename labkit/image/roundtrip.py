"""Lesson 03: one change, three forms. Changes made in an overlay's merged dir land in its
upper dir (a whiteout is a 0/0 device, an opaque directory an xattr); ``layer.create`` turns
the upper dir into a layer tar (``.wh.NAME``, ``.wh..wh..opq``); ``layer.apply`` puts the tar
onto a copy of the lower layer. :func:`round_trip` does all three for a list of operations,
so the lesson's widget (and its test) can show them side by side.
"""
from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .. import lab, overlay, sandbox
from ..errors import LabError
from ..tree import list_tree, read_tree, write_tree
from . import layer

LOWER = {"app/config.ini": "debug = false\n", "app/data/a.csv": "1,2\n", "app/data/b.csv": "3,4\n",
         "etc/motd": "welcome\n", "bin/vi": "an editor\n"}
OPS = ("write", "delete", "recreate dir")       # recreate: rm -r, then mkdir: an opaque dir


@dataclass(frozen=True)
class RoundTrip:
    upper: list[str]       # the upper dir, as tree.list_tree shows it
    tar: list[str]         # the layer tar's entry names, in order
    applied: dict          # the lower layer with the tar applied (tree.read_tree)


def round_trip(ops: list[tuple[str, str, str]], work: str | os.PathLike, lower: dict = LOWER) -> RoundTrip:
    """Mount an overlay of ``lower`` (in a throwaway child), do ``ops`` [(op, path, text)] in
    its merged dir, make the upper dir a layer tar, apply it onto a copy of ``lower``."""
    work = lab.fresh_dir(work)
    try:
        write_tree(work / "lower", lower)
        ov = overlay.Overlay([work / "lower"], work / "upper", work / "work", work / "merged")

        def change():
            with ov:
                for op, path, text in ops:
                    p = _in(ov.merged, path)
                    if op == "write":
                        p.parent.mkdir(parents=True, exist_ok=True)
                        p.write_text(text)
                    elif op == "delete":
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                    elif op == "recreate dir":
                        shutil.rmtree(p)
                        p.mkdir()
                    else:
                        raise LabError(f"unknown operation {op!r}", f"use one of {', '.join(OPS)}")
        sandbox.run(change)
        info = layer.create(work / "upper", work / "layer.tar")
        with tarfile.open(info.path) as t:
            names = t.getnames()
        shutil.copytree(work / "lower", work / "applied", symlinks=True)
        layer.apply(info.path, work / "applied")
        upper = [str(n) + ("   (opaque: trusted.overlay.opaque=y)" if n.kind == "dir" and
                           overlay.xattr(work / "upper" / n.path, "trusted.overlay.opaque") == b"y" else "")
                 for n in list_tree(work / "upper")]
        return RoundTrip(upper, names, read_tree(work / "applied"))
    finally:
        lab.remove_tree(work)


def _in(merged: Path, path: str) -> Path:
    """``path`` (as a learner types it: 'app/x' or '/app/x') inside ``merged``, never above it."""
    parts = [p for p in path.strip().strip("/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise LabError(f"{path!r} is not a path inside the layer", "write one like app/new.txt")
    return merged.joinpath(*parts)
