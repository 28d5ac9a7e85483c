"""Children: every helper process labkit forks is a :class:`Child`.

A Child is a fork(2) of this process that first moves into new namespaces (unshare(2));
with a new mount namespace it also marks every mount private (mount_namespaces(7),
"MS_PRIVATE"), so the mounts it makes are invisible to the host and die with it. With a
new PID namespace it forks once more, and the grandchild is PID 1 there (unshare(2):
CLONE_NEWPID applies to children only; so does CLONE_NEWTIME); the middle process waits for it and dies with
the same status. Parent and child talk over a :class:`Channel` (pickled messages through
two close-on-exec pipes); an exception raised in the child comes back as the same
exception. While it lives, the child is in the lab's ledger; ``close()`` kills and reaps it.

:func:`run` is the common case: call one function in a child and return its value (or
raise its exception); what the child printed is printed again by the parent, so it shows
in Jupyter.

    >>> from labkit import sandbox
    >>> sandbox.run(os.getpid) != os.getpid()
    True
"""
from __future__ import annotations

import io
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from . import kernel, lab
from .errors import LabError, SandboxError

CHANNEL: "Channel | None" = None      # in a child: its channel to the parent (close_fds keeps it)


@dataclass
class Failure:
    """An exception raised in the child, on its way to the parent."""
    error: BaseException


class Channel:
    """Pickled messages, each behind a 4-byte length, over one pipe each way."""

    def __init__(self, rfd: int, wfd: int):
        self.rfd, self.wfd = rfd, wfd

    def send(self, obj) -> None:
        try:
            data = pickle.dumps(obj)
        except Exception:                        # an unpicklable result or exception
            data = pickle.dumps(Failure(SandboxError(
                f"the child's answer could not be sent back:\n{traceback.format_exc()}",
                "return plain data (numbers, strings, lists, dicts, dataclasses) from sandboxed functions")))
        view = memoryview(struct.pack("<I", len(data)) + data)
        while view:
            view = view[os.write(self.wfd, view):]

    def recv(self, timeout: float | None = None, who: str = "the child", raise_failure: bool = True):
        """The next message (an exception sent as Failure is raised, unless ``raise_failure``
        is false); EOFError when the other side closed its end (it exited, or exec'd: the
        pipes are close-on-exec)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        head = self._read(4, deadline, who, timeout)
        msg = pickle.loads(self._read(struct.unpack("<I", head)[0], deadline, who, timeout))
        if raise_failure and isinstance(msg, Failure):
            raise msg.error
        return msg

    def _read(self, n: int, deadline, who, timeout) -> bytes:
        chunks = []
        while n:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.rfd], [], [], left)[0]:
                raise SandboxError(f"{who} ran longer than {timeout} s and was killed",
                                   "pass a larger timeout= or make the experiment smaller")
            chunk = os.read(self.rfd, min(n, 1 << 16))
            if not chunk:
                raise EOFError("the other side closed the channel")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


class Child:
    """``target(channel, *args)`` in a forked child inside new ``namespaces``.

    ``cgroup`` (a cgroups.Group) is joined before the namespaces are made; ``stdin``, ``stdout``
    and ``stderr`` are fds the child's 0, 1 and 2 become. Use it as a context manager, or call
    ``close()``: the child is killed (if still running) and reaped, and leaves the ledger.
    """

    def __init__(self, target: Callable, *args, namespaces: Iterable[str] = (), note: str = "",
                 cgroup=None, stdout: int | None = None, stderr: int | None = None, stdin: int | None = None):
        self.namespaces = _check_types(namespaces)
        down_r, down_w = os.pipe2(os.O_CLOEXEC)
        up_r, up_w = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(down_w)
            os.close(up_r)
            _start(Channel(down_r, up_w), target, args, self.namespaces, cgroup, (stdin, stdout, stderr), parent)
        os.close(down_r)
        os.close(up_w)
        self.pid, self.status = pid, None
        self.channel = Channel(up_r, down_w)
        try:
            self._entry = lab.record("process", str(pid), note or getattr(target, "__name__", "child"))
        except PermissionError:      # an unprivileged caller in a root-owned lab root: it can
            self._entry = None       # kill its own children itself; nothing of root's to undo

    def send(self, obj) -> None:
        self.channel.send(obj)

    def recv(self, timeout: float | None = None, raise_failure: bool = True):
        return self.channel.recv(timeout, f"the child (pid {self.pid})", raise_failure)

    def poll(self) -> int | None:
        """The wait status if the child has exited (it is then reaped), else None."""
        if self.status is None and self.pid:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = status
        return self.status

    def wait(self) -> int:
        """Block until the child exits; its wait status (os.waitstatus_to_exitcode reads it)."""
        if self.status is None:
            self.status = os.waitpid(self.pid, 0)[1]
        return self.status

    def close(self) -> None:
        """Kill the child unless it has exited, reap it, forget it. With a PID namespace the
        middle process gets SIGTERM first: it SIGKILLs PID 1 and reaps it before exiting."""
        if self.status is None and self.poll() is None:
            first = signal.SIGTERM if "pid" in self.namespaces else signal.SIGKILL
            try:
                os.kill(self.pid, first)
                for _ in range(200):
                    if self.poll() is not None:
                        break
                    time.sleep(0.005)
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()
        self.channel.close()
        if self._entry:
            lab.forget(self._entry)

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_types(namespaces: Iterable[str]) -> tuple[str, ...]:
    namespaces = tuple(namespaces)
    unknown = set(namespaces) - set(kernel.NAMESPACES)
    if unknown:
        raise LabError(f"unknown namespace type {sorted(unknown)}", f"use some of {', '.join(kernel.NAMESPACES)}")
    return namespaces


def _start(ch: Channel, target, args, namespaces, cgroup, stdio: tuple, parent: int) -> None:
    """In the child: fds, cgroup, namespaces, the PID-1 fork, then the target. Never returns.
    A child dies with the process that made it (prctl(2) PR_SET_PDEATHSIG; the middle process
    of a PID namespace gets SIGTERM and takes PID 1 with it): a killed notebook kernel or
    `labkit run` leaves no container running."""
    global CHANNEL
    CHANNEL = ch
    code = 0
    pid_ns = "pid" in namespaces or "time" in namespaces
    if pid_ns:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})     # see below
    kernel.set_parent_death_signal(signal.SIGTERM if pid_ns else signal.SIGKILL)
    if os.getppid() not in (parent, 0):   # it died before the line above (0: a parent outside
        os._exit(1)                       # our PID namespace, after setns: it cannot be told)
    try:
        for i, fd in enumerate(stdio):          # stdin, stdout, stderr: the fds given, else ours
            if fd is not None:
                os.dup2(fd, i)
        if cgroup is not None:
            cgroup.add(os.getpid())
        enter(namespaces)
        if pid_ns:   # CLONE_NEWPID and CLONE_NEWTIME apply to children only
            # SIGTERM stays blocked across the fork: the middle handles it only once it knows
            # PID 1, and PID 1 only once the kernel will kill it if the middle dies
            pid1 = os.fork()
            if pid1:
                _wait_for_pid1(ch, pid1)
            kernel.set_parent_death_signal(signal.SIGKILL)   # if the middle dies, PID 1 dies
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        target(ch, *args)
    except BaseException as e:          # noqa: BLE001 - everything goes back to the parent
        code = 1
        try:
            ch.send(Failure(e))
        except BaseException:           # the parent is gone
            pass
    os._exit(code)


def _wait_for_pid1(ch: Channel, pid1: int) -> None:
    """The middle process: pass SIGTERM on to PID 1 as SIGKILL, then exit as PID 1 did."""
    ch.close()
    signal.signal(signal.SIGTERM, lambda *a: os.kill(pid1, signal.SIGKILL))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    while True:
        try:
            _, status = os.waitpid(pid1, 0)
            break
        except InterruptedError:
            continue
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def enter(namespaces: Iterable[str]) -> None:
    """unshare(2) the given namespace types; with "mnt", make every mount private; with
    "user", map uid and gid 0 inside to the caller's own ids (user_namespaces(7): one line
    mapping one's own id is allowed without privilege; setgroups must be denied first)."""
    namespaces = tuple(namespaces)
    uid, gid = os.geteuid(), os.getegid()        # before unshare: afterwards they read 65534
    flags = 0
    for name in namespaces:
        flags |= kernel.NAMESPACES[name]
    if flags:
        kernel.unshare(flags)
    if "user" in namespaces:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
    if "mnt" in namespaces:
        kernel.make_private("/")


