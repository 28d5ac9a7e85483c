"""Lesson 03: a layer is a changeset, the tar of one upper directory.

image-spec layer.md describes a layer as a tar archive of the changes to a filesystem:
added and changed files are stored whole; a deleted path is a *whiteout*, an empty file
named ``.wh.<name>`` beside it; a directory whose lower contents are hidden is marked by
an *opaque whiteout*, an empty file ``.wh..wh..opq`` inside it. OverlayFS spells the
same two facts differently (a character device 0/0, an xattr ``trusted.overlay.opaque=y``),
and AUFS used the ``.wh.`` names directly. This module converts both ways:

* :func:`create`: an upper dir (or any dir) -> a reproducible layer tar (sorted entries,
  fixed mtimes unless asked otherwise, numeric owners), so one tree gives one DiffID;
* :func:`apply`: a layer tar -> a directory, either *flattened* (whiteouts delete, as
  image-spec "Applying Changesets" says) or in *overlay form* (whiteouts become char
  devices and opaque xattrs, so the directory can be a lowerdir as it is).

A layer may be hostile. :func:`apply` reads the whole tar once to validate it before
writing anything, and refuses with an error naming the entry: absolute names, ``..``,
duplicates, links leading outside, writing through a symlink, device nodes, unknown
entry types and oversized headers (CVE-2007-4559, CVE-2018-15664, CVE-2021-32760 ...).
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import kernel, lab
from ..errors import LabError
from ..overlay import is_whiteout, xattr
from . import digest

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
MAX_NAME = 4096
MAX_HEADER_READ = 8 << 20      # one read(2) of a header larger than this is refused
CHUNK = 1 << 20


class LayerError(LabError):
    """A layer that cannot be created or applied; the message names the entry."""


@dataclass(frozen=True)
class LayerInfo:
    """A layer tar that :func:`create` wrote."""
    path: Path
    diff_id: str          # sha256 of the tar: the layer's DiffID (uncompressed)
    size: int
    entries: int
    whiteouts: int
    opaque_dirs: int


# --- create -----------------------------------------------------------------------------------
def create(source: str | os.PathLike, out: str | os.PathLike, *, mtime: int | None = 0,
           prefix: str = "trusted.overlay.") -> LayerInfo:
    """Write the tree ``source`` as an OCI layer tar at ``out``.

    Char devices 0/0 become ``.wh.NAME``; a directory with ``<prefix>opaque=y`` gets a
    ``.wh..wh..opq`` entry; overlay xattrs are dropped; files with several links become
    tar hard links (whiteouts are devices, so the work dir's link to them never counts).
    ``mtime=None`` keeps real modification times; the default 0 makes the tar reproducible.
    """
    src = Path(source)
    if not src.is_dir():
        raise LayerError(f"{src} is not a directory", "give the upper dir (or rootfs) to turn into a layer")
    out = lab.inside(out)
    counts = {"entries": 0, "whiteouts": 0, "opaque": 0}
    links: dict[tuple[int, int], str] = {}
    with open(out, "wb") as raw, digest.HashingWriter(raw) as hw:
        with tarfile.open(fileobj=hw, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
            for rel in _walk(src):
                for info, data in _entries(src, rel, mtime, prefix, links, counts):
                    tar.addfile(info, data)
                    counts["entries"] += 1
                    if data:
                        data.close()
    return LayerInfo(out, hw.digest, hw.size, counts["entries"], counts["whiteouts"], counts["opaque"])


def _walk(top: Path):
    """Relative paths below ``top``, sorted, each directory before its contents."""
    def walk(rel: PurePosixPath):
        for name in sorted(os.listdir(top / rel)):
            child = rel / name
            yield child
            p = top / child
            if p.is_dir() and not p.is_symlink():
                yield from walk(child)
    yield from walk(PurePosixPath())


def _entries(top: Path, rel: PurePosixPath, mtime, prefix, links, counts):
    p = top / rel
    st = os.lstat(p)
    if is_whiteout(p, prefix):
        counts["whiteouts"] += 1
        yield _info(str(rel.parent / (WHITEOUT + rel.name)), tarfile.REGTYPE, st, mtime, mode=0o644), None
        return
    info = _info(str(rel), 0, st, mtime)
    _copy_xattrs(p, info, prefix)
    data = None
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(p)
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
        else:
            links[key] = str(rel)
            info.type, info.size = tarfile.REGTYPE, st.st_size
            data = open(p, "rb")
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    else:
        return   # sockets cannot be stored in a tar
    yield info, data
    if info.type == tarfile.DIRTYPE and xattr(p, prefix + "opaque") == b"y":
        counts["opaque"] += 1
        yield _info(str(rel / OPAQUE), tarfile.REGTYPE, st, mtime, mode=0o644), None


def _info(name: str, type_: bytes, st, mtime, mode: int | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = stat.S_IMODE(st.st_mode) if mode is None else mode
    info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
    info.mtime = int(st.st_mtime) if mtime is None else mtime
    return info


def _copy_xattrs(p: Path, info: tarfile.TarInfo, prefix: str) -> None:
    """Keep xattrs (as PAX SCHILY.xattr.*) except OverlayFS's own marks."""
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return
    for name in sorted(names):
        if name.startswith(OVERLAY_XATTRS):
            continue
        try:
            info.pax_headers["SCHILY.xattr." + name] = os.getxattr(p, name, follow_symlinks=False).decode()
        except (OSError, UnicodeDecodeError):
            pass   # binary values (security.capability ...) are left out of lesson layers


# --- apply ------------------------------------------------------------------------------------
@dataclass
class ApplyReport:
    """What :func:`apply` did."""
    entries: int = 0
    written: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    removed: list[str] = field(default_factory=list)


def apply(tar_path: str | os.PathLike, dest: str | os.PathLike, *, overlay_form: bool = False,
          merge: bool = False, allow_devices: bool = False, prefix: str = "trusted.overlay.") -> ApplyReport:
    """Apply the layer ``tar_path`` onto ``dest`` (under the lab root).

    Flattened (default): ``.wh.NAME`` removes NAME from lower layers' content already in
    ``dest``; ``.wh..wh..opq`` removes the directory's lower contents. Whiteouts never
    hide entries of their own layer (image-spec layer.md, "Whiteouts").
    ``overlay_form=True``: whiteouts become char devices 0/0 and opaque markers become
    ``<prefix>opaque=y``, so ``dest`` can serve as an overlay lowerdir directly.
    ``merge=True`` (with overlay_form): ``dest`` is a changeset being squashed, so an opaque
    marker also removes what earlier layers put in the directory.
    The tar is validated completely before the first write.
    """
    dest = lab.inside(dest)
    dest.mkdir(parents=True, exist_ok=True)
    validate(tar_path, dest, allow_devices=allow_devices)
    report = ApplyReport()
    written: set[str] = set()
    dir_attrs = []
    with _open(tar_path) as tar:
        for m in tar:
            name = _clean(m.name)
            if name is None:
                continue
            report.entries += 1
            base = PurePosixPath(name).name
            parent = str(PurePosixPath(name).parent)
            if base == OPAQUE:
                report.opaque_dirs += 1
                if not overlay_form and not _existing_dir(dest, parent):
                    continue          # nothing below to hide
                d = _safe_dir(dest, parent)
                if overlay_form:
                    os.setxattr(d, prefix + "opaque", b"y")
                if not overlay_form or merge:
                    for child in sorted(os.listdir(d)):
                        rel = str(PurePosixPath(parent) / child) if parent != "." else child
                        if rel not in written:
                            _remove(d / child)
                            report.removed.append(rel)
                continue
            if base.startswith(WHITEOUT):
                report.whiteouts += 1
                rel = str(PurePosixPath(parent) / base[len(WHITEOUT):])
                if rel in written or (not overlay_form and not _existing_dir(dest, parent)):
                    continue          # own-layer entries stay; a missing parent hides nothing
                target = _safe_dir(dest, parent) / base[len(WHITEOUT):]
                if os.path.lexists(target):
                    _remove(target)
                    report.removed.append(rel)
                if overlay_form:
                    os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                continue
            target = dest / name
            # a directory made where a whiteout stood must hide what is below (overlay makes
            # such a directory opaque too)
            replaces_whiteout = overlay_form and m.isdir() and os.path.lexists(target) and is_whiteout(target, prefix)
            _write_member(tar, m, name, dest, dir_attrs)
            if replaces_whiteout:
                os.setxattr(target, prefix + "opaque", b"y")
            written.add(name)
            report.written += 1
    for path, m in reversed(dir_attrs):    # children first changed the dirs' mtimes
        _set_attrs(dest, path, m)
    return report


def validate(tar_path: str | os.PathLike, dest: str | os.PathLike | None = None, *,
             allow_devices: bool = False) -> int:
    """Read every header of a layer and refuse anything unsafe; returns the entry count.

    Nothing is written. ``dest`` (if given) is where the layer will go: a symlink there
    must not be written through either.
    """
    seen: dict[str, tarfile.TarInfo] = {}
    holders: set[str] = set()       # every directory an entry so far was written into
    n = 0
    with _open(tar_path) as tar:
        try:
            for m in tar:
                n += 1
                _check_member(m, seen, holders, Path(dest) if dest else None, allow_devices)
        except tarfile.TarError as e:
            raise LayerError(f"{tar_path} is not a readable tar archive ({e})",
                             "check that the file is an uncompressed layer tar and was copied whole")
    return n


def _check_member(m: tarfile.TarInfo, seen: dict, holders: set, dest: Path | None, allow_devices: bool) -> None:
    raw = m.name
    if len(raw) > MAX_NAME or any(len(v) > MAX_NAME for v in m.pax_headers.values()):
        raise _hostile(raw[:80] + "...", f"has a name or header longer than {MAX_NAME} bytes")
    if "\0" in raw or raw.startswith("/"):
        raise _hostile(raw, "has an absolute name")
    name = _clean(raw)
    if name is None:
        return
    if ".." in PurePosixPath(name).parts:
        raise _hostile(raw, "climbs out of the layer with '..'")
    if name in seen:
        raise _hostile(raw, "appears twice in the layer (image-spec forbids duplicate entries)")
    if name in holders and not m.isdir():
        raise _hostile(raw, f"would replace the directory {name!r} that earlier entries of this layer are in "
                            "(then their modes and owners would be set through it: CVE-2021-32760)")
    base = PurePosixPath(name).name
    if base.startswith(WHITEOUT + WHITEOUT) and base != OPAQUE:
        raise _hostile(raw, "uses a reserved whiteout name (.wh..wh. is reserved, image-spec layer.md)")
    if base.startswith(WHITEOUT) and base[len(WHITEOUT):] in ("", ".", ".."):
        raise _hostile(raw, "is a whiteout that names no file (.wh. must be followed by a plain name, "
                            "not '', '.' or '..')")
    for parent in PurePosixPath(name).parents:
        p = str(parent)
        if p == ".":
            break
        if p in seen and seen[p].type != tarfile.DIRTYPE:
            raise _hostile(raw, f"would be written through {p!r}, which this layer made a "
                                f"{'symlink' if seen[p].issym() else 'non-directory'}")
        if dest is not None and p not in seen and (dest / p).is_symlink():
            raise _hostile(raw, f"would be written through the symlink {p!r} already in the target")
    if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE) and not allow_devices:
        raise _hostile(raw, "is a device node, and device nodes are not allowed here",
                       "pass allow_devices=True only for a layer you trust")
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                      tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE):
        raise _hostile(raw, f"has the unsupported tar type {m.type!r}")
    if m.islnk():
        target = m.linkname
        t = _clean(target) if not target.startswith("/") else None
        if t is None or ".." in PurePosixPath(t).parts:
            raise _hostile(raw, f"is a hard link to {target!r}, outside the layer")
        if t in seen:
            if not seen[t].isreg():
                raise _hostile(raw, f"is a hard link to {target!r}, which is not a regular file")
        elif dest is None or not _regular_inside(dest, t):
            raise _hostile(raw, f"is a hard link to {target!r}, which is not a file of this layer "
                                "or of the target")
    for key in m.pax_headers:
        if key.startswith("SCHILY.xattr.") and key[13:].startswith(OVERLAY_XATTRS):
            raise _hostile(raw, f"carries the overlay xattr {key[13:]!r}, which could forge whiteouts")
    seen[name] = m
    holders.update(str(p) for p in PurePosixPath(name).parents if str(p) != ".")


