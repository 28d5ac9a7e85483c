"""Lesson 02: copy-on-write after fork(2), measured page by page.

fork(2) gives the child a copy of the parent's page tables, not of its memory: both
point at the same physical frames, marked read-only. The first write by either side
faults; the kernel copies that one page into a new frame for the writer (a *minor*
fault: no disk involved) and lets the write go on. We read it all back from the kernel:

* /proc/PID/pagemap: per virtual page, bit 63 "present", bit 56 "exclusively mapped",
  bits 0-54 the physical frame number (PFN, zero unless root)
  (Documentation/admin-guide/mm/pagemap.rst);
* /proc/kpagecount: how many page tables map each frame (root only);
* /proc/PID/smaps: Shared_Dirty and Private_Dirty of one mapping (proc(5));
* getrusage(2) ru_minflt: minor faults. (Reading /proc/self/stat would fault by itself.)

Python's ``mmap.mmap(-1, n)`` is MAP_SHARED, and a shared mapping is never copied on
write: :class:`Buffer` asks for MAP_PRIVATE and turns transparent huge pages off
(MADV_NOHUGEPAGE), so every page is 4 KiB and one write copies one page.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import resource
import signal
import struct
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from . import cgroups, procfs, sandbox
from .errors import LabError

PAGE = mmap.PAGESIZE
PFN_MASK = (1 << 55) - 1


class CowError(LabError):
    """A copy-on-write experiment that cannot run as asked."""


# --- private anonymous memory -------------------------------------------------------------
class Buffer:
    """``pages`` pages of private anonymous memory: mmap(2) MAP_PRIVATE|MAP_ANONYMOUS."""

    def __init__(self, pages: int):
        if pages < 1:
            raise CowError(f"a buffer needs at least one page, not {pages}", "pass pages=1 or more")
        self.pages = pages
        self.map = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.map.madvise(mmap.MADV_NOHUGEPAGE)
        view = ctypes.c_char.from_buffer(self.map)
        self.address = ctypes.addressof(view)
        del view   # a live export would stop close()

    def touch(self, value: int = 1) -> None:
        """Write every page once, so each has a frame of its own (memset(3), fast for GiBs)."""
        ctypes.memset(self.address, value, self.pages * PAGE)

    def write(self, pages: Iterable[int], value: int = 2) -> None:
        """Write one byte at the start of each page in ``pages``."""
        for i in pages:
            self.map[i * PAGE] = value

    def close(self) -> None:
        self.map.close()

    def __enter__(self) -> "Buffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.pages * PAGE


# --- reading the kernel's view ------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    """One virtual page of a buffer as /proc/PID/pagemap describes it."""
    index: int
    present: bool
    exclusive: bool          # bit 56: mapped by this process only
    pfn: int | None          # physical frame number; None when not root (the kernel gives 0)


def pagemap(pid: int | str, address: int, pages: int) -> list[Page]:
    """The pagemap entries of ``pages`` pages from ``address`` in process ``pid``."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(address // PAGE * 8)
        data = f.read(pages * 8)
    root = os.geteuid() == 0
    out = []
    for i, (v,) in enumerate(struct.iter_unpack("<Q", data)):
        present = bool(v >> 63 & 1)
        pfn = (v & PFN_MASK) if (root and present) else None
        out.append(Page(i, present, bool(v >> 56 & 1), pfn))
    return out


def kpagecount(pfns: Iterable[int | None]) -> list[int | None]:
    """How many page-table entries map each frame (/proc/kpagecount, root only)."""
    pfns = list(pfns)
    if os.geteuid() != 0:
        return [None] * len(pfns)
    out = []
    with open("/proc/kpagecount", "rb") as f:
        for pfn in pfns:
            if pfn is None:
                out.append(None)
                continue
            f.seek(pfn * 8)
            out.append(struct.unpack("<Q", f.read(8))[0])
    return out


def smaps(pid: int | str, address: int) -> dict[str, int]:
    """The /proc/PID/smaps fields (in KiB) of the mapping that contains ``address``."""
    fields: dict[str, int] = {}
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                if inside:
                    break
                inside = start <= address < end
            elif inside and line.rstrip().endswith("kB"):
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0])
    if not fields:
        raise CowError(f"no mapping of process {pid} contains {address:#x}", "is the buffer still open?")
    return fields


