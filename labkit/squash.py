"""Lesson 07: squash the layers added since a base into one layer (seed 004's COMPRESS).

Two ways, both in the seed:

(a) **merge**: apply the layers one by one, oldest first, into one changeset by the union
    rules (a newer file replaces an older one, a whiteout removes what came before, an
    opaque directory empties it). Work grows with the number of layers.
(b) **diff**: look at the final image and the base as whole root filesystems and compare
    the two trees: whatever differs is the new layer. Work is independent of the number of
    layers. Nothing is copied to look: each tree is a read-only overlay mount of the image's
    unpacked layers (:func:`view`, the snapshotter's committed snapshots as lowerdirs).

Both end in :func:`canonical`, which writes the smallest changeset for the result (no opaque
marks, whiteouts only for paths the base has, nothing the base already has byte for byte),
so both give the same tree, hence the same layer digest. What squashing loses: the history
of the squashed steps, and the sharing of those layers with other images.
"""
from __future__ import annotations

import filecmp
import os
import shutil
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import cgroups, kernel, lab, overlay, snapshot
from .image import layer, store as st
from .image import mutate
from .tree import du


def merge(s: st.Store, name: str, base: str, out: Path) -> Path:
    """(a) Merge the layers of ``name`` above ``base`` into the changeset dir ``out``."""
    img, n = s.image(name), _base_len(s, name, base)
    out = _empty(out)
    for desc in img.layers[n:]:
        layer.apply(s.open_layer(desc), out, overlay_form=True, merge=True)
    return out


@contextmanager
def view(s: st.Store, name: str, where: Path) -> Iterator[Path]:
    """Image ``name``'s root filesystem, read-only, mounted at ``where``: an overlay whose
    lowerdirs are the image's committed snapshots (unpacked once, kept by the snapshotter).
    Without an upper dir the kernel wants two lowerdirs at least ("at least 2 lowerdir are
    needed while upperdir nonexistent"), so a one-layer image gets an empty one below it."""
    if name == st.SCRATCH:          # the empty image: an empty directory, nothing to mount
        yield lab.fresh_dir(where)
        return
    lowers = snapshot.unpack(name, s)
    if len(lowers) == 1:
        lowers.append(lab.fresh_dir(where.with_name(where.name + "-empty")))
    with overlay.Overlay(lowers, None, None, where):
        yield where


def diff(s: st.Store, name: str, base: str, out: Path, work: Path) -> Path:
    """(b) Compare ``name``'s root filesystem with ``base``'s; the difference is ``out``."""
    _base_len(s, name, base)
    with view(s, name, work / "final") as final, view(s, base, work / "base") as old:
        return difference(final, old, out)


def difference(final: Path, old: Path, out: Path) -> Path:
    """The changeset (overlay form) that turns the tree ``old`` into ``final``: entries of
    ``final`` that ``old`` lacks or has otherwise, whiteouts for what only ``old`` has. Names
    of one file (hard links, link(2)) stay links of one copy, as the layer tar had them."""
    out = _empty(out)
    copies: dict[tuple[int, int], Path] = {}
    for dirpath, dirnames, filenames in os.walk(final):
        dirnames.sort()
        for nm in sorted(dirnames + filenames):
            rel = Path(dirpath, nm).relative_to(final)
            if not _same(final / rel, old / rel, shared=True):
                _copy_entry(final, rel, out, copies=copies)
    for dirpath, dirnames, filenames in os.walk(old):
        for nm in dirnames + filenames:
            rel = Path(dirpath, nm).relative_to(old)
            if not os.path.lexists(final / rel) and os.path.lexists(final / rel.parent):
                _ensure_parents(final, rel, out)
                overlay.make_whiteout(out / rel)
        dirnames[:] = [d for d in dirnames if os.path.lexists(final / Path(dirpath, d).relative_to(old))]
    return out


