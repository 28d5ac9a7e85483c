"""Small helpers to write and read directory trees, so lessons can build layers from a dict.

    write_tree(d, {"concrete": "bad concrete\\n", "rebar": "rebar\\n", "floors/": None})

A key ending in "/" is a directory; a value of bytes or str is a file's content; an
``int`` value makes a file of that many bytes. Every path written is checked to lie
under the lab root.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .lab import inside

BLOCK = b"labkit " * 9362  # ~64 KiB of non-zero bytes: big files are real data, not holes


def write_tree(directory: str | os.PathLike, spec: dict[str, str | bytes | int | None]) -> Path:
    """Create ``directory`` and the files and directories named in ``spec``."""
    d = inside(directory)
    d.mkdir(parents=True, exist_ok=True)
    for rel, content in spec.items():
        p = inside(d / rel.rstrip("/"))
        if rel.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, int):
            write_big_file(p, content)
        else:
            p.write_bytes(content.encode() if isinstance(content, str) else (content or b""))
    return d


def write_big_file(path: str | os.PathLike, size: int) -> Path:
    """Write ``size`` bytes of real (non-sparse) data to ``path``."""
    p = inside(path)
    with open(p, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(BLOCK))
            f.write(BLOCK[:n])
            left -= n
    return p


@dataclass(frozen=True)
class Node:
    """One entry of a tree as ``ls -l`` would show it."""
    path: str          # relative to the tree's top
    kind: str          # "file", "dir", "symlink", "chardev", "other"
    mode: str          # e.g. "-rw-r--r--" or "c---------"
    size: int
    rdev: tuple[int, int] | None = None   # (major, minor) for devices
    content: str | None = None            # small text files only

    def __str__(self) -> str:
        dev = f" {self.rdev[0]}, {self.rdev[1]}" if self.rdev else ""
        text = f"  {self.content!r}" if self.content is not None else ""
        return f"{self.mode}{dev:>6} {self.size:>9} {self.path}{text}"


def node(top: Path, p: Path, max_text: int = 64) -> Node:
    """Describe ``p`` (relative to ``top``) without following symlinks."""
    st = os.lstat(p)
    kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
            stat.S_IFCHR: "chardev"}.get(stat.S_IFMT(st.st_mode), "other")
    rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind == "chardev" else None
    content = None
    if kind == "file" and st.st_size <= max_text:
        content = p.read_bytes().decode(errors="replace")
    return Node(str(p.relative_to(top)), kind, stat.filemode(st.st_mode), st.st_size, rdev, content)


def list_tree(directory: str | os.PathLike) -> list[Node]:
    """Every entry below ``directory``, sorted by path, like ``ls -lR`` (reads only)."""
    top = Path(directory)
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            out.append(node(top, Path(dirpath) / name))
    return sorted(out, key=lambda n: n.path)


def read_tree(directory: str | os.PathLike) -> dict[str, str | None]:
    """``{path: text}`` for small files, ``None`` for directories and everything else."""
    return {n.path: n.content for n in list_tree(directory)}


def show(directory: str | os.PathLike) -> str:
    """An ``ls -l``-style listing of a tree, one entry a line."""
    return "\n".join(str(n) for n in list_tree(directory))


def du(*paths: Path) -> int:
    """Bytes of disk used below ``paths`` (st_blocks), each inode counted once, like du(1)."""
    seen, total = set(), 0
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                st_ = os.lstat(os.path.join(dirpath, name))
                if (st_.st_dev, st_.st_ino) not in seen:
                    seen.add((st_.st_dev, st_.st_ino))
                    total += st_.st_blocks * 512
    return total