def rollup(pid: int | str = "self") -> dict[str, int]:
    """Totals over every mapping of a process (/proc/PID/smaps_rollup), in KiB."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.rstrip().endswith("kB"):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def minor_faults() -> int:
    """Minor faults of this process so far (getrusage(2); it does not fault by itself)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def proc_minor_faults(pid: int) -> int:
    """Minor faults of another process, field 10 of /proc/PID/stat (proc(5))."""
    return procfs.stat(pid).minflt


# --- a forked child that shares the buffer --------------------------------------------------
class Child:
    """A fork(2) of this process that shares ``buf`` copy-on-write and answers questions.

    The child (a sandbox.Child) sits in a loop reading commands from its channel; every
    answer is measured in the child itself. Use it as a context manager: the child is
    killed and reaped at the end, on an exception and on Ctrl-C.
    """

    def __init__(self, buf: Buffer):
        self.buf = buf
        self._child = sandbox.Child(_serve, buf, note="cow child")
        self.pid = self._child.pid

    # what the child can do
    def pagemap(self) -> list[Page]:
        """The child's pagemap for the buffer (read by the child, /proc/self/pagemap)."""
        return self._call("pagemap")

    def write(self, pages: Iterable[int], value: int = 2) -> int:
        """Write one byte to each page in the child; returns the minor faults that took."""
        return self._call("write", list(pages), value)

    def run(self, fn: Callable, *args):
        """Call ``fn(buf, *args)`` in the child; returns (its result, minor faults it took).

        ``fn`` goes by name (pickle), so it must have existed when the child was forked."""
        try:
            pickle.dumps(fn)
        except Exception:
            raise CowError(f"{getattr(fn, '__name__', fn)!r} cannot be sent to the child",
                           "define it with def at the top level of a cell (not a lambda), "
                           "before the child is started") from None
        return self._call("run", fn, args)

    def smaps(self) -> dict[str, int]:
        """The child's smaps fields for the buffer's mapping (KiB)."""
        return smaps(self.pid, self.buf.address)

    def minor_faults(self) -> int:
        return proc_minor_faults(self.pid)

    def close(self) -> None:
        """Ask the child to exit, and reap it (kill it if it does not answer)."""
        if self.pid is None:
            return
        try:
            self._call("exit")
        except (LabError, OSError, EOFError):
            pass
        self._reap()

    def _reap(self) -> None:
        self.pid = None
        self._child.close()

    def _call(self, *msg):
        if self.pid is None:
            raise CowError("this child has exited", "start a new one: cow.Child(buf)")
        try:
            self._child.send(msg)
            answer = self._child.recv(raise_failure=False)
        except BaseException:      # Ctrl-C or a dead child: never leave it behind
            self._reap()
            raise
        if isinstance(answer, sandbox.Failure):
            raise answer.error     # the command failed in the child; the child lives on
        return answer

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(ch: sandbox.Channel, buf: Buffer) -> None:
    """The child's loop: answer commands until told to exit or the parent goes away."""
    sys.stdout = sys.stderr = open(os.devnull, "w")     # Jupyter's streams are the parent's
    signal.signal(signal.SIGINT, signal.SIG_IGN)         # the parent decides when we stop
    while True:
        try:
            name, *args = ch.recv()
        except EOFError:
            return
        if name == "exit":
            ch.send(None)
            return
        try:
            ch.send(_COMMANDS[name](buf, *args))
        except Exception as e:      # noqa: BLE001 - the parent re-raises it
            ch.send(sandbox.Failure(e))


def _cmd_write(buf: Buffer, pages: list[int], value: int) -> int:
    before = minor_faults()
    buf.write(pages, value)
    return minor_faults() - before


def _cmd_run(buf: Buffer, fn, args):
    before = minor_faults()
    result = fn(buf, *args)
    return result, minor_faults() - before


