"""The lab root, the ledger of what the lab created, and reset (preflight is preflight.py).

Everything labkit mounts on, writes to or deletes lies under one directory, the lab
root: ``$LABKIT_HOME``, by default ``/var/lib/labkit``. Anything that must outlive a
notebook cell (a mounted overlay, later a running container or a cgroup) is written
to a ledger on disk first, so that ``labkit reset`` can take it down even after the
Jupyter kernel that made it crashed.

Layout of the lab root::

    ledger/      one JSON file per live mount, process, cgroup ... (see Entry)
    scratch/     one directory per lesson or experiment; reset empties it
    tmp/         decompressed layers, pulls in progress, rootfs being built; reset empties it
    containers/  one directory per container (container.py); reset removes them
    progress.json  the learner's exercise progress (reset keeps it)

The root is mode 0700: what layers unpack below it (setuid programs among them) is out of
reach of every other local user.

Two resets at once take turns (a lock); a process is killed only if it is still the one
recorded (its start time, /proc/PID/stat field 22, must match: PIDs are reused).
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import json
import re
import os
import stat
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import kernel, procfs
from .errors import KernelError, LabError, LessonBusy, OutsideLabRoot
from .mountinfo import mounts_under

DEFAULT_ROOT = "/var/lib/labkit"


# --- the lab root ------------------------------------------------------------------------
def root(create: bool = True) -> Path:
    """The lab root, created on first use (``$LABKIT_HOME`` or /var/lib/labkit)."""
    r = Path(os.path.realpath(os.environ.get("LABKIT_HOME", DEFAULT_ROOT)))
    if r == Path("/") or len(r.parts) < 3:
        raise OutsideLabRoot(f"LABKIT_HOME={r} is too close to /",
                             "point LABKIT_HOME at a directory of its own, such as /var/lib/labkit")
    if create and r not in _private:
        _make_private(r)
    return r


_private: set[Path] = set()


def _make_private(r: Path) -> None:
    """Create the lab root mode 0700 (as /var/lib/docker is 0710): layers may hold setuid-root
    programs and world-writable directories, and no other local user may reach them. A root
    we own with looser modes (made by an older labkit) is tightened."""
    r.parent.mkdir(parents=True, exist_ok=True)
    try:
        r.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.stat(r)
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(r, 0o700)
    _private.add(r)


def inside(path: str | os.PathLike) -> Path:
    """The real path of ``path`` (symlinks resolved) if it lies strictly below the lab root.

    Raises OutsideLabRoot otherwise: this is the one gate every mount, write and
    delete in labkit passes through.
    """
    r = root()
    real = Path(os.path.realpath(path))
    if r not in real.parents:
        raise OutsideLabRoot(
            f"{path} is outside the lab root {r}" + (f" (it resolves to {real})" if str(real) != str(path) else ""),
            "labkit only mounts on, writes to and deletes paths under its lab root; "
            "make your directories with labkit.lab.scratch(...) or set LABKIT_HOME")
    return real


def scratch(name: str, fresh: bool = True, alone: bool = False) -> Path:
    """This session's working directory for ``name``; ``fresh`` empties it first.

    Two kernels may run the same lesson (two tabs, or the original beside the learner's
    copy): the first gets ``<root>/scratch/<name>``, a second one ``<name>~2``, and each finds
    its own again on every later call (a claim file under ``scratch/.claims`` names the session;
    a dead session's directory is taken over). A lesson whose images or containers have fixed
    names in the shared store passes ``alone=True``: a second live copy is refused with
    :class:`LessonBusy` instead of removing what the first one is using.

    Emptying unmounts whatever is still mounted below it (for instance by a Jupyter
    kernel that crashed before it could clean up) before deleting anything.
    """
    from . import _explain_name_errors
    _explain_name_errors()               # every lesson's first cell comes here: hook its notebook
    d = inside(root() / "scratch" / _claim(name, alone))
    if fresh:
        return fresh_dir(d)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _claim(name: str, alone: bool) -> str:
    """The directory name under scratch/ that belongs to this session for ``name``."""
    if not name or "/" in name or name in (".", "..") or "~" in name or name.startswith("."):
        raise LabError(f"scratch name {name!r} is not a plain name",
                       "give a name such as '01-overlayfs' (no '/', '~' or leading '.')")
    claims = root() / "scratch" / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    with open(claims / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        owners = {}
        for f in claims.iterdir():
            if f.name == name or f.name.startswith(name + "~"):
                owners[f.name] = f.read_text().strip()
        mine = [n for n, s in owners.items() if s == session()]
        others = {n: s for n, s in owners.items() if s != session() and session_alive(s)}
        if alone and others:
            pid = next(iter(others.values())).partition("-")[0]
            raise LessonBusy(
                f"{name} is already running in another kernel (pid {pid}), and its images and "
                "containers have fixed names that the two copies would share",
                "keep working in that tab, or shut its kernel down (Kernel > Shut Down Kernel) "
                "and run this cell again")
        if mine:
            return min(mine, key=len)
        k = 1
        while (pick := name if k == 1 else f"{name}~{k}") in others:
            k += 1
        tmp = claims / f".{pick}.{os.getpid()}"
        tmp.write_text(session() + "\n")
        tmp.rename(claims / pick)
        return pick


def fresh_dir(path: str | os.PathLike) -> Path:
    """An empty directory at ``path`` (under the lab root), whatever was there before."""
    d = inside(path)
    if os.path.lexists(d):
        remove_tree(d)
    d.mkdir(parents=True)
    return d


def remove_tree(path: str | os.PathLike) -> None:
    """Unmount everything at or below ``path``, then delete it (never crossing a mount)."""
    p = inside(path)
    for entry in entries():
        if entry.kind == "mount" and (Path(entry.path) == p or p in Path(entry.path).parents):
            release(entry)
    _unmount_below(p)
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        rmtree(p)


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def rmtree(path: str | os.PathLike) -> None:
    """Delete the tree at ``path`` (under the lab root): see :func:`rmtree_at`."""
    p = inside(path)
    parent = os.open(p.parent, _DIR)
    try:
        rmtree_at(parent, p.name)
    finally:
        os.close(parent)


def rmtree_at(dirfd: int, name: str) -> None:
    """Delete ``name`` in directory ``dirfd``, a whole tree if it is one, depth first without
    recursion (shutil.rmtree recurses: a tree 2000 directories deep defeats it). One directory
    fd is open at a time; climbing back up through ".." is checked against the inode we came
    from. Symlinks are removed, never followed; a mount inside the tree stops it with an error."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dirfd)
        return
    fd = os.open(name, _DIR, dir_fd=dirfd)
    path: list[tuple[str, int]] = []          # (name, inode of its parent) from the top down
    try:
        while True:
            sub = None
            with os.scandir(fd) as it:
                for e in it:
                    if not e.is_dir(follow_symlinks=False):
                        os.unlink(e.name, dir_fd=fd)
                    elif e.stat(follow_symlinks=False).st_dev != st.st_dev:
                        raise LabError(f"a mount inside {name} stops its removal", "run labkit reset")
                    else:
                        sub = e.name
                        break
            if sub is not None:
                down = os.open(sub, _DIR, dir_fd=fd)
                path.append((sub, os.fstat(fd).st_ino))
                os.close(fd)
                fd = down
                continue
            if not path:
                break
            sub, parent_ino = path.pop()
            up = os.open("..", _DIR, dir_fd=fd)
            os.close(fd)
            fd = up
            if os.fstat(fd).st_ino != parent_ino:
                raise LabError(f"{name} was moved while it was being removed", "run labkit reset again")
            os.rmdir(sub, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)


def _unmount_below(p: Path, keep_own: bool = False) -> list[str]:
    """Unmount what is mounted at or below ``p``, deepest first; with ``keep_own``, not a
    mount at ``p`` itself (the lab root on a volume or disk of its own)."""
    done = []
    for m in mounts_under(p):
        if keep_own and m.mountpoint == p:
            continue
        try:
            kernel.umount2(str(m.mountpoint), kernel.MNT_DETACH)
            done.append(str(m.mountpoint))
        except KernelError as e:
            if e.errno != errno.EINVAL:  # EINVAL: already gone
                raise
    return done


# --- the ledger ---------------------------------------------------------------------------
@dataclass
class Entry:
    """One thing the lab made that outlives a function call."""
    kind: str                 # "mount", "process", "cgroup", "loop"
    path: str                 # mount point, cgroup dir, loop device; for a process its pid
    owner_pid: int = field(default_factory=os.getpid)
    note: str = ""
    created: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    start: int = 0            # a process's start time (clock ticks after boot): who the PID was
    session: str = field(default_factory=lambda: session())   # the notebook kernel (or command) it belongs to


def _ledger_dir() -> Path:
    d = root() / "ledger"
    d.mkdir(exist_ok=True)
    return d


def record(kind: str, path: str | os.PathLike, note: str = "") -> Entry:
    """Write an entry to the ledger *before* creating the thing it names.

    Mounts and loop files must lie under the lab root; cgroups must be directories of a
    ``labkit`` group in a cgroup hierarchy (they cannot live under the lab root)."""
    _check_path(kind, path)
    e = Entry(kind, str(path), note=note, start=_start_time(path) if kind == "process" else 0)
    tmp = _ledger_dir() / f".{e.id}.tmp"
    tmp.write_text(json.dumps(asdict(e)))
    tmp.rename(_ledger_dir() / f"{e.id}.json")
    return e


def _check_path(kind: str, path: str | os.PathLike) -> None:
    """What a ledger entry may name: mounts and loop files under the lab root, cgroups in a
    ``labkit`` group, processes by number. Checked when recording and again when releasing."""
    if kind == "cgroup":
        p = Path(path)
        if p.parent.name != "labkit" or not str(p).startswith("/sys/fs/cgroup/") or ".." in p.parts:
            raise OutsideLabRoot(f"{p} is not a labkit cgroup", "cgroups go in a labkit/ group under /sys/fs/cgroup")
    elif kind == "process":
        if not str(path).isdigit():
            raise LabError(f"{path!r} is not a process id", "a process entry names a PID")
    else:
        inside(path)


def forget(entry: Entry) -> None:
    """Drop an entry once the thing it names is gone."""
    (_ledger_dir() / f"{entry.id}.json").unlink(missing_ok=True)


def _start_time(pid) -> int:
    try:
        return procfs.stat(int(pid)).starttime
    except (OSError, ValueError):
        return 0


def entries(mine: bool = False) -> list[Entry]:
    """Every readable entry of the ledger, oldest first (reading it changes nothing). With
    ``mine=True``, only this session's: a lesson's clean-up checks what *it* made, while
    another lesson may be running beside it in the same lab root."""
    found = _read_ledger()[0]
    return [e for e in found if e.session == session()] if mine else found


_session: list[str] = []


def session() -> str:
    """This session's name: the process that first asks (a notebook's kernel, a ``labkit``
    command) is named by its PID and start time; the children it forks keep the name.
    Processes it *starts* (another kernel, a command) are sessions of their own."""
    if not _session:
        _session.append(f"{os.getpid()}-{_start_time(os.getpid())}")
    return _session[0]


def session_alive(name: str) -> bool:
    """True while the process that named session ``name`` ("pid-starttime") still runs."""
    pid, _, start = name.partition("-")
    return pid.isdigit() and _start_time(pid) == int(start or -1)


os.register_at_fork(before=session)     # name the session before any child can take the name


def _read_ledger() -> tuple[list[Entry], dict[Path, Entry | None]]:
    """The entries, and the corrupt files with what can still be read from them (a torn
    write from a crash still names its kind and path)."""
    out, corrupt = [], {}
    for f in (root(create=False) / "ledger").glob("*.json"):
        try:
            out.append(Entry(**json.loads(f.read_text())))
        except (ValueError, TypeError, OSError):
            text = f.read_text(errors="replace") if f.exists() else ""
            kind, path = re.search(r'"kind": "(\w+)"', text), re.search(r'"path": "([^"]*)"', text)
            corrupt[f] = Entry(kind.group(1), path.group(1), note="from a corrupt ledger file") if kind and path else None
    return sorted(out, key=lambda e: e.created), corrupt


def release(entry: Entry) -> str:
    """Take down what ``entry`` names and forget it; returns a line for the report."""
    _check_path(entry.kind, entry.path)        # a ledger file is input too: never outside the lab
    what = f"{entry.kind} {entry.path}"
    if entry.kind == "mount":
        for m in _unmount_below(Path(entry.path)):
            what += f" (unmounted {m})" if m != entry.path else ""
    elif entry.kind == "process":
        if entry.start and _start_time(entry.path) != entry.start:
            what += " (gone; its PID now belongs to another process, left alone)"
        else:
            try:
                os.kill(int(entry.path), 9)
            except ProcessLookupError:
                pass
    elif entry.kind == "loop":          # path: the backing file; detach every loop device on it
        import subprocess
        out = subprocess.run(["losetup", "-j", entry.path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True)
            what += f" (detached {line.split(':', 1)[0]})"
    elif entry.kind == "cgroup":
        _remove_cgroup(Path(entry.path))
    forget(entry)
    return what


def kill_cgroup_members(d: Path) -> None:
    """SIGKILL the processes listed in ``d/cgroup.procs`` until none is left (or 0.5 s)."""
    for _ in range(50):
        try:
            pids = [int(x) for x in (d / "cgroup.procs").read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _remove_cgroup(d: Path) -> None:
    """rmdir(2) a labkit cgroup once its processes are gone, then its ``labkit`` parent if no
    other group lives there (EBUSY: one does; ENOENT: another process removed it first)."""
    if not d.is_dir():
        return
    kill_cgroup_members(d)
    for attempt in range(3):
        try:
            d.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError:
            if attempt == 2:
                raise
            time.sleep(0.05)
    try:
        d.parent.rmdir()
    except OSError:
        pass


@atexit.register
def _release_own() -> None:
    """At interpreter exit, take down what this process made and did not release."""
    try:
        mine = [e for e in entries() if e.owner_pid == os.getpid()]
    except LabError:
        return
    for e in reversed(mine):
        try:
            release(e)
        except LabError:
            pass


# --- reset --------------------------------------------------------------------------------
def reset(dry_run: bool = False) -> list[str]:
    """Take down everything the lab made: ledger entries, stray mounts, and the scratch,
    tmp and containers directories.

    Works after a crash: the ledger is on disk, and mounts nobody recorded are found
    in /proc/self/mountinfo. Progress and the image store are kept. Returns one line per
    thing removed (or, with ``dry_run``, that would be; a dry run changes nothing).
    """
    r = root()
    with open(r / ".reset.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)         # a second reset waits, then finds it done
        good, corrupt = _read_ledger()
        order = {"process": 0, "mount": 1, "cgroup": 2, "loop": 3}
        todo = sorted(good + [e for e in corrupt.values() if e], key=lambda e: (order.get(e.kind, 9), -len(e.path)))
        dirs = [r / d for d in TRANSIENT if (r / d).exists()]
        if dry_run:
            recorded = {e.path for e in todo}
            return ([f"{e.kind} {e.path}" + (f" ({e.note})" if e.note.startswith("from a corrupt") else "")
                     for e in todo]
                    + [f"corrupt ledger file {f.name}" for f in corrupt]
                    + [f"mount {m.mountpoint} (not in the ledger)" for m in mounts_under(r)
                       if str(m.mountpoint) not in recorded and m.mountpoint != r]
                    + [f"dir {d}" for d in dirs])
        done = []
        for e in todo:
            try:
                done.append(release(e))
            except LabError as err:             # e.g. a ledger file naming a path outside the lab
                done.append(f"{e.kind} {e.path}: refused ({err.problem})")
        for f in corrupt:
            f.unlink(missing_ok=True)
            done.append(f"corrupt ledger file {f.name} (what it named was taken down)")
        done += [f"mount {m} (not in the ledger)" for m in _unmount_below(r, keep_own=True)]
        for d in dirs:
            try:
                rmtree(d)
            except (OSError, LabError):
                pass
            done.append(f"dir {d}")
        return done


TRANSIENT = ("scratch", "tmp", "containers", "userns")   # what reset empties (progress, store, snapshots stay)
