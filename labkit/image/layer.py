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
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import kernel, lab
from ..errors import LabError
from ..overlay import is_whiteout, xattr
from . import digest, tarstream

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
    """Relative paths below ``top``, sorted, each directory before its contents. Iterative (a
    tree 2000 directories deep must not exhaust Python's recursion limit); a path longer than
    PATH_MAX is refused, since no layer entry may have such a name."""
    stack = [(PurePosixPath(), iter(sorted(os.listdir(top))))]
    while stack:
        rel, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        child = rel / name
        p = top / child
        if len(os.fsencode(p)) >= MAX_NAME:
            raise LayerError(f"{str(p)[:60]}... is longer than {MAX_NAME} bytes (PATH_MAX), "
                             f"{len(child.parts)} directories deep", "a layer cannot hold it: make the tree shallower")
        yield child
        if p.is_dir() and not p.is_symlink():
            stack.append((child, iter(sorted(os.listdir(p)))))


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
        try:      # binary values (security.capability) travel as PAX hdrcharset=BINARY, as GNU tar's do
            value = os.getxattr(p, name, follow_symlinks=False)
        except OSError:
            continue
        info.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")


# --- apply ------------------------------------------------------------------------------------
@dataclass
class ApplyReport:
    """What :func:`apply` did."""
    entries: int = 0
    written: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    removed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Checked:
    """What :func:`validate` found in a layer that it accepted."""
    entries: int
    bytes: int            # the sum of the regular files' sizes


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

    Every entry is checked before it is written, and writes go through directory file
    descriptors that never leave ``dest``; file data is copied by the kernel (sendfile(2)).
    Into an empty ``dest`` (a new snapshot, an unpack) the layer is read once, and a refusal
    empties ``dest`` again. Into a ``dest`` that holds files (a flatten, a squash, ADD) the
    whole layer is checked first, with the free space, so a refusal has nothing to undo.
    """
    dest = lab.inside(dest)
    dest.mkdir(parents=True, exist_ok=True)
    where = f"layer {Path(tar_path).name}"
    with open(tar_path, "rb") as f, _Target(dest) as tgt:
        if "." not in tgt.made:
            checked = _Checker(tar_path, dest, allow_devices)
            for _ in checked.members(f):
                pass
            ensure_space(dest, checked.bytes, where)
        checker = _Checker(tar_path, dest, allow_devices, space=(dest, where))
        try:
            return _write(checker.members(f), f.fileno(), tgt, overlay_form, merge, prefix)
        except BaseException:
            if "." in tgt.made:
                tgt.clear()
            raise


def _write(members, tfd: int, tgt: "_Target", overlay_form: bool, merge: bool, prefix: str) -> ApplyReport:
    """The writing half of :func:`apply`: every member, in order, as it is checked."""
    report = ApplyReport()
    written: set[str] = set()
    dir_attrs = []
    for name, m in members:
        if name is None:
            continue
        report.entries += 1
        parent, _, base = name.rpartition("/")
        parent = parent or "."
        if base == OPAQUE:
            report.opaque_dirs += 1
            if not overlay_form and not tgt.is_dir(parent):
                continue          # nothing below to hide
            d = tgt.dir(parent)
            if overlay_form:
                os.setxattr(d, prefix + "opaque", b"y")
            if not overlay_form or merge:
                for child in sorted(os.listdir(d)):
                    crel = child if parent == "." else f"{parent}/{child}"
                    if crel not in written:
                        tgt.remove(crel)
                        report.removed.append(crel)
            continue
        if base.startswith(WHITEOUT):
            report.whiteouts += 1
            hidden = base[len(WHITEOUT):]
            hrel = hidden if parent == "." else f"{parent}/{hidden}"
            if hrel in written or (not overlay_form and not tgt.is_dir(parent)):
                continue          # own-layer entries stay; a missing parent hides nothing
            d = tgt.dir(parent)
            if _lstat(d, hidden) is not None:
                tgt.remove(hrel)
                report.removed.append(hrel)
            if overlay_form:
                os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=d)
                tgt.made.discard(parent)      # it now holds an entry the layer may write over
            continue
        # a directory made where a whiteout stood must hide what is below (overlay makes
        # such a directory opaque too)
        replaces_whiteout = False
        if overlay_form and m.isdir() and parent not in tgt.made:
            old = _lstat(tgt.dir(parent), base)
            replaces_whiteout = old is not None and stat.S_ISCHR(old.st_mode) and old.st_rdev == 0
        _write_member(tfd, m, tgt, parent, base, dir_attrs)
        if replaces_whiteout:
            os.setxattr(tgt.dir(name), prefix + "opaque", b"y")
        written.add(name)
        report.written += 1
    for rel, m in reversed(dir_attrs):    # children first changed the dirs' mtimes
        _set_attrs(tgt.dir(rel), m)
    return report


def validate(tar_path: str | os.PathLike, dest: str | os.PathLike | None = None, *,
             allow_devices: bool = False) -> Checked:
    """Read every header of a layer and refuse anything unsafe.

    Nothing is written. ``dest`` (if given) is where the layer will go: a symlink there
    must not be written through either.
    """
    checker = _Checker(tar_path, Path(dest) if dest else None, allow_devices)
    with open(tar_path, "rb") as f:
        for _ in checker.members(f):
            pass
    return Checked(checker.entries, checker.bytes)


class _Checker:
    """The members of a layer as (clean name, member), each checked (:func:`_check_member`)
    before it is handed on.
    With ``space=(dest, what)``, the regular files' sizes are also counted against the free
    space found at the start (statvfs(3)), as :func:`ensure_space` would for the whole layer."""

    def __init__(self, tar_path, dest: Path | None, allow_devices: bool, space: tuple | None = None):
        self.tar_path, self.dest, self.allow_devices, self.space = tar_path, dest, allow_devices, space
        self.entries = self.bytes = 0

    def members(self, f):
        seen: dict[str, bytes] = {}       # name -> tar type of every entry so far
        holders: set[str] = set()         # every directory an entry so far was written into
        free = _free(self.space[0]) - MIN_FREE if self.space else None
        try:
            for m in tarstream.members(f, MAX_HEADER_READ):
                self.entries += 1
                name = _check_member(m, seen, holders, self.dest, self.allow_devices)
                self.bytes += m.size
                if free is not None and self.bytes > free:
                    ensure_space(self.space[0], self.bytes, self.space[1])
                yield name, m
        except tarstream.TarError as e:
            raise LayerError(f"{self.tar_path} is not a readable tar archive ({e.problem})",
                             e.fix or "check that the file is an uncompressed layer tar and was copied whole") from None


def _free(where: Path) -> int:
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


MIN_FREE = 32 << 20     # what a layer must leave free on the lab's filesystem


def ensure_space(where: Path, need: int, what: str) -> None:
    """Refuse to write ``need`` more bytes under ``where`` if that would leave less than
    MIN_FREE on its filesystem (statvfs(3)): a gzip bomb or a sparse entry claiming terabytes
    stops with an error naming it instead of filling the disk."""
    free = _free(where)
    if need + MIN_FREE > free:
        raise LayerError(f"{what} needs {need >> 20} MiB but only {free >> 20} MiB are free under {where} "
                         f"(labkit keeps {MIN_FREE >> 20} MiB spare); nothing was written",
                         "free some space (labkit reset removes old experiments) or do not use this layer")


_TYPES = (tarstream.REGULAR, tarstream.DIRECTORY, tarstream.SYMLINK, tarstream.HARDLINK,
          tarstream.FIFO, tarstream.CHAR, tarstream.BLOCKDEV)
XATTR_SIZE_MAX = 65536         # the largest value setxattr(2) takes


def _check_member(m: tarstream.Member, seen: dict, holders: set, dest: Path | None, allow_devices: bool) -> None:
    raw = m.name
    if len(raw) > MAX_NAME or len(m.linkname) > MAX_NAME:
        raise _hostile(raw[:80] + "...", f"has a name or link target longer than {MAX_NAME} bytes")
    if "\0" in raw or raw.startswith("/"):
        raise _hostile(raw, "has an absolute name")
    name = _clean(raw)
    if name is None:
        if not m.isdir():          # CVE-2021-29136: a root entry that is a symlink to "/"
            raise _hostile(raw, "is the layer's root but not a directory")
        return None
    parts = name.split("/")
    if ".." in parts:
        raise _hostile(raw, "climbs out of the layer with '..'")
    if name in seen:
        raise _hostile(raw, "appears twice in the layer (image-spec forbids duplicate entries)")
    if name in holders and not m.isdir():
        raise _hostile(raw, f"would replace the directory {name!r} that earlier entries of this layer are in "
                            "(then their modes and owners would be set through it: CVE-2021-32760)")
    base = parts[-1]
    if base.startswith(WHITEOUT + WHITEOUT) and base != OPAQUE:
        raise _hostile(raw, "uses a reserved whiteout name (.wh..wh. is reserved, image-spec layer.md)")
    if base.startswith(WHITEOUT) and base[len(WHITEOUT):] in ("", ".", ".."):
        raise _hostile(raw, "is a whiteout that names no file (.wh. must be followed by a plain name, "
                            "not '', '.' or '..')")
    parent = name.rpartition("/")[0]
    # every ancestor of a directory in ``holders``, or of a directory entry already checked, was
    # checked when that went in: one check per entry, not one per ancestor (a 2000-deep tree)
    if not parent or parent in holders:
        parents = []
    elif seen.get(parent) == tarstream.DIRECTORY:
        parents = [parent]
    else:
        parents = ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
    for p in parents:
        if p in seen and seen[p] != tarstream.DIRECTORY:
            raise _hostile(raw, f"would be written through {p!r}, which this layer made a "
                                f"{'symlink' if seen[p] == tarstream.SYMLINK else 'non-directory'}")
        if dest is not None and p not in seen and p not in holders and (dest / p).is_symlink():
            raise _hostile(raw, f"would be written through the symlink {p!r} already in the target")
    if m.type in (tarstream.CHAR, tarstream.BLOCKDEV) and not allow_devices:
        raise _hostile(raw, "is a device node, and device nodes are not allowed here",
                       "pass allow_devices=True only for a layer you trust")
    if m.type not in _TYPES:
        raise _hostile(raw, f"has the unsupported tar type {m.type.decode('latin-1')!r}")
    if m.uid < 0 or m.gid < 0:
        raise _hostile(raw, f"has a negative owner ({m.uid}:{m.gid})")
    if m.type == tarstream.HARDLINK:
        target = m.linkname
        t = _clean(target) if not target.startswith("/") else None
        if t is None or ".." in t.split("/"):
            raise _hostile(raw, f"is a hard link to {target!r}, outside the layer")
        if t in seen:
            if seen[t] != tarstream.REGULAR:
                raise _hostile(raw, f"is a hard link to {target!r}, which is not a regular file")
        elif dest is None or not _regular_inside(dest, t):
            raise _hostile(raw, f"is a hard link to {target!r}, which is not a file of this layer "
                                "or of the target")
    for key, value in (m.xattrs or {}).items():
        if key.startswith(OVERLAY_XATTRS):
            raise _hostile(raw, f"carries the overlay xattr {key!r}, which could forge whiteouts")
        if len(value) > XATTR_SIZE_MAX:
            raise _hostile(raw, f"carries an xattr value of {len(value)} bytes (the kernel takes {XATTR_SIZE_MAX})")
    seen[name] = m.type
    holders.update(parents)
    return name


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
    if "/." not in name and "//" not in name and not name.startswith(".") and not name.endswith("/") and name:
        return name                   # already clean: the usual case
    return "/".join(p for p in name.split("/") if p and p != ".") or None


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Target:
    """The directory a layer is applied to, reached only through file descriptors.

    ``dir(rel)`` opens (making it if missing) a directory below the target with openat2(2)
    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, so no write can leave the target or pass through a
    symlink, whatever the layer or anyone else did to the tree; the fds are cached, since a
    layer writes many entries into one directory.
    """
    FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    KEEP = 256

    def __init__(self, dest: Path):
        self.fd = os.open(dest, self.FLAGS | os.O_CLOEXEC)
        self.dirs: dict[str, int] = {}
        with os.scandir(self.fd) as it:      # directories made here hold only what we write
            self.made: set[str] = set() if next(it, None) else {"."}
        self.euid, self.egid, self.umask = os.geteuid(), os.getegid(), _umask()
        # directories whose new files are already ours with no set-group-ID inheritance: a file
        # made there for the header's owner when that is us needs no chown(2)
        self.plain: set[str] = {"."} if self._plain(self.fd) else set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._forget("")
        os.close(self.fd)

    def dir(self, rel: str) -> int:
        """An fd of directory ``rel`` ('.' is the target), made (0755) where missing and put in
        place of a non-directory. Walks down from the deepest directory already open, one
        name at a time (a tree may be thousands of directories deep)."""
        if rel == "." or rel == "":
            return self.fd
        fd = self.dirs.get(rel)
        if fd is not None:
            return fd
        parts = rel.split("/")
        i = len(parts) - 1
        while i > 0 and "/".join(parts[:i]) not in self.dirs:
            i -= 1
        if len(self.dirs) >= self.KEEP:         # full: keep only the ancestor we walk on from
            keep = "/".join(parts[:i]) if i else None
            for key in [k for k in self.dirs if k != keep]:
                os.close(self.dirs.pop(key))
        fd = self.dirs["/".join(parts[:i])] if i else self.fd
        for j in range(i, len(parts)):
            here = "/".join(parts[:j + 1])
            st = _lstat(fd, parts[j])
            if st is not None and not stat.S_ISDIR(st.st_mode):
                self.remove(here)
                st = None
            if st is None:
                os.mkdir(parts[j], 0o755, dir_fd=fd)
                self.made.add(here)
            fd = kernel.openat2(fd, parts[j], self.FLAGS, kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS)
            self.dirs[here] = fd
            if st is None and self._plain(fd):
                self.plain.add(here)
        return fd

    def _plain(self, fd: int) -> bool:
        st = os.fstat(fd)
        return st.st_gid == self.egid and not st.st_mode & stat.S_ISGID

    def is_dir(self, rel: str) -> bool:
        """True when ``rel`` is a directory reached without any symlink."""
        fd = self.fd
        opened = []
        try:
            for part in PurePosixPath(rel).parts if rel not in (".", "") else ():
                st = _lstat(fd, part)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    return False
                fd = os.open(part, self.FLAGS | os.O_CLOEXEC, dir_fd=fd)
                opened.append(fd)
            return True
        finally:
            for fd in opened:
                os.close(fd)

    def remove(self, rel: str) -> None:
        """Remove ``rel`` (a whole tree if it is a directory), never following a symlink."""
        p = PurePosixPath(rel)
        parent = self.dir(str(p.parent))
        st = _lstat(parent, p.name)
        if st is None:
            return
        self._forget(rel)
        for kept in (self.made, self.plain):
            kept.difference_update([k for k in kept if k == rel or k.startswith(rel + "/")])
        lab.rmtree_at(parent, p.name)

    def clear(self) -> None:
        """Empty the target again (after a refusal, when it was empty before)."""
        self._forget("")
        for name in os.listdir(self.fd):
            lab.rmtree_at(self.fd, name)
        self.made = {"."}

    def _forget(self, rel: str) -> None:
        """Close the cached fds of ``rel`` and everything below it ('' is all)."""
        for key in [k for k in self.dirs if not rel or k == rel or k.startswith(rel + "/")]:
            os.close(self.dirs.pop(key))


def _write_member(tfd: int, m: tarstream.Member, tgt: _Target, parent: str, base: str, dir_attrs) -> None:
    """Create one entry named ``base`` in directory ``parent`` of the target, by fd; a regular
    file's data is copied from the tar file ``tfd`` by sendfile(2)."""
    rel = base if parent == "." else f"{parent}/{base}"
    pfd = tgt.dir(parent)
    old = None if parent in tgt.made else _lstat(pfd, base)     # a directory we made holds nothing else
    if m.type == tarstream.DIRECTORY:
        if old is not None and not stat.S_ISDIR(old.st_mode):
            tgt.remove(rel)
        tgt.dir(rel)
        dir_attrs.append((rel, m))
        return
    if old is not None:
        tgt.remove(rel)
    if m.type == tarstream.REGULAR:
        # made with its final permission bits (the lab root is 0700: nobody else can reach it
        # meanwhile); chown(2) and chmod(2) only where the owner or those bits are not right yet
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     m.mode & 0o777, dir_fd=pfd)
        try:
            if m.data is not None:
                _write_all(fd, m.data)
            else:
                _copy(fd, tfd, m)
            owned = parent in tgt.plain and m.uid == tgt.euid and m.gid == tgt.egid
            if not owned and tgt.euid == 0:
                os.chown(fd, m.uid, m.gid)
            if not owned or m.mode & 0o7000 or m.mode & tgt.umask:
                os.chmod(fd, m.mode)      # after chown, which clears set-user-ID bits
            for key, value in (m.xattrs or {}).items():
                os.setxattr(fd, key, value)
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
        return
    if m.type == tarstream.HARDLINK:
        target = PurePosixPath(_clean(m.linkname))
        os.link(target.name, base, src_dir_fd=tgt.dir(str(target.parent)), dst_dir_fd=pfd, follow_symlinks=False)
        return   # a hard link shares the attributes of its target
    if m.type == tarstream.SYMLINK:
        os.symlink(m.linkname, base, dir_fd=pfd)
    elif m.type == tarstream.FIFO:
        os.mkfifo(base, 0o600, dir_fd=pfd)
    else:
        kind = stat.S_IFCHR if m.type == tarstream.CHAR else stat.S_IFBLK
        os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
    _set_attrs(pfd, m, base)


