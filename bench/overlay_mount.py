"""Overlay mount time for 1, 10, 100 and 500 lower layers.

Three ways to mount the same stack, each timed from the call to a mounted tree:
  labkit mount(2)   one option string (relative paths from a child when it is over a page)
  labkit new API    fsopen + one fsconfig(lowerdir+) per layer + fsmount + move_mount
  mount(8)          util-linux, run as a command from the layers' parent directory
The ratio column is labkit's best against mount(8). Medians of REPEAT runs.
"""
import os
import statistics
import subprocess
import time

from bench import headline, with_lab
from labkit import lab, overlay
from labkit.kernel import MNT_DETACH, umount2

LAYERS = (1, 10, 100, 500)
REPEAT = 15


def _time(fn, undo) -> float:
    runs = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
        undo()
    return statistics.median(runs)


def measure(n: int) -> dict:
    base = lab.scratch(f"bench-overlay-{n}")
    ov = overlay.stack(base, {str(i): {f"f{i}": ""} for i in range(n)}, upper="u", work="w", merged="m")
    out = {}
    for api in ("mount", "new"):
        ov.api = api
        out[api] = _time(ov.mount, ov.unmount)
    rel = ",".join(["lowerdir=" + ":".join(str(i) for i in range(n)), "upperdir=u", "workdir=w"])
    cmd = ["mount", "-t", "overlay", "overlay", "-o", rel, "m"]
    out["mount(8)"] = _time(lambda: subprocess.run(cmd, cwd=base, check=True),
                            lambda: umount2(str(base / "m"), MNT_DETACH))
    lab.remove_tree(base)
    return out


@with_lab
def main() -> None:
    print(f"\noverlay mount, median of {REPEAT} (ms)  [{os.uname().release}, {os.cpu_count()} cpus]")
    print(f"{'layers':>6} {'labkit mount(2)':>16} {'labkit new API':>15} {'mount(8)':>9} {'labkit/mount(8)':>16}")
    for n in LAYERS:
        r = measure(n)
        best = min(r["mount"], r["new"])
        print(f"{n:>6} {r['mount'] * 1e3:>16.3f} {r['new'] * 1e3:>15.3f} {r['mount(8)'] * 1e3:>9.3f} "
              f"{best / r['mount(8)']:>15.2f}x")
        if n in (1, 100):
            headline(f"overlay mount, {n} layer{'s' if n > 1 else ''}", "ms", best * 1e3, "mount(8)", r["mount(8)"] * 1e3)


if __name__ == "__main__":
    main()