def close_fds(keep: Iterable[int] = ()) -> None:
    """Close every fd above 2 except ``keep`` and the channel to the parent, as a runtime must
    before exec (an inherited fd is a way out of a container: lesson 05)."""
    keep = sorted({*keep, *((CHANNEL.rfd, CHANNEL.wfd) if CHANNEL else ())} - {0, 1, 2})
    low = 3
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


# --- one function in a child ------------------------------------------------------------------
def run(fn: Callable[..., Any], *args, namespaces: Iterable[str] = ("mnt",),
        timeout: float | None = 60, **kwargs) -> Any:
    """Call ``fn(*args, **kwargs)`` in a child inside new ``namespaces``; return its value.

    ``namespaces`` names types from kernel.NAMESPACES (mnt, uts, ipc, net, pid, user,
    cgroup, time). With "pid" the function runs as PID 1 of the new namespace. The child is
    killed after ``timeout`` seconds, on an exception in the parent and on Ctrl-C.
    """
    with Child(_call, fn, args, kwargs, namespaces=namespaces,
               note=f"sandbox.run {getattr(fn, '__name__', 'function')}") as child:
        try:
            ok, value, out = child.recv(timeout)
        except EOFError:
            raise SandboxError(f"the child died without an answer ({_describe(child.wait())})",
                               "look for an OOM kill or a signal; run the function directly to debug it") from None
        child.wait()                     # it exits right after answering: reap it, no signal needed
    if out:
        sys.stdout.write(out)
    if not ok:
        raise value
    return value


def _call(ch: Channel, fn, args, kwargs) -> None:
    out = io.StringIO()
    sys.stdout = sys.stderr = out       # Jupyter's streams belong to the parent
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        value = fn(*args, **kwargs)
    except BaseException as e:          # noqa: BLE001 - raised again in the parent
        ch.send((False, e, out.getvalue()))
    else:
        ch.send((True, value, out.getvalue()))


def run_command(argv: list[str], namespaces: Iterable[str] = ("mnt",), timeout: float | None = 60,
                **popen_kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` inside new ``namespaces``; returns the CompletedProcess (text, captured)."""
    popen_kwargs.setdefault("capture_output", True)
    popen_kwargs.setdefault("text", True)
    return run(subprocess.run, argv, namespaces=namespaces, timeout=timeout, **popen_kwargs)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
