"""Lessons 05 and 06: a container is a process, with its own root filesystem.

What ``labkit run IMAGE -- CMD`` does, in order:

1. a cgroup with the limits asked for (--memory, --pids, --cpus), see cgroups.py;
2. fork; the child joins the cgroup and unshares mnt, uts, ipc, net, pid and cgroup
   namespaces, then forks again: the grandchild is PID 1 of the new PID namespace;
3. PID 1 mounts the root filesystem as an overlay of three parts (seed 002):
   the image's read-only layers, an **init layer** (etc/hostname, etc/hosts,
   etc/resolv.conf, written for this container only) and a **read-write layer**;
   bind-mounts those three files over themselves from the container's directory (as docker
   does: an edit of /etc/hosts goes there, never into the read-write layer, so commit leaves
   it out), then the volumes; mounts /proc, /sys (read-only, with its cgroups) and a small /dev,
   and masks the /proc and /sys paths runc masks (confine.py);
4. pivot_root(2) into it, unmounts the old root, closes every inherited fd, sets
   no_new_privs and Docker's capabilities, changes user, loads the seccomp filter (confine.py)
   and execs the command. Its exit status comes back; an OOM kill is named as such.

``commit`` turns the read-write layer alone into a new image layer: not the init layer,
not the volumes. Everything a container makes is under ``<lab root>/containers/<id>``
or inside its own namespaces; its cgroup and process are in the lab's ledger.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import select
import signal
import socket
import stat
import subprocess
import termios
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cgroups, confine, kernel, lab, overlay, procfs, roots, sandbox, snapshot, users
from . import userns as user_namespace     # the parameter userns= is podman's option
from .errors import KernelError, LabError
from .image import store as st
from .image import mutate

NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup")
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
# runc's default device rules: any node may be made (m), only these may be opened
DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm")


class ContainerError(LabError):
    """A container that cannot be made, started or found."""


class StartError(ContainerError):
    """PID 1 was made but could not start the command (a user the image lacks, a working
    directory that cannot be made): `labkit run` exits 126 for it, as podman does."""
    run_status = 126


def parse_size(text: str | int | None) -> int | None:
    """'64m' -> 67108864 (k, m, g suffixes, powers of 1024)."""
    if text is None or isinstance(text, int):
        return text
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    try:
        n = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
        if not math.isfinite(n):
            raise ValueError
        return int(n)
    except (ValueError, KeyError):
        raise ContainerError(f"{text!r} is not a size", "write it like 64m, 512k or 1g") from None


MIN_MEMORY = 6 << 20      # docker's smallest --memory


def check_limits(memory: int | None, pids: int | None, cpus: float | None) -> None:
    """Refuse limits that would mean "no limit" or nothing at all (0, negative, nan): a
    learner who writes --memory 0 must not get an unlimited container by surprise."""
    if memory is not None and memory < MIN_MEMORY:
        raise ContainerError(f"--memory {memory} bytes is below the smallest limit, 6m",
                             "give at least --memory 6m, or leave --memory out for no limit")
    if pids is not None and (not isinstance(pids, int) or pids < 1):
        raise ContainerError(f"--pids {pids} would let no process run", "give --pids 1 or more, or leave it out")
    if cpus is not None and not (math.isfinite(cpus) and cpus >= 0.01):
        raise ContainerError(f"--cpus {cpus} is not a share of CPU time",
                             "give a number like 0.5 (from 0.01 up), or leave --cpus out for no limit")


@dataclass
class Config:
    """What the container was asked to be (saved as config.json in its directory)."""
    id: str
    image: str
    cmd: list[str]
    hostname: str
    memory: int | None = None
    pids: int | None = None
    cpus: float | None = None
    volumes: list[str] = field(default_factory=list)     # "HOST:CTR" after anonymous ones are made
    env: list[str] = field(default_factory=list)
    workdir: str = "/"
    name: str = ""
    user: str = ""          # "uid[:gid]" or a name from the image's /etc/passwd
    lowerdirs: list[str] = field(default_factory=list)   # the overlay's lowerdirs, top (init layer) first
    upper: str = ""         # the read-write layer (a builder's snapshot, or <dir>/upper)
    work: str = ""
    session: str = field(default_factory=lambda: lab.session())   # who made it (lab.session)
    confinement: dict = field(default_factory=dict)   # confine.Confinement: capabilities, seccomp, ...
    userns: int = 0         # --userns auto: the host uid that is root inside (0: no user namespace)
    shifted: bool = False   # --userns on a file system without idmapped mounts: owners chowned instead
    stop_signal: str = "SIGTERM"    # the image's STOPSIGNAL, what stop() sends first


@dataclass
class Result:
    """How a container's command ended."""
    id: str
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    oom_killed: bool = False
    signal: str = ""

    @property
    def message(self) -> str:
        if self.oom_killed:
            return ("the container was killed by the OOM killer: it used more memory than its --memory "
                    "limit. Raise the limit, or make the command use less")
        if self.signal:
            return f"the container's command was killed by {self.signal}"
        return f"the container's command exited with status {self.exit_code}"


