"""cgroups: limit what a group of processes may use, on v1, v2 or a mix of both.

A host may mount every controller in the unified v2 tree (/sys/fs/cgroup), every
controller in its own v1 hierarchy, or a mix ("hybrid": this lab's CI machine has
memory, pids and cpu on v1 and an empty v2 tree beside them). So we never hard-code
a path: we read /proc/self/mountinfo (proc(5)) and the v2 root's cgroup.controllers
(Documentation/admin-guide/cgroup-v2.rst, "Controlling Controllers"), and pick, per
controller, the hierarchy that has it.

:class:`Group` is one interface over both: the same ``set_memory``, ``oom_kills`` or
``freeze`` writes ``memory.limit_in_bytes`` on v1 and ``memory.max`` on v2
(Documentation/admin-guide/cgroup-v1/memory.rst, pids.rst, cfs-bandwidth in
scheduler/sched-bwc.rst). Groups live under a ``labkit`` parent, are in the lab's
ledger, and are removed by close() (which kills what is left inside first).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from . import lab, procfs, sandbox
from .errors import LabError
from .mountinfo import mounts

PARENT = "labkit"
KNOWN = ("cpu", "cpuacct", "cpuset", "memory", "pids", "io", "blkio", "freezer",
         "devices", "hugetlb", "perf_event", "net_cls", "net_prio", "rdma", "misc")


class CgroupError(LabError):
    """A controller that is missing or a limit that cannot be set."""


@dataclass(frozen=True)
class Controller:
    name: str       # memory, pids, cpu ...
    version: int    # 1 or 2
    mountpoint: Path


def controllers() -> dict[str, Controller]:
    """Each available controller, v1 where a v1 hierarchy claims it, else v2."""
    found: dict[str, Controller] = {}
    v2_roots = []
    for m in mounts():
        if m.fstype == "cgroup":
            for opt in m.super_options.split(","):
                if opt in KNOWN:
                    found.setdefault(opt, Controller(opt, 1, m.mountpoint))
        elif m.fstype == "cgroup2":
            v2_roots.append(m.mountpoint)
    for root in v2_roots:
        try:
            names = (root / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        for name in names:
            found.setdefault(name, Controller(name, 2, root))
    return found


def v2_root() -> Path | None:
    """Where the unified (v2) hierarchy is mounted, if it is."""
    return next((m.mountpoint for m in mounts() if m.fstype == "cgroup2"), None)


@dataclass(frozen=True)
class Membership:
    """One line of /proc/PID/cgroup, "ID:CONTROLLERS:PATH" (cgroups(7)): the group the process
    is in, in the hierarchy with those controllers (v1), or in the unified one (v2: ID 0, none)."""
    hierarchy_id: int
    controllers: tuple[str, ...]
    path: str


def membership(pid: int | str = "self") -> list[Membership]:
    """Every cgroup process ``pid`` is in, one per hierarchy (/proc/PID/cgroup)."""
    out = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, names, path = line.split(":", 2)
        out.append(Membership(int(hid), tuple(names.split(",")) if names else (), path))
    return out


def memory_room() -> int:
    """Bytes this process may still take before the kernel reclaims hard or kills: the least of
    MemAvailable (proc(5), /proc/meminfo) and, for its own memory cgroup and every ancestor
    (limits are hierarchical: cgroups(7)), limit minus usage: memory.max - memory.current on v2,
    memory.limit_in_bytes - memory.usage_in_bytes on v1. A class container's 2 GiB limit shows
    here although the machine has far more."""
    room = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemAvailable:"))
    c = controllers().get("memory")
    if c is None:
        return room
    for m in membership():
        if (c.version == 2 and not m.controllers) or (c.version == 1 and "memory" in m.controllers):
            group = c.mountpoint / m.path.lstrip("/")
            limit, usage = (("memory.max", "memory.current") if c.version == 2
                            else ("memory.limit_in_bytes", "memory.usage_in_bytes"))
            for d in (group, *group.parents):
                try:
                    text = (d / limit).read_text().strip()
                    if text != "max":
                        room = min(room, int(text) - int((d / usage).read_text()))
                except (OSError, ValueError):
                    pass
                if d == c.mountpoint:
                    break
    return max(room, 0)


def join_like(pid: int) -> None:
    """Move this process into every cgroup ``pid`` is in (docker exec does): each
    :func:`membership` names a group in the hierarchy mounted with those controllers (v1) or
    in the unified one (v2). Only groups labkit made."""
    hierarchies = {}
    for m in mounts():
        if m.fstype == "cgroup":
            key = ",".join(sorted(o for o in m.super_options.split(",") if o in KNOWN or o.startswith("name=")))
            hierarchies.setdefault(key, m.mountpoint)
        elif m.fstype == "cgroup2":
            hierarchies.setdefault("", m.mountpoint)
    for m in membership(pid):
        top = hierarchies.get(",".join(sorted(m.controllers)))
        if top is None or f"/{PARENT}/" not in f"{m.path}/":
            continue                       # a hierarchy we do not see, or a group that is not ours
        (top / m.path.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))


@dataclass(frozen=True)
class CpuStat:
    periods: int          # enforcement periods that had runnable tasks
    throttled: int        # periods in which the group hit its quota
    throttled_s: float    # time spent throttled


class Group:
    """One cgroup, made in every hierarchy that holds one of ``want``.

    ``freeze`` is always available: through the v1 freezer, or v2's cgroup.freeze.
    """

    def __init__(self, name: str, want=("memory", "pids", "cpu")):
        if not name.replace("-", "").replace("_", "").isalnum():
            raise CgroupError(f"{name!r} is not a usable cgroup name", "use letters, digits, - and _")
        self.name = name
        found = controllers()
        missing = [c for c in want if c not in found]
        if missing:
            raise CgroupError(f"this host has no {', '.join(missing)} cgroup controller",
                              "run `labkit preflight`; enable it on the kernel command line")
        self.ctl = {c: found[c] for c in want}
        freezer = found.get("freezer")
        self.freezer = freezer if freezer and freezer.version == 1 else None
        self.paths: dict[str, Path] = {}          # controller (or "freezer", "v2") -> its dir
        self._entries = []
        made: dict[Path, Path] = {}               # one dir per hierarchy: v2 holds them all
        extra = [self.freezer] if self.freezer else [Controller("v2", 2, v2_root())] if v2_root() else []
        if not extra:
            raise CgroupError("no freezer: neither a v1 freezer nor a v2 hierarchy", "mount cgroup2")
        for c in [*self.ctl.values(), *extra]:
            if c.mountpoint not in made:
                made[c.mountpoint] = self._make(c)
            self.paths[c.name] = made[c.mountpoint]

    def _make(self, c: Controller) -> Path:
        parent = c.mountpoint / PARENT
        d = parent / self.name
        self._entries.append(lab.record("cgroup", d, f"cgroup v{c.version} for {self.name}"))
        for attempt in range(5):        # another process may remove an empty parent meanwhile
            try:
                parent.mkdir()
            except FileExistsError:     # (pathlib's exist_ok re-checks, and loses that race)
                pass
            try:
                if c.version == 2:
                    self._enable_v2(c.mountpoint, parent)
                d.mkdir()
                return d
            except FileExistsError:
                raise CgroupError(f"the cgroup {d} already exists", "run `labkit reset` to remove old groups") from None
            except FileNotFoundError:
                if attempt == 4:
                    raise

    def _enable_v2(self, root: Path, parent: Path) -> None:
        wanted = [c.name for c in self.ctl.values() if c.version == 2]
        for d in (root, parent):
            have = (d / "cgroup.controllers").read_text().split()
            add = " ".join(f"+{n}" for n in wanted if n in have)
            if add:
                (d / "cgroup.subtree_control").write_text(add)

    def _file(self, controller: str, v1: str, v2: str) -> Path:
        c = self.ctl.get(controller)
        if c is None:
            raise CgroupError(f"the group {self.name} was made without the {controller} controller",
                              f"make it with want=(..., {controller!r})")
        return self.paths[controller] / (v1 if c.version == 1 else v2)

    # --- membership ---
    def add(self, pid: int) -> None:
        """Move process ``pid`` (and its future children) into the group, in every hierarchy."""
        for d in set(self.paths.values()):
            (d / "cgroup.procs").write_text(str(pid))

    def procs(self) -> list[int]:
        d = next(iter(self.paths.values()))
        return [int(x) for x in (d / "cgroup.procs").read_text().split()]

    # --- limits ---
    def set_memory(self, limit: int) -> None:
        """memory.limit_in_bytes (v1) / memory.max (v2). Swap is off on the lab machines."""
        self._file("memory", "memory.limit_in_bytes", "memory.max").write_text(str(limit))

    def allow_devices(self, rules: tuple[str, ...]) -> None:
        """The v1 devices controller (cgroup-v1/devices.rst): deny every device, then allow
        ``rules`` ("c 1:3 rwm": type, major:minor, read/write/mknod). A process of the group
        may still make any node (with CAP_MKNOD) but opens only what is allowed."""
        (self.paths["devices"] / "devices.deny").write_text("a")
        for rule in rules:
            (self.paths["devices"] / "devices.allow").write_text(rule)

    def set_pids(self, n: int) -> None:
        self._file("pids", "pids.max", "pids.max").write_text(str(n))

    def set_cpu(self, cpus: float, period_us: int = 100_000) -> None:
        """At most ``cpus`` CPUs' worth of time per period (CFS bandwidth control)."""
        quota = max(1000, int(cpus * period_us))
        if self.ctl["cpu"].version == 1:
            self._file("cpu", "cpu.cfs_period_us", "").write_text(str(period_us))
            self._file("cpu", "cpu.cfs_quota_us", "").write_text(str(quota))
        else:
            self._file("cpu", "", "cpu.max").write_text(f"{quota} {period_us}")

    # --- readings ---
    def memory_current(self) -> int:
        return int(self._file("memory", "memory.usage_in_bytes", "memory.current").read_text())

    def oom_kills(self) -> int:
        """Processes the OOM killer killed in this group (v1 memory.oom_control, v2 memory.events)."""
        text = self._file("memory", "memory.oom_control", "memory.events").read_text()
        return _field(text, "oom_kill")

    def cpu_stat(self) -> CpuStat:
        text = self._file("cpu", "cpu.stat", "cpu.stat").read_text()
        v1 = self.ctl["cpu"].version == 1
        return CpuStat(_field(text, "nr_periods"), _field(text, "nr_throttled"),
                       _field(text, "throttled_time") / 1e9 if v1 else _field(text, "throttled_usec") / 1e6)

    # --- freezing ---
    def freeze(self, frozen: bool = True) -> None:
        """Stop (or resume) every process of the group at once."""
        if self.freezer:
            (self.paths["freezer"] / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
        else:
            (self.paths["v2"] / "cgroup.freeze").write_text("1" if frozen else "0")

    def thaw(self) -> None:
        self.freeze(False)

    # --- the end ---
    def kill_all(self) -> None:
        """SIGKILL every process of the group (thawing it first, or they could not die)."""
        try:
            self.thaw()
        except OSError:
            pass
        for d in set(self.paths.values()):
            lab.kill_cgroup_members(d)

    def close(self) -> None:
        """Kill what is left and remove the group's directories (the ledger's release does it,
        and removes the labkit parent too when no other group lives there)."""
        self.kill_all()
        for e in reversed(self._entries):
            lab.release(e)

    def __enter__(self) -> "Group":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _field(text: str, key: str) -> int:
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


# --- the lesson's experiments ---------------------------------------------------------------
@dataclass
class MemoryTrace:
    """Memory charged to a group, sampled while a child grows until the limit stops it."""
    limit: int
    samples: list          # (seconds, bytes charged)
    killed_by: str         # "SIGKILL" when the OOM killer ended it
    oom_kills: int


def memory_trace(limit: int = 64 << 20, step: int = 2 << 20, interval: float = 0.01,
                 most: int = 1 << 30) -> MemoryTrace:
    """A child in a fresh group allocates ``step`` bytes every ``interval`` s; we sample
    memory.usage_in_bytes / memory.current until it dies (or reaches ``most``)."""
    import secrets
    with Group(f"trace-mem-{secrets.token_hex(3)}", want=("memory",)) as g:
        g.set_memory(limit)
        with sandbox.Child(_grow, step, interval, most, cgroup=g, note="memory trace") as child:
            t0, samples = time.monotonic(), []
            while True:
                done = child.poll() is not None
                try:
                    samples.append((time.monotonic() - t0, g.memory_current()))
                except OSError:
                    pass
                if done:
                    break
                time.sleep(0.003)
            status = child.status
        sig = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else ""
        return MemoryTrace(limit, samples, sig, g.oom_kills())


def _grow(ch, step: int, interval: float, most: int) -> None:
    """In the child: take ``step`` more bytes every ``interval`` s, touching every page."""
    held, total = [], 0
    while total < most:
        b = bytearray(step)
        b[::4096] = b"x" * len(b[::4096])       # touch every page: really charged
        held.append(b)
        total += step
        time.sleep(interval)


@dataclass
class CpuTrace:
    cpus: float            # the quota asked for, in CPUs
    samples: list          # (seconds, CPU share over the last sample, throttled periods so far)


def cpu_trace(cpus: float = 0.2, seconds: float = 1.0, interval: float = 0.1) -> CpuTrace:
    """A child spins in a group limited to ``cpus``; we sample its CPU share and the
    periods in which the quota ran out (cpu.stat nr_throttled)."""
    import secrets
    with Group(f"trace-cpu-{secrets.token_hex(3)}", want=("cpu",)) as g:
        g.set_cpu(cpus, period_us=20_000)
        with sandbox.Child(_spin, seconds, cgroup=g, note="cpu trace") as child:
            t0 = last_t = time.monotonic()
            last_cpu, samples = procfs.stat(child.pid).cpu_seconds, []
            while child.poll() is None:
                time.sleep(interval)
                now = time.monotonic()
                try:
                    cpu = procfs.stat(child.pid).cpu_seconds
                except OSError:
                    continue
                samples.append((now - t0, (cpu - last_cpu) / (now - last_t), g.cpu_stat().throttled))
                last_t, last_cpu = now, cpu
        return CpuTrace(cpus, samples)


def _spin(ch, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
