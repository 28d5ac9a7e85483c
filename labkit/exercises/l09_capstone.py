"""Lesson 09 exercises: the smallest memory limit that works; what a second push uploads; a memory
cgroup set up with two writes."""
from __future__ import annotations

import os
import time

from .. import container
from . import exercise

HOG = ["dd", "if=/dev/zero", "of=/dev/null", "bs=32M", "count=1"]    # one 32 MiB buffer, filled


def try_limit(image: str, limit_mib: int, store=None, cmd: list[str] = HOG) -> container.Result:
    """Run ``cmd`` in a throwaway container of ``image`` under ``limit_mib`` MiB of memory."""
    return container.run(image, cmd, memory=f"{limit_mib}m", store=store, rm=True)[1]


@exercise("09.limit", "the smallest memory limit that works", hints=[
    "dd allocates one buffer of bs bytes and fills it; the container needs that plus a little.",
    "Try the slider: find the first value (a multiple of 8 MiB) at which dd exits 0.",
    "A limit equal to bs (32 MiB) is not enough: dd also needs its code, its stack and page tables.",
])
def check_smallest_limit(limit_mib, image: str = "busybox", store=None):
    """``limit_mib``: a multiple of 8. dd must succeed under it and be OOM-killed 8 MiB lower.
    The check runs both containers, so the answer is measured, not looked up."""
    if not isinstance(limit_mib, int) or limit_mib <= 8 or limit_mib % 8:
        yield False, "answer with a multiple of 8 (MiB) above 8, e.g. 64"
        return
    ok = try_limit(image, limit_mib, store)
    yield ok.exit_code == 0, (f"dd runs under {limit_mib} MiB" if ok.exit_code == 0 else
                              f"under {limit_mib} MiB dd did not finish: {ok.message}")
    lower = try_limit(image, limit_mib - 8, store)
    yield lower.oom_killed, (f"and {limit_mib - 8} MiB is too little (OOM-killed): {limit_mib} is the smallest"
                             if lower.oom_killed else f"{limit_mib - 8} MiB is enough too: go lower")


@exercise("09.upload", "what the second push uploaded", hints=[
    "Every blob push starts with a HEAD: 200 means the registry has it, and the client skips it.",
    "Count the blobs that were finished with a PUT (a layer or the config), not the manifest.",
])
def check_uploaded(answer, trace):
    """``answer``: how many blobs the second push uploaded; ``trace``: that push's requests."""
    truth = sum(1 for e in trace if e.method == "PUT" and e.what.startswith("finish"))
    skipped = sum(1 for e in trace if e.method == "HEAD" and e.status == 200)
    ok = answer == truth
    yield ok, (f"{truth} blobs went up; {skipped} were already there and were skipped" if ok else
               f"{answer!r} is not the number of blobs uploaded" if answer is not None else "answer with a number")


def _allocate_when_told(ch, mib: int) -> None:
    """In the check's child: wait for the go, then take ``mib`` MiB, touching every page."""
    ch.recv(timeout=60)
    b = bytearray(mib << 20)
    b[::4096] = b"x" * len(b[::4096])
    ch.send("done")


@exercise("09.cgroup", "limit a process's memory with two writes", hints=[
    "A cgroup is a directory; its limits are files in it, and a process joins it when its PID is "
    "written into cgroup.procs.",
    "cgroup v1 names the memory limit memory.limit_in_bytes, v2 memory.max (lesson 05); "
    "version tells you which this machine has.",
    "(Path(group) / name).write_text(str(limit)), then (Path(group) / 'cgroup.procs').write_text(str(pid)).",
])
def check_cgroup(my_limit):
    """``my_limit(group, version, pid, limit)``: put process ``pid`` into the memory cgroup
    directory ``group`` (cgroup ``version`` 1 or 2) under a ``limit`` of bytes. The check runs
    a child that then takes 64 MiB: under 32 MiB the OOM killer must end it, under 128 MiB it
    must finish."""
    if not callable(my_limit):
        yield False, "define my_limit(group, version, pid, limit) and pass it"
        return
    import secrets
    import signal
    from .. import cgroups, sandbox
    for limit_mib, should_die in ((32, True), (128, False)):
        with cgroups.Group(f"ex09-{secrets.token_hex(3)}", want=("memory",)) as g:
            group, version = g.paths["memory"], g.ctl["memory"].version
            with sandbox.Child(_allocate_when_told, 64, note="09.cgroup check") as child:
                try:
                    my_limit(group, version, child.pid, limit_mib << 20)
                except Exception as e:       # noqa: BLE001 - the learner's error, in one line
                    yield False, f"my_limit raised {type(e).__name__}: {e}"
                    return
                joined = child.pid in g.procs()
                yield joined, "the process is in the group" if joined else "the process is not in the group's cgroup.procs"
                child.send("go")
                try:
                    child.recv(timeout=60)
                except Exception:            # noqa: BLE001 - it died: the OOM killer, we check below
                    pass
                for _ in range(600):                 # it has finished or been killed by now
                    status = child.poll()
                    if status is not None:
                        break
                    time.sleep(0.05)
                else:
                    yield False, "the process neither finished nor was killed within 30 s"
                    return
                killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            if should_die:
                yield killed and g.oom_kills() >= 1, (
                    f"under {limit_mib} MiB the OOM killer ended it" if killed else
                    f"under {limit_mib} MiB it took 64 MiB and lived: the limit is not in force")
            else:
                yield not killed, (f"under {limit_mib} MiB it finished" if not killed else
                                   f"under {limit_mib} MiB it was killed: is the limit in bytes?")