class Container:
    """A container's directory, configuration and (while it runs) its processes."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.dir = lab.root() / "containers" / cfg.id
        self.init, self.rootfs = self.dir / "init", self.dir / "rootfs"
        self.upper = Path(cfg.upper) if cfg.upper else self.dir / "upper"
        self.work = Path(cfg.work) if cfg.work else self.dir / "work"
        self.pid: int | None = None
        self.group: cgroups.Group | None = None

    id = property(lambda self: self.cfg.id)

    # --- making one ---
    @classmethod
    def create(cls, image: str, cmd: list[str] | None = None, *, hostname: str | None = None,
               memory: str | int | None = None, pids: int | None = None, cpus: float | None = None,
               volumes: list[str] = (), name: str = "", store: st.Store | None = None,
               layers: tuple[list[Path], Path, Path] | None = None, env: list[str] | None = None,
               workdir: str | None = None, user: str | None = None, privileged: bool = False,
               cap_add: list[str] = (), cap_drop: list[str] = (), security_opt: list[str] = (),
               userns: str = "host", confinement: "confine.Confinement | None" = None,
               entrypoint: list[str] | None = None) -> "Container":
        """A container of ``image``. A builder passes ``layers`` = (lowerdirs, upper, work) of a
        snapshot instead, and the image config's env, workdir and user as they stand.
        ``privileged``, ``cap_add``, ``cap_drop``, ``security_opt``: as docker run's (confine.py);
        ``userns="auto"``: as podman's, root inside is an unprivileged host uid (userns.py);
        ``cmd`` replaces the image's CMD and follows its ENTRYPOINT unless ``entrypoint`` is
        given (then the image's CMD is dropped, as with docker run --entrypoint); by default the container gets Docker's confinement; ``confinement`` gives it exactly
        (lesson 05 adds one defence at a time)."""
        _check_run_options(name, env or [], workdir)
        store = store or st.Store()
        # a build step of a FROM scratch stage has layers but no image, so no image config
        conf = {} if image == st.SCRATCH and layers else store.image(image).config.get("config", {})
        if entrypoint is None:      # docker run: arguments replace CMD and follow ENTRYPOINT
            cmd = (conf.get("Entrypoint") or []) + list(cmd or conf.get("Cmd") or [])
        else:                       # --entrypoint: the image's CMD goes too
            cmd = list(entrypoint) + list(cmd or [])
        cmd = cmd or ["/bin/sh"]
        check_limits(parse_size(memory), pids, cpus)
        confinement = confinement or confine.Confinement.from_options(privileged, cap_add, cap_drop, security_opt, userns)
        if confinement.userns and layers:
            raise ContainerError("a build step cannot run in a user namespace", "leave out userns for build steps")
        cid = secrets.token_hex(6)
        cfg = Config(cid, image, cmd, hostname or cid, parse_size(memory), pids, cpus,
                     [], _merge_env(conf.get("Env", []), env or []),
                     workdir or conf.get("WorkingDir") or "/", name or cid, user or conf.get("User", ""))
        for old in [c for c in containers() if name and c.cfg.name == name]:
            if old.cfg.session and not lab.session_alive(old.cfg.session):
                old.remove()          # left by a notebook kernel that died mid-lesson: it cannot be wanted
            else:
                raise ContainerError(f"a container called {name!r} exists", f"remove it: labkit rm {name}")
        cfg.confinement = confinement.to_json()
        cfg.stop_signal = conf.get("StopSignal") or "SIGTERM"
        if layers:
            lowers, upper, work = layers
            cfg.upper, cfg.work = str(upper), str(work)
        else:
            lowers = snapshot.unpack(image, store)
        c = cls(cfg)
        cfg.lowerdirs = [str(c.init), *map(str, lowers)]
        lab.inside(c.dir).mkdir(parents=True)
        for d in (c.dir / "upper", c.dir / "work", c.rootfs):
            d.mkdir()
        if confinement.userns:
            cfg.userns = user_namespace.allocate(lab.root() / "userns", c.dir).outside
        targets = {v.split(":", 1)[-1] for v in volumes}    # the image's VOLUMEs: anonymous volumes, as docker
        cfg.volumes = [_volume(v) for v in [*volumes, *(t for t in conf.get("Volumes") or {} if t not in targets)]]
        c._write_init_layer()
        c._save()
        return c

    @property
    def lowerdirs(self) -> list[Path]:
        return [Path(p) for p in self.cfg.lowerdirs]

    def _write_init_layer(self) -> None:
        """The init layer: files the runtime writes for this container alone (seed 002)."""
        etc = self.init / "etc"
        etc.mkdir(parents=True)
        (etc / "hostname").write_text(self.cfg.hostname + "\n")
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{self.cfg.hostname}\n")
        try:
            resolv = Path("/etc/resolv.conf").read_text()
        except OSError:
            resolv = ""
        (etc / "resolv.conf").write_text(resolv or "nameserver 127.0.0.1\n")

    def _save(self) -> None:
        (self.dir / "config.json").write_text(json.dumps(asdict(self.cfg)))

    @classmethod
    def load(cls, ident: str) -> "Container":
        for c in containers():
            if ident in (c.cfg.id, c.cfg.name):
                return c
        raise ContainerError(f"there is no container {ident!r}", "list them with `labkit ps`")

    # --- running it ---
    def start(self, capture: bool = True, logs: bool = False, stdin: int | None = None,
              tty: bool = False) -> "Container":
        """Start the command. ``capture``: collect stdout/stderr for wait(); else inherit ours;
        ``logs``: write them to the container's stdout.log and stderr.log (labkit logs).
        ``stdin``: an fd the command reads (docker run -i), /dev/null otherwise. ``tty``: a
        pseudo-terminal (pty(7)) is its stdin, stdout, stderr and controlling terminal (docker
        run -t); :meth:`attach` connects ours to it."""
        conf = confine.Confinement.from_json(self.cfg.confinement)
        v1_devices = conf.devices and not conf.privileged and confine.devices_cgroup()
        self.group = cgroups.Group(f"c-{self.id}", want=("memory", "pids", "cpu") + (("devices",) if v1_devices else ()))
        if v1_devices:
            self.group.allow_devices(DEVICE_RULES)
        conf.caps = confine.caps_in_force(conf)     # on cgroup v2: without MKNOD
        self._confinement = conf
        self._seccomp = confine.default_filter() if conf.seccomp and not conf.privileged else None
        self._ids = user_namespace.IdRange(self.cfg.userns) if self.cfg.userns else None
        if self._ids and not user_namespace.can_idmap(lab.root()) and not self.cfg.shifted:
            self.cfg.shifted = True     # the image's layers as chowned copies, the upper chowned
            user_namespace.shift_owners(self.dir, self._ids.outside)
            self._save()
        if self.cfg.memory:
            self.group.set_memory(self.cfg.memory)
        if self.cfg.pids:
            self.group.set_pids(self.cfg.pids)
        if self.cfg.cpus:
            self.group.set_cpu(self.cfg.cpus)
        self._userns_fd = user_namespace.create(self._ids) if self._ids else None
        self._tty, self.master, out = tty, None, None
        if tty:         # PID 1 makes the pty in the container's own devpts and sends us its master
            console, self._console = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            files = [os.open(os.devnull, os.O_RDONLY), None, None]
        elif logs:
            files = [os.open(os.devnull, os.O_RDONLY)] + [
                os.open(self.dir / f"{n}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640) for n in ("stdout", "stderr")]
        else:
            out = [os.pipe(), os.pipe()] if capture else None
            files = [os.open(os.devnull, os.O_RDONLY), *([out[0][1], out[1][1]] if out else [None, None])]
        if stdin is not None and not tty:
            os.close(files[0])
            files[0] = os.dup(stdin)
        try:
            self.child = sandbox.Child(self._pid1, namespaces=NAMESPACES, cgroup=self.group, stdin=files[0],
                                       stdout=files[1], stderr=files[2], note=f"container {self.id}")
        finally:
            for fd in {f for f in files if f is not None} | ({self._userns_fd} if self._ids else set()):
                os.close(fd)        # the child has its copies
            if tty:
                self._console.close()
        self.pid = self.child.pid
        if tty:
            console.settimeout(30)
            try:
                _, fds, _, _ = socket.recv_fds(console, 1, 1)
            except OSError:
                fds = []
            console.close()
            self.master = fds[0] if fds else None
        self._out = (out[0][0], out[1][0]) if out else None
        try:
            self.child.recv()          # nothing comes back when exec succeeds: the pipe closes
        except EOFError:
            return self
        except BaseException as e:
            self.wait()
            if isinstance(e, ContainerError):
                raise
            raise ContainerError(str(e), "check the command and the image (labkit image inspect)") from None
        return self

    def _pid1(self, ch) -> None:
        """PID 1 of the container (a sandbox.Child in its cgroup and namespaces): build the
        root filesystem, pivot_root into it, close inherited fds, exec the command."""
        self._step = "starting"
        try:
            self._step = "setting the hostname"
            socket.sethostname(self.cfg.hostname)
            self._step = "bringing up lo"
            try:
                kernel.link_up("lo")
            except OSError:
                pass              # as before with `ip link set lo up`: a container without lo still runs
            ids = self._ids
            # with --userns, what PID 1 creates in the root is owned by the namespace's root
            with user_namespace.as_ns_root(ids) if ids else contextlib.nullcontext():
                self._build_root()
            if ids:
                self._step = "entering the user namespace"
                user_namespace.enter(self._userns_fd)
            if self._tty:
                self._step = "making the terminal"
                _console(self._console)
            self._step = "closing inherited fds"
            sandbox.close_fds()
            self._become(self.cfg.cmd, self.cfg.user, self.cfg.workdir, make_workdir=True)
        except BaseException as e:
            problem, fix = (e.problem, e.fix) if isinstance(e, LabError) else (e, "")
            raise StartError(f"container {self.id}: {self._step} failed: {problem}",
                             fix or "check the command and the image (labkit image inspect)") from None

    def _become(self, cmd: list[str], user: str, workdir: str, make_workdir: bool = False,
                env: list[str] = ()) -> None:
        """The last steps of PID 1, and of a process ``exec`` adds: the environment, the working
        directory, the bounding set, the user, the capability sets, the seccomp filter, then
        execve(2): runc's order, so that a --cap-drop of SETUID still lets the user change."""
        env = dict(e.split("=", 1) for e in _merge_env(self.cfg.env, list(env)) if "=" in e)
        env.setdefault("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        env["HOSTNAME"] = self.cfg.hostname
        if getattr(self, "_tty", False):
            env.setdefault("TERM", "xterm")             # as docker run -t sets it
        self._step = f"changing to the working directory {workdir}"
        if make_workdir:
            os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
        conf = self._confinement
        self._step = "dropping capabilities from the bounding set"
        confine.confine(conf)
        self._step = f"looking up user {user or 'root'}"
        who = _identity(user)
        env.setdefault("HOME", who.home)
        self._step = f"becoming user {user or 'root'}"
        os.setgroups(who.groups if user else [])     # never the groups of whoever started labkit
        if user:                                     # (podman: none unless a user is given)
            os.setgid(who.gid)
            os.setuid(who.uid)
        self._step = "setting the capabilities"
        confine.capabilities(conf)
        kernel.set_parent_death_signal(signal.SIGKILL)    # changing user cleared it: the
        self._step = "loading the seccomp filter"          # process still dies with its runtime
        confine.load(conf, self._seccomp)
        self._step = f"executing {cmd[0]!r}"
        _exec(cmd, env)

    def _build_root(self) -> None:
        """In PID 1: the overlay, the init files, the volumes, /proc, /sys, /dev, the cgroupfs
        and the masks, then pivot_root(2) into it (steps 3 and 4 of the module's docstring)."""
        ids, lowers = self._ids, self.lowerdirs
        if ids:
            self._step = "idmapping the layers for the user namespace"
            lowers = self._idmap_layers()
        self._step = "mounting the overlay"
        overlay.Overlay(lowers, self.upper, self.work, self.rootfs).mount_here()
        for name in INIT_FILES:        # as docker does: edits go to this container's files
            self._step = f"bind-mounting /etc/{name}"
            fd = open_in_root(self.rootfs, f"etc/{name}")
            try:
                kernel.mount(str(self.init / "etc" / name), f"/proc/self/fd/{fd}", None, kernel.MS_BIND)
            finally:
                os.close(fd)
        for spec in self.cfg.volumes:
            self._step = f"mounting the volume {spec}"
            host, ctr = spec.split(":", 1)
            fd = mkdirs_in_root(self.rootfs, ctr)
            try:        # mount(2) on /proc/self/fd/N: the directory we hold, not a path again
                if ids and not self.cfg.shifted:   # the volume's files keep their owners: 0 is root inside
                    vol = user_namespace.idmapped(host, self._userns_fd)
                    kernel.move_mount(vol, target_fd=fd)
                    os.close(vol)
                else:
                    kernel.mount(host, f"/proc/self/fd/{fd}", None, kernel.MS_BIND)
            finally:
                os.close(fd)
        conf = self._confinement
        quiet = kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC
        self._step = "mounting /proc"
        proc = self._mount_in_root("proc", "proc", "proc", quiet)
        self._step = "mounting /sys"
        sysfs = self._mount_in_root("sys", "sysfs", "sysfs", quiet | (0 if conf.privileged else kernel.MS_RDONLY))
        self._step = "making /dev"
        owner = f",uid={ids.outside},gid={ids.outside}" if ids else ""
        dev = self._mount_in_root("dev", "tmpfs", "tmpfs", kernel.MS_NOSUID | kernel.MS_NOEXEC,
                                  "mode=755,size=65536k" + owner)
        _populate_dev(dev)
        self._step = "mounting /sys/fs/cgroup"
        confine.mount_cgroupfs(sysfs, writable=conf.privileged)
        if conf.masked_paths:
            self._step = "masking paths of /proc and /sys"
            confine.mask_paths(proc, sysfs)
        for fd in (proc, sysfs, dev):
            os.close(fd)
        self._step = "pivot_root"
        roots.pivot_into(str(self.rootfs))

    def _idmap_layers(self) -> list[Path]:
        """--userns: every lowerdir and the container's own directory (init layer, upper and work)
        seen through the user namespace's map, each an idmapped mount on itself (userns.py); the
        lowerdirs to mount. Where the file system cannot be idmapped (``cfg.shifted``), the image's
        layers are chowned copies kept per id range instead (the container's directory was
        chowned by start())."""
        image_layers = [p for p in self.lowerdirs if not p.is_relative_to(self.dir)]
        if self.cfg.shifted:
            cache = lab.root() / "userns" / f"{self._ids.outside}.layers"
            copies = {p: user_namespace.shifted_copy(p, cache / hashlib.sha256(str(p).encode()).hexdigest()[:16],
                                                     self._ids) for p in image_layers}
            return [copies.get(p, p) for p in self.lowerdirs]
        for d in image_layers + [self.dir]:
            user_namespace.idmap_onto(d, self._userns_fd)
        return self.lowerdirs

    def _mount_in_root(self, name: str, source: str, fstype: str, flags: int, data: str | None = None) -> int:
        """Mount ``fstype`` on the directory ``name`` of the rootfs, reached through an fd resolved
        inside the root (an image's symlink cannot send the mount elsewhere); returns an O_PATH fd
        of the new mount's root."""
        fd = mkdirs_in_root(self.rootfs, name)
        try:
            kernel.mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
        finally:
            os.close(fd)
        return mkdirs_in_root(self.rootfs, name)

    def wait(self, timeout: float | None = None) -> Result:
        """Wait for the command to end; collect its output; remove the cgroup."""
        if self.pid is None:
            raise ContainerError(f"container {self.id} is not running", "start it first")
        try:
            out, err = _collect(list(self._out or ()), timeout, f"container {self.id}")
            status = self.child.wait()
        except BaseException:
            self.kill()
            raise
        code = os.waitstatus_to_exitcode(status)
        code = code if code >= 0 else 128 - code
        oom = self.group.oom_kills() > 0 if self.group and self.cfg.memory else False
        sig = signal.Signals(code - 128).name if code > 128 and code - 128 < 65 else ""
        res = Result(self.id, code, out.decode(errors="replace"), err.decode(errors="replace"), oom, sig)
        self._finish()
        (self.dir / "result.json").write_text(json.dumps(asdict(res)))
        return res

    def attach(self, interactive: bool = False) -> None:
        """Connect our terminal to the container's pty (start(tty=True)) until the container
        closes it: what it writes goes to our stdout; with ``interactive``, what we type goes to
        it (our terminal in raw mode meanwhile, so Ctrl-C reaches the container as a byte)."""
        import tty as tty_
        if self.master is None:     # PID 1 failed before it made the terminal: wait() says why
            return
        raw = interactive and os.isatty(0)
        saved = termios.tcgetattr(0) if raw else None
        if os.isatty(0):            # the container's terminal takes our window size
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
        try:
            if raw:
                tty_.setraw(0)
            watch = [self.master] + ([0] if interactive else [])
            while self.master in watch:
                for fd in select.select(watch, [], [])[0]:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:         # EIO: the last process holding the pty exited
                        data = b""
                    if fd == self.master:
                        if not data:
                            watch.remove(fd)
                        else:
                            os.write(1, data)
                    elif data:
                        os.write(self.master, data)
                    else:
                        watch.remove(0)         # our stdin ended: the container's goes on
        finally:
            if saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
            os.close(self.master)
            self.master = None

    def pid1(self, timeout: float = 10) -> int | None:
        """The host's number for the container's PID 1: the only child of the process that made
        its PID namespace (/proc/PID/task/TID/children, proc(5)); waits until it exists. None
        if the container has ended already."""
        if self.pid is None:
            raise ContainerError(f"container {self.id} is not running", "start it first")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                kids = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            except FileNotFoundError:
                kids = []
            if kids:
                return int(kids[0])
            if self.child.poll() is not None:
                return None
            time.sleep(0.01)
        raise ContainerError(f"container {self.id} has no PID 1 after {timeout} s", "look at its result: c.wait()")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL every process of the container (through its cgroup) and reap; a container
        running under its own supervisor (``run(detach=True)``): send ``sig`` to its PID 1 (in
        a PID namespace, SIGKILL of PID 1 ends every process in it)."""
        if self.group:
            self.group.kill_all()
            self._finish()
            return
        pid1 = self.running_pid1()
        if pid1 is None:
            raise ContainerError(f"container {self.id} is not running", "see labkit ps")
        os.kill(pid1, sig)

    def stop(self, timeout: float = 10) -> None:
        """docker stop: the image's STOPSIGNAL (SIGTERM by default) to PID 1, then SIGKILL after
        ``timeout`` seconds. PID 1 of a namespace ignores signals it has no handler for, which is
        why a plain `sleep` takes the whole timeout (and why docker has --init)."""
        pid1 = self.pid1(timeout=0.5) if self.group else self.running_pid1()
        if pid1 is None:
            return self.kill() if self.group else None
        try:
            os.kill(pid1, _signal_number(self.cfg.stop_signal))
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.running_pid1() if not self.group else self.child.poll() is None):
            time.sleep(0.02)
        if self.group or self.running_pid1():
            self.kill()

    # --- a container under its own supervisor (docker run -d) ---
    def running_pid1(self) -> int | None:
        """PID 1 of a container started with ``run(detach=True)``, if it still runs (its start
        time must match the one recorded: a recycled PID is not taken for it)."""
        try:
            state = json.loads((self.dir / "state.json").read_text())
            if (self.dir / "result.json").exists():
                return None
            if procfs.stat(state["pid1"]).starttime == state["starttime"]:
                return state["pid1"]
        except (OSError, ValueError, KeyError):
            pass
        return None

    def logs(self) -> tuple[str, str]:
        """What a detached container wrote to stdout and stderr so far (docker logs)."""
        read = lambda n: (self.dir / f"{n}.log").read_text(errors="replace") if (self.dir / f"{n}.log").exists() else ""
        return read("stdout"), read("stderr")

    def exec(self, cmd: list[str], user: str | None = None, capture: bool = True, timeout: float | None = 120,
             env: list[str] | None = None, workdir: str | None = None, stdin: int | None = None) -> Result:
        """docker exec: run ``cmd`` inside the running container: setns(2) into PID 1's
        namespaces (its user namespace first, with --userns), join its cgroups, fork (a PID
        namespace takes children only), then the same confinement, user and seccomp filter as
        PID 1 had. ``env`` (KEY=VALUE) is added to the container's environment and ``workdir``
        replaces its working directory, as docker exec -e and -w (a missing one is not made:
        status 126); ``stdin``: an fd the command reads (docker exec -i), /dev/null otherwise.
        Returns its Result; the container goes on."""
        _check_run_options("", env or [], workdir)
        pid1 = self.pid1(timeout=1) if self.group else self.running_pid1()
        if pid1 is None:
            raise ContainerError(f"container {self.id} is not running", "start it first (labkit run -d)")
        conf = confine.Confinement.from_json(self.cfg.confinement)
        conf.caps = confine.caps_in_force(conf)
        self._confinement = conf
        self._seccomp = confine.default_filter() if conf.seccomp and not conf.privileged else None
        out = [os.pipe(), os.pipe()] if capture else None
        null = os.open(os.devnull, os.O_RDONLY) if stdin is None else None
        try:
            child = sandbox.Child(self._exec_in, pid1, cmd, user, env or [], workdir or self.cfg.workdir,
                                  stdin=stdin if null is None else null, stdout=out[0][1] if out else None,
                                  stderr=out[1][1] if out else None, note=f"exec in {self.id}")
        finally:
            for fd in [*([out[0][1], out[1][1]] if out else []), *([null] if null is not None else [])]:
                os.close(fd)
        try:
            try:
                child.recv()
            except EOFError:
                pass
            bufs = _collect([out[0][0], out[1][0]] if out else [], timeout, f"exec in container {self.id}")
            code = os.waitstatus_to_exitcode(child.wait())
        finally:
            child.close()
        return Result(self.id, code if code >= 0 else 128 - code, *(b.decode(errors="replace") for b in bufs))

    def _exec_in(self, ch, pid1: int, cmd: list[str], user: str | None, env: list[str], workdir: str) -> None:
        """In the exec'd process's first fork: join PID 1's cgroups and namespaces, then fork
        the process that runs ``cmd`` (it is in the container's PID namespace) and wait for it."""
        self._step = "joining the container"
        try:
            cgroups.join_like(pid1)
            fd = os.pidfd_open(pid1)
            try:
                if self.cfg.userns:
                    kernel.setns(fd, kernel.CLONE_NEWUSER)
                kernel.setns(fd, sum(kernel.NAMESPACES[t] for t in NAMESPACES))
            finally:
                os.close(fd)
            kid = os.fork()
            if kid == 0:
                try:
                    sandbox.close_fds()
                    self._become(cmd, self.cfg.user if user is None else user, workdir, env=env)
                except BaseException as e:
                    os.write(2, f"labkit exec: {self._step} failed: {e}\n".encode())
                    os._exit(126)
            ch.close()
            os._exit(os.waitstatus_to_exitcode(os.waitpid(kid, 0)[1]) & 0xFF)
        except BaseException as e:
            raise ContainerError(f"exec in container {self.id}: {self._step} failed: {e}",
                                 "is the container running? (labkit ps)") from None

    def _finish(self) -> None:
        if self.pid:
            self.child.close()
            self.pid = None
        if self.group:
            self.group.close()
            self.group = None

    # --- after it ran ---
    def diff(self) -> list[overlay.Change]:
        """What the command changed: the read-write layer, classified (lesson 01)."""
        return overlay.upper_changes(self.upper, self.lowerdirs)

    def commit(self, name: str, store: st.Store | None = None) -> st.Image:
        """A new image: the container's image plus its read-write layer (only). A --userns
        container whose owners were chowned (``cfg.shifted``) is committed from a copy shifted
        back, so the layer has the owners the container saw."""
        store = store or st.Store()
        why = f"labkit commit {self.cfg.name}: {' '.join(self.cfg.cmd)}"
        if not self.cfg.shifted:
            return mutate.add_layer(self.cfg.image, self.upper, name, why, store=store)
        back = lab.scratch(f"commit-{self.id}")
        subprocess.run(["cp", "-a", f"{self.upper}/.", str(back)], check=True, capture_output=True)
        user_namespace.shift_owners(back, -self.cfg.userns)
        try:
            return mutate.add_layer(self.cfg.image, back, name, why, store=store)
        finally:
            lab.remove_tree(back)

    def remove(self, force: bool = True) -> None:
        """Delete the container's directory (its volumes stay: they are not the container's).
        A running container is killed first, and its supervisor (``-d``) let finish; with
        ``force=False`` it is refused instead, as `docker rm` without -f refuses it."""
        detached = not self.pid and self.running_pid1()
        if (self.pid or detached) and not force:
            raise ContainerError(f"container {self.cfg.name} is running",
                                 f"stop it first (labkit stop {self.cfg.name}) or remove it with labkit rm -f")
        if self.pid or detached:
            self.kill()
        deadline = time.monotonic() + 10            # a supervisor records the end (or, --rm, removes)
        while detached and self.dir.exists() and not (self.dir / "result.json").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.dir.exists():
            lab.remove_tree(self.dir)


INIT_FILES = ("hostname", "hosts", "resolv.conf")


def _populate_dev(fd: int) -> None:
    """A container's /dev, as runc makes it: the character devices of DEVICES, a devpts of its
    own (newinstance) with ptmx, a tmpfs for shm, the POSIX message queues of the container's
    IPC namespace at /dev/mqueue (runc's default spec mounts it), and the fd links (devices(7)
    of the OCI runtime spec, "Default Devices" and "Dev symbolic links")."""
    base = f"/proc/self/fd/{fd}"
    for name, (major, minor) in DEVICES.items():
        os.mknod(f"{base}/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(f"{base}/{name}", 0o666)          # mknod(2) applied the umask
    os.mkdir(f"{base}/pts")
    kernel.mount("devpts", f"{base}/pts", "devpts", kernel.MS_NOSUID | kernel.MS_NOEXEC,
                 "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{base}/ptmx")
    os.mkdir(f"{base}/shm")
    kernel.mount("shm", f"{base}/shm", "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC,
                 "mode=1777,size=65536k")
    os.mkdir(f"{base}/mqueue")          # mq_overview(7): the queues of this IPC namespace, PID 1's own
    kernel.mount("mqueue", f"{base}/mqueue", "mqueue", kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
    os.symlink("/proc/self/fd", f"{base}/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{base}/{name}")


def open_in_root(root: Path, path: str) -> int:
    """An O_PATH fd of the file ``path`` inside the container's root, resolved with openat2(2)
    RESOLVE_IN_ROOT (a symlink in the image cannot lead out), for mount(2) through /proc/self/fd."""
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        return kernel.openat2(rootfd, path, os.O_PATH, kernel.RESOLVE_IN_ROOT | kernel.RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(rootfd)


def mkdirs_in_root(root: Path, path: str) -> int:
    """``path`` inside the container's root filesystem, made if missing, as an O_PATH fd.
    Every lookup is openat2(2) with RESOLVE_IN_ROOT: a symlink in the image is resolved as
    the container would see it (``/`` is ``root``), so it can never lead to the host's files
    (the way runc's securejoin mounts volumes)."""
    flags, how = os.O_PATH | os.O_DIRECTORY, kernel.RESOLVE_IN_ROOT | kernel.RESOLVE_NO_MAGICLINKS
    rootfd = os.open(root, flags)
    try:
        fd, done = os.dup(rootfd), ""
        for part in [p for p in path.split("/") if p not in ("", ".")]:
            nxt = f"{done}/{part}"
            try:
                new = kernel.openat2(rootfd, nxt, flags, how)
            except KernelError as e:
                if e.errno != errno.ENOENT:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                new = kernel.openat2(rootfd, nxt, flags, how)
            os.close(fd)
            fd, done = new, nxt
        return fd
    finally:
        os.close(rootfd)


def _console(sock: socket.socket) -> None:
    """In PID 1, after pivot_root: a pty from the container's own /dev/ptmx (so /dev/pts/N
    exists inside), its master sent to the runtime (SCM_RIGHTS, unix(7)), as runc's
    console socket does; the slave becomes stdin, stdout, stderr and the controlling terminal."""
    master, slave = os.openpty()
    socket.send_fds(sock, [b"m"], [master])
    os.close(master)
    sock.close()
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    os.close(slave)


def _exec(argv: list[str], env: dict) -> None:
    """execve(2) the command, searching PATH; if it cannot be run, say why on stderr and exit as
    a shell (and docker run) does: 127 when there is no such command, 126 when it is not executable."""
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        code = 127 if isinstance(e, FileNotFoundError) else 126
        why = "executable file not found in $PATH" if code == 127 and "/" not in argv[0] else e.strerror
        os.write(2, f"labkit: exec {argv[0]!r}: {why}\n".encode())
        os._exit(code)


def _identity(user: str) -> users.Identity:
    """``user`` resolved in the container's own /etc/passwd and /etc/group (after pivot_root)."""
    def read(path):
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return ""
    return users.resolve(user, read("/etc/passwd"), read("/etc/group"))


NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")     # docker's and podman's rule for container names


def _check_run_options(name: str, env: list[str], workdir: str | None) -> None:
    """A --name, -e values and a -w docker would take: a name of NAME's letters, KEY=VALUE with
    a KEY (execve(2) would refuse "=x" only once the container is made), an absolute -w."""
    if workdir and not workdir.startswith("/"):
        raise ContainerError(f"the working directory {workdir!r} is not an absolute path",
                             "write it from /, e.g. -w /app")
    if name and not NAME.fullmatch(name):
        raise ContainerError(f"container name {name!r} is not allowed",
                             "use letters, digits, '_', '.' and '-', starting with a letter or digit")
    for e in env:
        if not e.split("=", 1)[0]:
            raise ContainerError(f"invalid environment variable {e!r}", "write it as KEY=VALUE")


def _merge_env(image_env: list[str], env: list[str]) -> list[str]:
    """The image's Env with ``env``'s KEY=VALUE entries added, replacing those of the same KEY
    (docker run -e; a build step passes the config's Env as it stands)."""
    merged = {e.split("=", 1)[0]: e for e in image_env}      # an entry without "=" stays as it is
    merged.update((e.split("=", 1)[0], e) for e in env if "=" in e)
    return list(merged.values())


def _volume(spec: str) -> str:
    """'HOST:CTR' (HOST under the lab root, made if missing) or 'CTR' (an anonymous volume)."""
    if ":" in spec:
        host, ctr = spec.split(":", 1)
        h = lab.inside(host)
        h.mkdir(parents=True, exist_ok=True)
    else:
        ctr = spec
        h = lab.root() / "volumes" / secrets.token_hex(6) / "_data"
        h.mkdir(parents=True)
    if not ctr.startswith("/") or ".." in Path(ctr).parts:
        raise ContainerError(f"volume target {ctr!r} must be an absolute path inside the container",
                             "write it like /data")
    return f"{h}:{ctr}"


def containers(mine: bool = False) -> list[Container]:
    """Every container whose directory exists, oldest first; ``mine=True``: only those this
    session (this notebook's kernel) made, so one lesson's clean-up leaves another's alone."""
    top = lab.root() / "containers"
    out = []
    for d in sorted(top.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if top.exists() else []:
        try:
            c = Container(Config(**json.loads(d.read_text())))
        except (OSError, ValueError, TypeError):
            continue            # removed meanwhile, or half written by another session
        if not mine or c.cfg.session == lab.session():
            out.append(c)
    return out


def _signal_number(text: str) -> int:
    """'SIGINT', 'INT' or '2' (STOPSIGNAL's forms) -> 2; SIGTERM for anything else."""
    if text.isdigit():
        return int(text)
    return getattr(signal, text if text.startswith("SIG") else f"SIG{text}", signal.SIGTERM)


def _collect(fds: list[int], timeout: float | None, what: str) -> list[bytes]:
    """Read ``fds`` to their ends (select(2)); their bytes, in order."""
    bufs = {fd: bytearray() for fd in fds}
    left, deadline = set(fds), None if timeout is None else time.monotonic() + timeout
    try:
        while left:
            wait = None if deadline is None else max(0, deadline - time.monotonic())
            ready, _, _ = select.select(list(left), [], [], wait)
            if not ready:
                raise ContainerError(f"{what} ran longer than {timeout} s", "it was killed; pass a larger timeout")
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    bufs[fd] += chunk
                else:
                    left.discard(fd)
    finally:
        for fd in fds:
            os.close(fd)
    return [bytes(bufs[fd]) for fd in fds] + [b""] * (2 - len(fds))


def run_detached(image: str, cmd: list[str] | None = None, rm: bool = False, **opts) -> Container:
    """docker run -d: the container runs under a supervisor process of its own, in a session of
    its own (as conmon supervises podman's), so it outlives the caller; its output goes to
    stdout.log and stderr.log (``logs()``); ``stop()``, ``kill()`` and ``exec()`` work from any
    process. The supervisor is in the lab's ledger: ``labkit reset`` ends it."""
    c = Container.create(image, cmd, **opts)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setsid()
            if os.fork():
                os._exit(0)
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            entry = lab.record("process", str(os.getpid()), f"supervisor of container {c.id}")
            c.start(capture=False, logs=True)
            pid1 = c.pid1()
            (c.dir / "state.json").write_text(json.dumps({"supervisor": os.getpid(), "pid1": pid1,
                                                          "starttime": procfs.stat(pid1).starttime}))
            os.write(w, b"ok")
            os.close(w)
            c.wait(timeout=None)
            lab.forget(entry)
            if rm:
                c.remove()
        except BaseException as e:      # noqa: BLE001 - told to the caller, then gone
            try:
                os.write(w, str(e).encode()[:4000])
            except OSError:
                pass
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    try:    # one read, not to the end: the container's processes inherited the pipe's write end
        said = os.read(r, 4096) if select.select([r], [], [], 60)[0] else b"no answer in 60 s"
    finally:
        os.close(r)
    if said != b"ok":
        c.remove()
        raise ContainerError(said.decode(errors="replace") or "the container's supervisor died",
                             "check the command and the image (labkit image inspect)")
    return c


def run(image: str, cmd: list[str] | None = None, timeout: float | None = 120, rm: bool = False,
        capture: bool = True, **opts) -> tuple[Container, Result]:
    """Create, start and wait for a container; returns it (for diff and commit) and its Result.
    ``rm``: like ``docker run --rm``, remove it once it has exited (also after an error).
    ``capture=False``: the command writes to our stdout and stderr (``labkit run``)."""
    c = Container.create(image, cmd, **opts)
    try:
        c.start(capture=capture)
        return c, c.wait(timeout)
    finally:
        if rm:
            c.remove()