def canonical(cs: Path, base_tree: Path) -> Path:
    """Reduce the changeset ``cs`` (overlay form) against the base's root filesystem to its smallest form."""
    for dirpath, dirnames, _ in os.walk(cs):          # 1. opaque dir -> whiteouts for base children
        d = Path(dirpath)
        if overlay.xattr(d, "trusted.overlay.opaque") == b"y":
            os.removexattr(d, "trusted.overlay.opaque")
            b = base_tree / d.relative_to(cs)
            if b.is_dir() and not b.is_symlink():
                for child in os.listdir(b):
                    if not os.path.lexists(d / child):
                        overlay.make_whiteout(d / child)
    for dirpath, dirnames, filenames in os.walk(cs, topdown=False):
        for nm in filenames + dirnames:
            p = Path(dirpath, nm)
            rel = p.relative_to(cs)
            if overlay.is_whiteout(p):                  # 2. whiteouts for paths the base lacks
                if not os.path.lexists(base_tree / rel):
                    p.unlink()
            elif p.is_dir() and not p.is_symlink():     # 4. dirs the base has, now empty here
                if not os.listdir(p) and _same(p, base_tree / rel, content=False):
                    p.rmdir()
            elif _same(p, base_tree / rel):             # 3. files the base has byte for byte
                p.unlink()
    return cs


def squash(name: str, base: str, new_name: str, method: str = "diff", *, store: st.Store | None = None) -> st.Image:
    """A new image: ``base``'s layers plus one layer for everything ``name`` added on top."""
    s = store or st.Store()
    _base_len(s, name, base)
    # a directory of its own: two notebooks may squash in one lab root at once
    work = lab.fresh_dir(lab.root() / "tmp" / f"squash-{method}-{uuid.uuid4().hex[:12]}")
    try:
        with view(s, base, work / "base") as base_tree, _scratch(s, name, base, work / "cs") as cs:
            if method == "diff":
                with view(s, name, work / "final") as final:
                    difference(final, base_tree, cs)
            else:
                merge(s, name, base, cs)
            canonical(cs, base_tree)
            desc, diff_id = s.add_layer_dir(cs)
        img, b = s.image(name), None if base == st.SCRATCH else s.image(base)
        config = img.config.get("config", {})
        steps = len(img.history) - (len(b.history) if b else 0)
        return mutate.commit(new_name, [(desc, diff_id)],
                        [{"created_by": f"squash ({method}) of {steps} steps onto {base}: their history is gone"}],
                        config=config, base=b, store=s)
    finally:
        lab.remove_tree(work)


def _empty(d: Path) -> Path:
    """``d`` made if missing and emptied if not; the directory itself stays (it may be a mount)."""
    d = lab.inside(d)
    d.mkdir(parents=True, exist_ok=True)
    for child in os.listdir(d):
        lab.remove_tree(d / child)
    return d


@contextmanager
def _scratch(s: st.Store, name: str, base: str, where: Path) -> Iterator[Path]:
    """Where the changeset is written: it lives for one squash (written, tarred, deleted), so
    it goes on a tmpfs when it fits in a quarter of the memory this lab may use (cgroups
    memory_room), else on the lab root's disk. It is never larger than what the layers it
    replaces hold unpacked: their snapshots' disk use bounds it (not their blobs' sizes: a
    gzip layer of zeros is a thousandth of what it holds). On this course's VM disk a file
    created costs ~0.3 ms: for 10 small layers that was most of a squash."""
    # layer.apply keeps MIN_FREE spare on the file system it writes to; a tmpfs takes memory
    # only for what is written, not for its size
    above = len(s.image(name).layers) - _base_len(s, name, base)
    bound = du(*snapshot.unpack(name, s)[:above]) + (16 << 20)
    need = bound + layer.MIN_FREE
    where.mkdir(parents=True, exist_ok=True)
    if need > cgroups.memory_room() // 4:
        layer.ensure_space(where, bound, f"squashing {name} onto {base}")
        yield where
        return
    entry = lab.record("mount", where, f"squash: a tmpfs of {need >> 20} MiB for the changeset")
    try:
        kernel.mount("tmpfs", str(where), "tmpfs", 0, f"size={need},mode=0755")
        yield where
    finally:
        lab.release(entry)


def _base_len(s: st.Store, name: str, base: str) -> int:
    """How many of ``name``'s layers are ``base``'s (0 for scratch); an error if ``base`` is not
    where ``name`` started."""
    if base == st.SCRATCH:
        return 0
    img, b = s.image(name), s.image(base)
    n = len(b.layers)
    if img.chain_ids[:n] != b.chain_ids:
        raise st.StoreError(f"{base} is not a base of {name}: their first {n} layers differ",
                            "squash onto an image that the Dockerfile started FROM (or a TAG on the way)")
    return n


