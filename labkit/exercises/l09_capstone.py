"""Lesson 09 exercises: the smallest memory limit that works; what a second push uploads."""
from __future__ import annotations

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
