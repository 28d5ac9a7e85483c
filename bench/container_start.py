"""Container start-to-exit latency: `labkit run busybox -- true` against `runc run` (and crun).

Both run the same busybox rootfs: labkit from its store (overlay of the image layers), runc
and crun from the bundle umoci unpacks from the same image. Each is timed as a whole
command, from exec to exit, median of REPEAT runs. crun refuses this lab machine's hybrid
cgroup layout unless the unified hierarchy is hidden in its mount namespace; where it
fails, the row says so.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench import headline, with_lab
from labkit import lab
from labkit.image import store as st
from labkit.image.base import base_image

REPEAT = 20


def _time(argv, **kw) -> float | None:
    runs = []
    for i in range(REPEAT):
        t = time.perf_counter()
        r = subprocess.run([a.replace("{i}", str(i)) for a in argv], capture_output=True, **kw)
        runs.append(time.perf_counter() - t)
        if r.returncode:
            return None
    return statistics.median(runs)


@with_lab
def main() -> None:
    s = st.Store()
    base_image(s)
    w = lab.scratch("bench-run")
    s.save(w / "layout", "v1", "busybox")
    subprocess.run(["umoci", "unpack", "--image", f"{w / 'layout'}:v1", str(w / "bundle")], check=True,
                   capture_output=True)
    spec = json.loads((w / "bundle" / "config.json").read_text())
    spec["process"]["args"], spec["process"]["terminal"] = ["/bin/true"], False
    (w / "bundle" / "config.json").write_text(json.dumps(spec))
    labkit = [sys.executable, "-m", "labkit", "run", "--rm", "busybox", "--", "/bin/true"]
    rows = [("labkit run --rm busybox -- true", _time(labkit)),
            ("runc run", _time(["runc", "--root", str(w / "runc"), "run", "--bundle", str(w / "bundle"),
                                "labkit-bench-{i}"]))]
    if shutil.which("crun"):
        rows.append(("crun run", _time(["crun", "--root", str(w / "crun"), "run", "--bundle", str(w / "bundle"),
                                        "labkit-bench-{i}"])))
    from labkit import container

    def in_process():
        container.run("busybox", ["/bin/true"], rm=True)
    in_process()
    runs = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        in_process()
        runs.append(time.perf_counter() - t)
    rows.insert(1, ("labkit container.run (in-process)", statistics.median(runs)))
    base = rows[2][1]
    print(f"\ncontainer start to exit, median of {REPEAT} (ms)  [{os.uname().release}, {os.cpu_count()} cpus]")
    for name, t in rows:
        shown = f"{t * 1e3:8.1f}" if t else "  failed"
        ratio = f"{t / base:6.2f}x" if t and base else "     -"
        print(f"{name:<34} {shown} {ratio}")
    print("(labkit's time includes starting its Python interpreter, ~60 ms of it)")
    for name, t in rows[:2]:
        if t and base:
            headline("container start to exit: " + name.split(" busybox")[0].split(" (")[0], "ms", t * 1e3,
                     "runc run", base * 1e3)


if __name__ == "__main__":
    main()