def _regular_inside(dest: Path, rel: str) -> bool:
    p = dest
    for part in PurePosixPath(rel).parts:
        p = p / part
        if p.is_symlink():
            return False
    return p.is_file()


def _hostile(name: str, problem: str, fix: str = "") -> LayerError:
    return LayerError(f"layer entry {name!r} {problem}",
                      fix or "the layer is broken or hostile: nothing was written; do not use it")


def _clean(name: str) -> str | None:
    """The entry's name without ``./`` or a trailing slash; None for the root entry."""
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    return str(PurePosixPath(*parts)) if parts else None


class _LimitedReader:
    """A file whose single reads are capped: a tar header claiming gigabytes is refused
    instead of being read into memory (tarfile reads a PAX header in one call)."""

    def __init__(self, f):
        self.f = f

    def read(self, n=-1):
        if n is None or n < 0 or n > MAX_HEADER_READ:
            raise LayerError(f"the layer asked for a read of {n} bytes at once (a header that large "
                             "is not a real layer)", "the layer is broken or hostile: do not use it")
        return self.f.read(n)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _open(tar_path) -> tarfile.TarFile:
    f = open(tar_path, "rb")
    try:
        return tarfile.open(fileobj=_LimitedReader(f), mode="r:")
    except tarfile.TarError as e:
        f.close()
        raise LayerError(f"{tar_path} is not a tar archive ({e})",
                         "layers are stored uncompressed here; check the file") from None