def _same(a: Path, b: Path, content: bool = True, shared: bool = False) -> bool:
    """Same type, mode and owner (and, for files, bytes; for symlinks, target).

    ``shared``: ``a`` and ``b`` are seen through overlays whose lowerdirs all lie on one file
    system, where a non-directory reports its real inode's number (overlayfs.rst, "Inode
    properties"): the same st_ino there is the same file of the same snapshot, so its bytes
    need no reading (a base's 400 busybox links are not compared a megabyte at a time)."""
    if not os.path.lexists(b):
        return False
    sa, sb = os.lstat(a), os.lstat(b)
    if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISREG(sa.st_mode):
        if shared and (sa.st_ino, sa.st_size, sa.st_mtime_ns) == (sb.st_ino, sb.st_size, sb.st_mtime_ns):
            return True
        return not content or (sa.st_size == sb.st_size and filecmp.cmp(a, b, shallow=False))
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return sa.st_rdev == sb.st_rdev
    return True


def _ensure_parents(src_top: Path, rel: Path, out: Path) -> None:
    for parent in reversed(rel.parents[:-1] if len(rel.parts) > 1 else []):
        if not (out / parent).exists():
            _copy_entry(src_top, parent, out, parents=False)


def _copy_entry(src_top: Path, rel: Path, out: Path, parents: bool = True,
                copies: dict[tuple[int, int], Path] | None = None) -> None:
    """Copy one entry of ``src_top`` to ``out`` (type, bytes, owner, mode). ``copies``: the
    regular files with more than one name copied so far, by (st_dev, st_ino); another name of
    one of them becomes a hard link to its copy, not a second copy."""
    if parents:
        _ensure_parents(src_top, rel, out)
    src, dst = src_top / rel, out / rel
    st_ = os.lstat(src)
    if copies is not None and stat.S_ISREG(st_.st_mode) and st_.st_nlink > 1:
        first = copies.setdefault((st_.st_dev, st_.st_ino), dst)
        if first != dst:
            os.link(first, dst)
            return
    if stat.S_ISDIR(st_.st_mode):
        dst.mkdir(exist_ok=True)
    elif stat.S_ISLNK(st_.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(st_.st_mode):
        shutil.copyfile(src, dst)
    else:
        os.mknod(dst, st_.st_mode, st_.st_rdev)
    os.chown(dst, st_.st_uid, st_.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st_.st_mode):
        os.chmod(dst, stat.S_IMODE(st_.st_mode))


def measure(layers: int, files: int = 20, base: str = "busybox", *, store: st.Store | None = None) -> dict:
    """Time both methods on a synthetic stack: ``layers`` layers of ``files`` small files
    each, every layer also rewriting and deleting some of the previous one's. Timed: each
    method's own step alone, as the seed compares them ((a) :func:`merge` applies the layers;
    (b) :func:`diff` mounts both images' root filesystems and compares); not the canonical form or the layer
    written after it, which both share. The digests come from a full :func:`squash` each."""
    s = store or st.Store()
    import time
    from .tree import write_tree
    work = lab.fresh_dir(lab.root() / "tmp" / f"squash-measure-{layers}")
    prev = base
    try:
        for i in range(layers):
            spec = {f"data/l{i}/f{j}": f"{i}-{j}\n" * 50 for j in range(files)}
            if i:
                spec.update({f"data/l{i - 1}/f{j}": f"rewritten in {i}\n" for j in range(0, files, 4)})
            up = write_tree(work / f"l{i}", spec)
            if i:
                for j in range(1, files, 4):
                    overlay.make_whiteout(up / "data" / f"l{i - 1}" / f"f{j}")
            prev = mutate.add_layer(prev, up, f"measure/{layers}/l{i}", f"step {i}", store=s).name
        out = {"layers": layers}
        for method in ("merge", "diff"):
            t = time.perf_counter()
            if method == "merge":
                merge(s, prev, base, work / "cs")
            else:
                diff(s, prev, base, work / "cs", work)
            out[method] = time.perf_counter() - t
            img = squash(prev, base, f"measure/{layers}/{method}", method, store=s)
            out[method + "_digest"] = img.layers[-1].digest
        return out
    finally:
        for name in [n for n in s.refs() if n.startswith(f"measure/{layers}/")]:
            s.remove(name)
        lab.remove_tree(work)