_COMMANDS = {
    "pagemap": lambda buf: pagemap("self", buf.address, buf.pages),
    "write": _cmd_write,
    "run": _cmd_run,
}


@dataclass(frozen=True)
class PageRow:
    """One page seen from both sides of a fork."""
    index: int
    parent_pfn: int | None
    child_pfn: int | None
    parent_exclusive: bool
    child_exclusive: bool
    mapcount: int | None     # from /proc/kpagecount for the parent's frame

    @property
    def shared(self) -> bool:
        """Same frame: equal PFNs when we can see them, else neither side exclusive."""
        if self.parent_pfn is not None and self.child_pfn is not None:
            return self.parent_pfn == self.child_pfn
        return not (self.parent_exclusive or self.child_exclusive)


def compare(buf: Buffer, child: Child) -> list[PageRow]:
    """Each page of ``buf`` as the parent and the child see it now."""
    mine, theirs = pagemap("self", buf.address, buf.pages), child.pagemap()
    counts = kpagecount(p.pfn for p in mine)
    return [PageRow(a.index, a.pfn, b.pfn, a.exclusive, b.exclusive, c)
            for a, b, c in zip(mine, theirs, counts)]


def format_pages(rows: list[PageRow]) -> str:
    """The rows as text, PFNs in hex (or '-' without root)."""
    fmt = lambda pfn: "-" if pfn is None else f"{pfn:#x}"
    lines = [f"{'page':>4} {'parent PFN':>11} {'child PFN':>11} {'mapcount':>8}  "
             f"{'excl. parent/child':<18} shared"]
    for r in rows:
        lines.append(f"{r.index:>4} {fmt(r.parent_pfn):>11} {fmt(r.child_pfn):>11} "
                     f"{'-' if r.mapcount is None else r.mapcount:>8}  "
                     f"{str(r.parent_exclusive):>5} / {str(r.child_exclusive):<10} {'yes' if r.shared else 'no'}")
    return "\n".join(lines)


def faults_for_writes(pages: int, writes: int, repeat: int = 1) -> int:
    """Fork a child sharing a touched ``pages``-page buffer; it writes ``writes`` distinct
    pages (``repeat`` times each). Returns the child's minor faults for those writes."""
    if writes > pages:
        raise CowError(f"cannot write {writes} distinct pages of a {pages}-page buffer",
                       "pass writes <= pages")
    with Buffer(pages) as buf:
        buf.touch()
        with Child(buf) as child:
            return child.write([i for i in range(writes) for _ in range(repeat)])


@dataclass(frozen=True)
class DirtyState:
    """Shared_Dirty and Private_Dirty of the buffer's mapping in parent and child (KiB)."""
    when: str
    parent_shared: int
    parent_private: int
    child_shared: int | None
    child_private: int | None


def dirty_story(pages: int = 16384, child_writes: int = 8192) -> list[DirtyState]:
    """smaps of the buffer before the fork, after it, after the child writes, after it exits."""
    out = []
    with Buffer(pages) as buf:
        buf.touch()

        def state(when, child=None):
            p = smaps("self", buf.address)
            c = child.smaps() if child else {}
            out.append(DirtyState(when, p["Shared_Dirty"], p["Private_Dirty"],
                                  c.get("Shared_Dirty"), c.get("Private_Dirty")))
        state("before fork")
        with Child(buf) as child:
            state("after fork", child)
            child.write(range(child_writes))
            state(f"child wrote {child_writes} pages", child)
        state("child exited")
    return out


@dataclass(frozen=True)
class SpawnCost:
    """Time for the parent to get a child started, with ``mib`` MiB touched."""
    mib: int
    fork_s: float
    posix_spawn_s: float


SPAWN_SIZES = (1, 64, 256, 1024, 2048, 4096)     # MiB


