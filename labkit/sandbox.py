"""Run a function or a command in a forked child with fresh namespaces.

The child first moves into new namespaces (unshare(2)); with a new mount namespace it
also marks every mount private (mount_namespaces(7), "MS_PRIVATE"), so the mounts it
makes are invisible to the host and die with it, whatever happens. The function's
return value, or its exception, comes back to the parent through a pipe (pickle),
and what the child printed is printed again by the parent (so it shows in Jupyter).

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
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Iterable

from . import kernel
from .errors import LabError, SandboxError


def run(fn: Callable[..., Any], *args, namespaces: Iterable[str] = ("mnt",),
        timeout: float | None = 60, **kwargs) -> Any:
    """Call ``fn(*args, **kwargs)`` in a child inside new ``namespaces``; return its value.

    ``namespaces`` names types from kernel.NAMESPACES (mnt, uts, ipc, net, pid, user,
    cgroup). With "pid" the function runs as PID 1 of the new namespace (a second
    fork, as unshare(2) says CLONE_NEWPID applies to children only). The child is
    killed after ``timeout`` seconds, on an exception in the parent and on Ctrl-C.
    """
    namespaces = tuple(namespaces)
    unknown = set(namespaces) - set(kernel.NAMESPACES)
    if unknown:
        raise LabError(f"unknown namespace type {sorted(unknown)}",
                       f"use some of {', '.join(kernel.NAMESPACES)}")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(w, fn, args, kwargs, namespaces)   # never returns
    os.close(w)
    try:
        data = _read_all(r, timeout, pid)
    except BaseException:
        _kill(pid)
        raise
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if not data:
        raise SandboxError(f"the child died without an answer ({_describe(status)})",
                           "look for an OOM kill or a signal; run the function directly to debug it")
    kind, value, out = pickle.loads(data)
    if out:
        sys.stdout.write(out)
    if kind == "err":
        raise value
    return value


def run_command(argv: list[str], namespaces: Iterable[str] = ("mnt",), timeout: float | None = 60,
                **popen_kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` inside new namespaces; returns the CompletedProcess (text, captured)."""
    popen_kwargs.setdefault("capture_output", True)
    popen_kwargs.setdefault("text", True)
    return run(subprocess.run, argv, namespaces=namespaces, timeout=timeout, **popen_kwargs)


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


RESULT_FD = -1     # in a sandbox child: the pipe the result goes back through


def close_fds() -> None:
    """Close every fd above 2 except the result pipe, as a runtime must before exec."""
    keep = RESULT_FD
    if keep > 2:
        os.closerange(3, keep)
        os.closerange(keep + 1, 65536)
    else:
        os.closerange(3, 65536)


def _child(w: int, fn, args, kwargs, namespaces) -> None:
    global RESULT_FD
    RESULT_FD = w
    out = io.StringIO()
    sys.stdout = sys.stderr = out       # Jupyter's streams belong to the parent
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        enter(namespaces)
        if "pid" in namespaces:
            pid = os.fork()             # the grandchild is PID 1 of the new namespace
            if pid:
                os.close(w)
                _, status = os.waitpid(pid, 0)
                os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        payload = ("ok", fn(*args, **kwargs), out.getvalue())
    except BaseException as e:          # noqa: BLE001 - everything goes back to the parent
        payload = ("err", e, out.getvalue())
        code = 1
    try:
        data = pickle.dumps(payload)
    except Exception:                   # an unpicklable result or exception
        text = traceback.format_exc() if payload[0] == "ok" else "".join(
            traceback.format_exception(payload[1]))
        data = pickle.dumps(("err", SandboxError(
            f"the child's {'result' if payload[0] == 'ok' else 'exception'} could not be sent back:\n{text}",
            "return plain data (numbers, strings, lists, dicts, dataclasses) from sandboxed functions"),
            payload[2]))
    try:
        _write_all(w, data)
    finally:
        os._exit(code)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int, timeout: float | None, pid: int) -> bytes:
    chunks, deadline = [], None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            raise SandboxError(f"the child (pid {pid}) ran longer than {timeout} s and was killed",
                               "pass a larger timeout= or make the experiment smaller")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
