"""Lesson 01: OverlayFS, the union mount under every container image.

An overlay mount shows one directory tree, ``merged``, made of read-only ``lowerdir``
layers and one writable ``upperdir`` (with ``workdir``, an empty scratch dir on the
same filesystem). The kernel's rules (Documentation/filesystems/overlayfs.rst):

* the leftmost lowerdir is the top layer; an upper file hides the same lower path;
* writing to a lower file first copies it up into upperdir ("copy-up");
* deleting a lower file leaves a whiteout, a character device 0/0, in upperdir;
* a directory removed and re-created is marked opaque (xattr ``trusted.overlay.opaque=y``)
  so the lower directory's contents stay hidden;
* renaming a lower directory fails with EXDEV unless ``redirect_dir=on``.

This module mounts overlays (as a context manager or recorded in the lab's ledger)
and reads back what the kernel did: which layer serves each path, and the whiteouts,
opaque directories and copy-ups in an upper dir.
"""
from __future__ import annotations

import errno
import functools
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import kernel, lab
from .errors import KernelError, LabError

MAX_LOWER = 500          # the kernel's OVL_MAX_STACK
MAX_OPTIONS = 4095       # mount(2) copies one page of options, NUL included
OPTIONS = {              # option: allowed values (None: a flag without a value)
    "redirect_dir": ("on", "off", "follow", "nofollow"),
    "metacopy": ("on", "off"),
    "index": ("on", "off"),
    "xino": ("on", "off", "auto"),
    "volatile": None,
    "userxattr": None,
}


class OverlayError(LabError):
    """A mount that cannot be made as asked."""


@dataclass(frozen=True)
class Layer:
    """One directory of a stack, named for the lesson ("build", "material2" ...)."""
    name: str
    path: Path
    role: str            # "upper" or "lower"