def _existing_dir(dest: Path, rel: str) -> bool:
    """True when ``dest/rel`` is a directory reached without any symlink."""
    p = dest
    for part in PurePosixPath(rel).parts if rel != "." else ():
        p = p / part
        if p.is_symlink() or not p.is_dir():
            return False
    return True


def _safe_dir(dest: Path, rel: str) -> Path:
    """``dest/rel`` as a real directory, made if missing, never through a symlink."""
    p = dest
    for part in PurePosixPath(rel).parts if rel != "." else ():
        p = p / part
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            _remove(p)
        if not p.exists():
            p.mkdir(mode=0o755)
    return p


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _write_member(tar: tarfile.TarFile, m: tarfile.TarInfo, name: str, dest: Path, dir_attrs) -> None:
    parent = _safe_dir(dest, str(PurePosixPath(name).parent))
    path = parent / PurePosixPath(name).name
    if m.isdir():
        if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            _remove(path)
        path.mkdir(exist_ok=True)
        dir_attrs.append((path, m))
        return
    if os.path.lexists(path):
        _remove(path)
    if m.isreg():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, tar.extractfile(m) as src:
            while chunk := src.read(CHUNK):
                out.write(chunk)
    elif m.issym():
        os.symlink(m.linkname, path)
    elif m.islnk():
        os.link(dest / _clean(m.linkname), path, follow_symlinks=False)
        return   # a hard link shares the attributes of its target
    elif m.isfifo():
        os.mkfifo(path)
    else:
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
    _set_attrs(dest, path, m)