def _copy(fd: int, tfd: int, m: tarstream.Member) -> None:
    """The member's data, from the tar file to ``fd``, by the kernel (sendfile(2))."""
    offset, left = m.offset, m.size
    while left:
        sent = os.sendfile(fd, tfd, offset, min(left, 1 << 30))
        if not sent:
            raise LayerError(f"layer entry {m.name!r} ends before its {m.size} bytes",
                             "the tar file changed while it was applied, or is cut short")
        offset += sent
        left -= sent


def _umask() -> int:
    """This process's umask, read from /proc/self/status (umask(2) can only be read by setting
    it, which would race with a notebook's other threads)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return 0o777                              # unknown: always chmod


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_attrs(fd: int, m: tarstream.Member, name: str | None = None) -> None:
    """Owner, mode, xattrs and mtime from the tar header, set on the file descriptor ``fd`` of
    the file itself (``name`` None) or on ``name`` inside directory fd ``fd`` without following
    it: never by a path that a symlink could redirect (CVE-2021-32760). Owners are the header's
    numbers: no user name is looked up, so nothing of the image (its NSS libraries, its
    /etc/passwd) is ever consulted or run (CVE-2019-14271)."""
    if name is None:
        if os.geteuid() == 0:
            os.chown(fd, m.uid, m.gid)
        os.chmod(fd, m.mode)          # after chown, which clears set-user-ID bits
        for key, value in (m.xattrs or {}).items():
            os.setxattr(fd, key, value)
        os.utime(fd, (m.mtime, m.mtime))
        return
    if os.geteuid() == 0:
        os.chown(name, m.uid, m.gid, dir_fd=fd, follow_symlinks=False)
    if m.type != tarstream.SYMLINK:   # a fifo or device node made just now
        os.chmod(name, m.mode, dir_fd=fd)
    for key, value in (m.xattrs or {}).items():
        os.setxattr(f"/proc/self/fd/{fd}/{name}", key, value, follow_symlinks=False)
    os.utime(name, (m.mtime, m.mtime), dir_fd=fd, follow_symlinks=False)