def spawn_sizes(sizes: tuple[int, ...] = SPAWN_SIZES, room: int | None = None) -> list[int]:
    """The ``sizes`` (MiB) that spawn_cost can touch here: each at most half of ``room`` (MiB;
    by default what this lab may still use, cgroups.memory_room), so that a small VM or a class
    container's memory limit does not get the experiment killed. Always the smallest size."""
    room = cgroups.memory_room() >> 20 if room is None else room
    return [m for m in sizes if m == sizes[0] or m <= room // 2]


def spawn_cost(mib: int, repeat: int = 5) -> SpawnCost:
    """In a throwaway child (so the notebook stays small): touch ``mib`` MiB, then time
    fork(2) (copies page tables) and posix_spawn(3) (vfork-style: copies nothing)."""
    return sandbox.run(_spawn_cost, mib, repeat, namespaces=(), timeout=600)


def _spawn_cost(mib: int, repeat: int) -> SpawnCost:
    import statistics
    buf = Buffer(max(1, mib * 2**20 // PAGE))
    buf.touch()
    forks, spawns = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forks.append(time.perf_counter() - t)
        os.waitpid(pid, 0)
        t = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["true"], {})
        spawns.append(time.perf_counter() - t)
        os.waitpid(pid, 0)
    return SpawnCost(mib, statistics.median(forks), statistics.median(spawns))


# --- Python's reference counts ---------------------------------------------------------------
REFCOUNT_SCENARIOS = (  # (name, gc.freeze() in the parent before fork?, what the child does)
    ("child does nothing", False, "nothing"),
    ("child reads every object", False, "read"),
    ("child runs gc.collect()", False, "collect"),
    ("gc.freeze(), child runs gc.collect()", True, "collect"),
    ("gc.freeze(), child reads every object", True, "read"),
)


def refcount_story(objects: int = 1_000_000) -> dict[str, float]:
    """MiB each scenario dirties in a child forked from a process holding ``objects`` lists.

    Reading a Python object writes to it: the reference count in its header goes up
    and down, so the page holding it is copied. gc.collect() writes to every tracked
    object's GC header; gc.freeze() (Python 3.7+) moves the objects to a permanent
    generation the collector skips, but cannot stop reference counting.
    """
    return sandbox.run(_refcount_story, objects, namespaces=(), timeout=600)


def _refcount_story(n: int) -> dict[str, float]:
    import gc
    objs = [[i] for i in range(n)]       # lists: containers the collector tracks
    gc.collect()
    out = {}
    for name, freeze, action in REFCOUNT_SCENARIOS:
        if freeze:
            gc.freeze()
        out[name] = _dirtied_by_child(objs, action)
        if freeze:
            gc.unfreeze()
    return out


def _dirtied_by_child(objs: list, action: str) -> float:
    return sandbox.run(_dirty, objs, action, namespaces=())


def _dirty(objs: list, action: str) -> float:
    """In the child: MiB of private pages that ``action`` on ``objs`` dirtied."""
    import gc
    gc.disable()                      # only the action we ask for may touch objects
    before = rollup()["Private_Dirty"]
    if action == "read":
        for o in objs:
            pass
    elif action == "collect":
        gc.collect()
    return (rollup()["Private_Dirty"] - before) / 1024


# --- a child writing at a chosen rate (the live meter) ----------------------------------------
@dataclass(frozen=True)
class Sample:
    t: float             # seconds since the start
    written: int         # pages the child has written so far
    faults: int          # minor faults the child's writes took so far
    private_kib: int     # Private_Dirty of the buffer's mapping in the child


def write_at_rate(child: Child, pages: int, rate: float, on_sample: Callable | None = None,
                  stop=None, tick: float = 0.1) -> list[Sample]:
    """Have ``child`` write ``pages`` pages at about ``rate`` pages a second, sampling its
    faults and Private_Dirty after each batch. ``stop`` (a threading.Event) ends it early."""
    per_tick = max(1, int(rate * tick))
    t0 = time.monotonic()
    samples, written, faults = [], 0, 0
    while written < pages and not (stop and stop.is_set()):
        batch = range(written, min(pages, written + per_tick))
        faults += child.write(batch)        # counted in the child, around the writes only
        written = batch.stop
        s = Sample(time.monotonic() - t0, written, faults, child.smaps()["Private_Dirty"])
        samples.append(s)
        if on_sample:
            on_sample(s)
        time.sleep(max(0.0, t0 + len(samples) * tick - time.monotonic()))
    return samples