def _set_attrs(dest: Path, path: Path, m: tarfile.TarInfo) -> None:
    """Owner, mode, xattrs and mtime of ``path`` (below ``dest``), set on a file descriptor:
    the parent directory is opened with openat2(2) RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, so
    nothing is ever changed through a symlink or outside ``dest`` (CVE-2021-32760)."""
    rel = PurePosixPath(path.relative_to(dest))
    pfd = _open_parent(dest, rel)
    try:
        name = rel.name
        if os.geteuid() == 0:
            os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        if m.isdir() or m.isreg():
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                os.chmod(fd, m.mode)
            finally:
                os.close(fd)
        elif not m.issym():                         # a fifo or device node made just now
            os.chmod(name, m.mode, dir_fd=pfd)
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                os.setxattr(f"/proc/self/fd/{pfd}/{name}", key[13:], value.encode(), follow_symlinks=False)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
    finally:
        os.close(pfd)


def _open_parent(dest: Path, rel: PurePosixPath) -> int:
    """An O_PATH fd of ``dest/rel``'s parent, reached without leaving ``dest`` or following a symlink."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
    top = os.open(dest, flags)
    if str(rel.parent) == ".":
        return top
    try:
        return kernel.openat2(top, str(rel.parent), flags, kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS)
    finally:
        os.close(top)