@dataclass
class Overlay:
    """An overlay mount. ``lowerdirs`` are top first, exactly as in ``lowerdir=`` of mount(8).

    Use it as a context manager for an experiment, or call :meth:`mount` for a mount
    the learner explores across cells (it is in the lab's ledger, so ``labkit reset``
    takes it down even after a crash).
    """
    lowerdirs: list[Path]
    upperdir: Path | None
    workdir: Path | None
    merged: Path
    options: dict[str, str | None] = field(default_factory=dict)
    api: str = "auto"    # "mount" = mount(2); "new" = fsopen/fsconfig/fsmount; "auto" picks
    used_api: str = ""   # what mount() really used
    _entry: lab.Entry | None = field(default=None, repr=False)

    def __post_init__(self):
        self.lowerdirs = [Path(os.path.abspath(p)) for p in self.lowerdirs]
        _validate(self)
        self.merged = lab.inside(self.merged)          # real paths: the ledger and
        if self.upperdir:                             # mountinfo speak in real paths
            self.upperdir, self.workdir = lab.inside(self.upperdir), lab.inside(self.workdir)

    # --- the stack ---------------------------------------------------------------------
    @property
    def layers(self) -> list[Layer]:
        """Upper first, then the lower layers top to bottom: the order lookups go."""
        top = [Layer(self.upperdir.name, self.upperdir, "upper")] if self.upperdir else []
        return top + [Layer(p.name, p, "lower") for p in self.lowerdirs]

    @property
    def xattr_prefix(self) -> str:
        """``user.overlay.`` with the userxattr option, else ``trusted.overlay.``."""
        return "user.overlay." if "userxattr" in self.options else "trusted.overlay."

    def option_string(self, paths=None) -> str:
        """The ``-o`` string for mount(8)/mount(2), e.g. ``lowerdir=a:b,upperdir=u,workdir=w``."""
        lower, upper, work = paths or (self.lowerdirs, self.upperdir, self.workdir)
        parts = ["lowerdir=" + ":".join(str(p) for p in lower)]
        if upper:
            parts += [f"upperdir={upper}", f"workdir={work}"]
        parts += [k if v is None else f"{k}={v}" for k, v in self.options.items()]
        return ",".join(parts)

    # --- mounting -----------------------------------------------------------------------
    @property
    def mounted(self) -> bool:
        return self._entry is not None

    def mount_here(self) -> None:
        """Mount without a ledger entry: only for a child inside its own private mount
        namespace (a container), where the mount dies with the namespace."""
        self._make_dirs()
        (mount_new if self._pick_api() == "new" else mount_classic)(self)

    def _pick_api(self) -> str:
        """mount(2) while the options fit one page, else the new API (if it takes lowerdir+)."""
        if self.api != "auto":
            return self.api
        return "mount" if len(self.option_string()) <= MAX_OPTIONS or not lowerdir_plus() else "new"

    def _make_dirs(self) -> None:
        for d in [self.merged, *([self.upperdir, self.workdir] if self.upperdir else [])]:
            d.mkdir(parents=True, exist_ok=True)

    def mount(self) -> "Overlay":
        """Mount it (recorded in the ledger first); returns self."""
        if self.mounted:
            raise OverlayError(f"{self.merged} is already mounted by this Overlay", "call unmount() first")
        self._make_dirs()
        api = self._pick_api()
        self._entry = lab.record("mount", self.merged, f"overlay, {len(self.lowerdirs)} lower layers")
        klog = kernel.KernelLog()
        try:
            (mount_new if api == "new" else mount_classic)(self)
        except KernelError as e:
            lab.forget(self._entry)
            self._entry = None
            e = kernel.explain_with_log(e, klog, "overlay")
            # the kernel's own message may be rate-limited away, so look for the cause too
            if self.workdir and (self.workdir / "work" / "incompat" / "volatile").exists():
                e = KernelError(e.call, e.errno, e.path, "", "a volatile mount left "
                                f"{self.workdir}/work/incompat behind: remove it with "
                                "overlay.clear_volatile(workdir) and mount again", e.kernel_log)
            raise e from None
        except BaseException:
            lab.forget(self._entry)
            self._entry = None
            raise
        finally:
            klog.close()
        self.used_api = api
        return self

    def unmount(self) -> None:
        """Unmount (lazily, MNT_DETACH, so an open file in a notebook does not block it)."""
        if self._entry is not None:
            lab.release(self._entry)
            self._entry = None

    def __enter__(self) -> "Overlay":
        return self if self.mounted else self.mount()

    def __exit__(self, *exc) -> None:
        self.unmount()

    def peek(self) -> dict[str, str | None]:
        """Mount in a throwaway child (private mount namespace) and return the merged tree
        as tree.read_tree gives it. Nothing stays mounted, whatever happens."""
        from . import sandbox
        from .tree import read_tree

        def look():
            with self:
                return read_tree(self.merged)
        return sandbox.run(look)

    # --- reading the stack back ---------------------------------------------------------
    def which_layer(self, path: str) -> Layer | None:
        """The layer that serves ``path`` in merged, or None if no layer does (or it is deleted).

        Follows the lookup rules: top layer first; a whiteout or a non-directory on the
        way down ends the search; an opaque directory hides the layers below it.
        """
        parts = Path(path).parts
        for layer in self.layers:
            found, stop, parts = _lookup(layer.path, parts, self.xattr_prefix)
            if found:
                return layer
            if stop:
                return None
        return None

    def layers_with(self, path: str) -> list[Layer]:
        """Every layer that has an entry (file, dir or whiteout) at ``path``."""
        return [l for l in self.layers if os.path.lexists(l.path / path)]

    def serving_map(self) -> dict[str, str]:
        """``{path in merged: name of the layer serving it}``, read from the live mount."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.merged):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                rel = str((Path(dirpath) / name).relative_to(self.merged))
                layer = self.which_layer(rel)
                out[rel] = layer.name if layer else "?"
        return dict(sorted(out.items()))

    def hidden_paths(self) -> dict[str, str]:
        """Paths present in some lower layer but not in merged: ``{path: why}``."""
        merged = set(self.serving_map())
        out = {}
        for layer in self.layers[1:] if self.upperdir else self.layers:
            for dirpath, dirnames, filenames in os.walk(layer.path):
                for name in dirnames + filenames:
                    rel = str((Path(dirpath) / name).relative_to(layer.path))
                    if rel not in merged and not _is_whiteout(Path(dirpath) / name, self.xattr_prefix):
                        out.setdefault(rel, self._why_hidden(rel))
        return dict(sorted(out.items()))

    def _why_hidden(self, rel: str) -> str:
        parts = Path(rel).parts
        for layer in self.layers:
            p = layer.path
            for i, part in enumerate(parts):
                p = p / part
                if not os.path.lexists(p):
                    break
                if _is_whiteout(p, self.xattr_prefix):
                    return f"whiteout {Path(*parts[:i + 1])} in {layer.name}"
                if i < len(parts) - 1 and xattr(p, self.xattr_prefix + "opaque") == b"y":
                    return f"opaque directory {Path(*parts[:i + 1])} in {layer.name}"
        return "hidden"

    def changes(self) -> list["Change"]:
        """What the upper dir records: see :func:`upper_changes`."""
        if not self.upperdir:
            return []
        return upper_changes(self.upperdir, self.lowerdirs, self.xattr_prefix)


# --- what an upper dir holds ------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """One entry of an upper dir and what it means to the merged tree."""
    path: str
    kind: str        # "whiteout", "opaque", "copy-up", "metacopy", "redirect", "new"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind:<9} {self.path}" + (f"  ({self.detail})" if self.detail else "")


def upper_changes(upperdir: str | os.PathLike, lowerdirs=(), prefix: str = "trusted.overlay.") -> list[Change]:
    """Classify every entry of an upper dir by the marks the kernel left on it.

    whiteout: char device 0/0 (or a file with ``<prefix>whiteout``); opaque: a dir with
    ``<prefix>opaque=y``; redirect: ``<prefix>redirect``; metacopy: ``<prefix>metacopy``
    (metadata copied, data still below); copy-up: ``<prefix>origin`` (copied from a lower
    layer); new: none of these.
    """
    top = Path(upperdir)
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(top))
            out.append(Change(rel, *_classify(p, rel, lowerdirs, prefix)))
    return sorted(out, key=lambda c: c.path)


def _classify(p: Path, rel: str, lowerdirs, prefix: str) -> tuple[str, str]:
    if _is_whiteout(p, prefix):
        return "whiteout", "char 0/0" if stat.S_ISCHR(os.lstat(p).st_mode) else "xattr whiteout"
    if xattr(p, prefix + "opaque") == b"y":
        return "opaque", "lower contents hidden"
    redirect = xattr(p, prefix + "redirect")
    if redirect is not None:
        return "redirect", f"was {redirect.decode(errors='replace')}"
    if xattr(p, prefix + "metacopy") is not None:
        return "metacopy", "metadata only; data still in the lower layer"
    if xattr(p, prefix + "origin") is not None:
        return "copy-up", "copied from a lower layer"
    below = [Path(d).name for d in lowerdirs if os.path.lexists(Path(d) / rel)]
    return "new", f"hides {below[0]}/{rel}" if below else ""


def clear_volatile(workdir: str | os.PathLike) -> None:
    """Remove the ``work/incompat/volatile`` dir a volatile mount leaves, so the pair mounts again.

    overlayfs.rst, "Volatile mount": after a volatile mount the upper dir may have lost
    writes, so the kernel refuses to reuse it until the user says it is fine.
    """
    d = lab.inside(Path(workdir) / "work" / "incompat" / "volatile")
    if d.exists():
        lab.rmtree(d)


def whiteouts(upperdir: str | os.PathLike) -> list[str]:
    """Paths of the whiteouts (char devices 0/0) in an upper dir."""
    return [c.path for c in upper_changes(upperdir) if c.kind == "whiteout"]


def opaque_dirs(upperdir: str | os.PathLike, prefix: str = "trusted.overlay.") -> list[str]:
    """Paths of the opaque directories in an upper dir."""
    return [c.path for c in upper_changes(upperdir, prefix=prefix) if c.kind == "opaque"]


def make_whiteout(path: str | os.PathLike) -> Path:
    """Make a whiteout by hand: a character device with major and minor 0 (mknod(2))."""
    p = lab.inside(path)
    os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    return p


def make_opaque(path: str | os.PathLike, prefix: str = "trusted.overlay.") -> Path:
    """Mark a directory of an upper dir opaque (setxattr(2) ``trusted.overlay.opaque=y``)."""
    p = lab.inside(path)
    os.setxattr(p, prefix + "opaque", b"y")
    return p


def is_whiteout(path: str | os.PathLike, prefix: str = "trusted.overlay.") -> bool:
    return _is_whiteout(Path(path), prefix)


def _is_whiteout(p: Path, prefix: str) -> bool:
    st = os.lstat(p)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and xattr(p, prefix + "whiteout") is not None


def xattr(p: Path, name: str) -> bytes | None:
    """The value of extended attribute ``name`` of ``p`` (not following symlinks), or None."""
    try:
        return os.getxattr(p, name, follow_symlinks=False)
    except OSError:
        return None


def _lookup(top: Path, parts: tuple[str, ...], prefix: str) -> tuple[bool, bool, tuple[str, ...]]:
    """Look ``parts`` up in one layer.

    Returns (found here, stop looking in lower layers, the path to look up below): the
    last differs from ``parts`` when a directory on the way carries a redirect xattr
    (redirect_dir=on: a renamed lower directory points to its old name).
    """
    p, opaque_above, below = top, False, parts
    for i, part in enumerate(parts):
        p = p / part
        if not os.path.lexists(p):
            # missing here: lower layers may have it, unless a directory above was opaque
            return False, opaque_above, below
        if _is_whiteout(p, prefix):
            return False, True, below
        if i < len(parts) - 1:
            if not p.is_dir() or p.is_symlink():
                return False, True, below
            opaque_above = opaque_above or xattr(p, prefix + "opaque") == b"y"
            redirect = xattr(p, prefix + "redirect")
            if redirect:
                target = redirect.decode()
                head = Path(target.lstrip("/")).parts if target.startswith("/") else (*parts[:i], target)
                below = (*head, *parts[i + 1:])
    return True, False, below


# --- building and mounting ----------------------------------------------------------------
def stack(base: str | os.PathLike, lowers: dict[str, dict], upper: str | None = "upper",
          work: str = "work", merged: str = "merged", api: str = "auto", **options) -> Overlay:
    """Write lower layers from dicts (top first, see tree.write_tree) under ``base`` and
    describe an overlay over them (not yet mounted). Like Overlay(): lower, upper, work, merged.

        stack(d, {"material2": {"concrete": "good concrete\\n"}, "material": {...}}, upper="build")
    """
    from .tree import write_tree
    base = lab.inside(base)
    lowerdirs = [write_tree(base / name, spec) for name, spec in lowers.items()]
    if upper:
        (base / upper).mkdir(parents=True, exist_ok=True)
    return Overlay(lowerdirs, base / upper if upper else None, base / work if upper else None,
                   base / merged, options, api)


@functools.cache
def lowerdir_plus() -> bool:
    """True when the kernel takes ``lowerdir+`` through fsconfig(2) (Linux 6.8+, and the
    privilege to call fsopen(2)). Asked once per process, by building (never mounting) a
    superblock of two empty lowerdirs: before 6.5 overlay used the legacy mount context, where
    fsconfig accepts any key into its option string and only FSCONFIG_CMD_CREATE refuses it
    (Debian 12's 6.1 said yes to the key alone, then "Cumulative options too large")."""
    try:
        fd = kernel.fsopen("overlay")
    except KernelError:
        return False
    try:
        with tempfile.TemporaryDirectory(dir=lab.root(), prefix="lowerdir-probe-") as d:
            for name in ("a", "b"):
                os.mkdir(os.path.join(d, name))
                kernel.fsconfig(fd, "lowerdir+", os.path.join(d, name))
            kernel.fsconfig_create(fd)
        return True
    except KernelError:
        return False
    finally:
        os.close(fd)


def _validate(ov: Overlay) -> None:
    lab.inside(ov.merged)
    if bool(ov.upperdir) != bool(ov.workdir):
        raise OverlayError("upperdir and workdir go together", "give both, or neither for a read-only overlay")
    if not ov.lowerdirs:
        raise OverlayError("an overlay needs at least one lowerdir", "pass lowerdirs=[...]")
    if len(ov.lowerdirs) > MAX_LOWER:
        raise OverlayError(f"{len(ov.lowerdirs)} lower layers is more than the kernel's {MAX_LOWER}",
                           "squash some layers first (lesson 07)")
    for k, v in ov.options.items():
        if k not in OPTIONS:
            raise OverlayError(f"unknown overlay option {k!r}", f"use one of {', '.join(OPTIONS)}")
        if OPTIONS[k] is None and v is not None or OPTIONS[k] is not None and v not in OPTIONS[k]:
            want = "no value" if OPTIONS[k] is None else " or ".join(OPTIONS[k])
            raise OverlayError(f"overlay option {k}={v!r} is not valid", f"{k} takes {want}")
    for p in [*ov.lowerdirs, ov.upperdir, ov.workdir]:
        if p and any(c in str(p) for c in ":,\\"):
            raise OverlayError(f"the path {p} contains ':', ',' or '\\', which the option string cannot hold",
                               "rename the directory")


def mount_classic(ov: Overlay) -> None:
    """mount(2) with one option string. Past one page, retry from a child whose working
    directory is the layers' common parent, with relative paths (still the host's
    mount namespace, so the mount outlives the child)."""
    data = ov.option_string()
    if len(data) <= MAX_OPTIONS:
        kernel.mount("overlay", str(ov.merged), "overlay", 0, data)
        return
    dirs = [*ov.lowerdirs, *([ov.upperdir, ov.workdir] if ov.upperdir else [])]
    common = Path(os.path.commonpath([str(d) for d in dirs]))
    rel = [os.path.relpath(d, common) for d in dirs]
    n = len(ov.lowerdirs)
    short = ov.option_string((rel[:n], *(rel[n:] or [None, None])))
    if len(short) > MAX_OPTIONS:
        raise OverlayError(f"the option string is {len(short)} bytes even with relative paths; "
                           f"mount(2) takes {MAX_OPTIONS}", "use api='new' (Linux 6.8+) or shorter layer names")
    from . import sandbox

    def mount_here():
        os.chdir(common)
        kernel.mount("overlay", str(ov.merged), "overlay", 0, short)
    sandbox.run(mount_here, namespaces=())


def mount_new(ov: Overlay) -> None:
    """fsopen(2) + one fsconfig(2) per layer (``lowerdir+``) + fsmount(2) + move_mount(2)."""
    fd = kernel.fsopen("overlay")
    try:
        for d in ov.lowerdirs:
            _set_path(fd, "lowerdir+", d)
        if ov.upperdir:
            _set_path(fd, "upperdir", ov.upperdir)
            _set_path(fd, "workdir", ov.workdir)
        for k, v in ov.options.items():
            kernel.fsconfig(fd, k, v)
        kernel.fsconfig_create(fd, str(ov.merged))
        mfd = kernel.fsmount(fd)
        try:
            kernel.move_mount(mfd, str(ov.merged))
        finally:
            os.close(mfd)   # an open mount fd would keep the mount busy
    finally:
        os.close(fd)


def _set_path(fd: int, key: str, path: Path) -> None:
    """fsconfig(2) copies at most 255 bytes of a string. A longer path goes as an O_PATH fd:
    ``lowerdir+`` takes the fd itself (FSCONFIG_SET_FD); the other keys take the short
    name ``/proc/self/fd/N``, which the kernel resolves to the same directory."""
    if len(os.fsencode(path)) < 256:
        kernel.fsconfig(fd, key, str(path))
        return
    dfd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    try:
        if key == "lowerdir+":
            kernel.fsconfig(fd, key, dfd, what=str(path))
        else:
            kernel.fsconfig(fd, key, f"/proc/self/fd/{dfd}", what=str(path))
    finally:
        os.close(dfd)


# --- measurements used by the lesson ------------------------------------------------------
@dataclass(frozen=True)
class CopyUp:
    """One copy-up measured: the cost of opening a lower file for writing."""
    size: int                 # bytes of the lower file
    open_rdonly_s: float      # open(O_RDONLY): no copy-up
    open_write_s: float       # open(O_WRONLY|O_APPEND): copy-up of the whole file
    upper_bytes: int          # disk the upper copy takes (st_blocks * 512)
    upper_before_write: int   # disk in upper after the read-only open (should be 0)


def measure_copy_up(base: str | os.PathLike, size: int, **options) -> CopyUp:
    """Mount a one-file stack under ``base``, open the file read-only, then for writing."""
    from .tree import write_big_file
    base = lab.fresh_dir(base)
    ov = stack(base, {"lower": {}}, **options)
    write_big_file(ov.lowerdirs[0] / "big", size)
    with ov:
        f = ov.merged / "big"
        t = time.perf_counter()
        os.close(os.open(f, os.O_RDONLY))
        t_ro = time.perf_counter() - t
        before = _disk(ov.upperdir / "big")
        t = time.perf_counter()
        os.close(os.open(f, os.O_WRONLY | os.O_APPEND))
        t_w = time.perf_counter() - t
        after = _disk(ov.upperdir / "big")
    return CopyUp(size, t_ro, t_w, after, before)


def _disk(p: Path) -> int:
    try:
        return os.lstat(p).st_blocks * 512
    except FileNotFoundError:
        return 0


def try_rename(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """rename(2) in a merged tree; returns "ok" or the errno name (EXDEV for a lower dir)."""
    try:
        os.rename(src, dst)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
