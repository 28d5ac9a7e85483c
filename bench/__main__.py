"""Run every benchmark and print one table per benchmark.

    python -m bench            # all
    python -m bench overlay    # those whose name contains "overlay"
"""
import os
import platform
import sys
import time
from pathlib import Path

from . import NOTES, SUMMARY, build, container_start, course, cow_fork, layers, load, overlay_mount, registry, summary_table

BENCHMARKS = {"overlay mount": overlay_mount.main, "fork cost": cow_fork.main, "layers": layers.main,
              "container start": container_start.main, "build and squash": build.main,
              "registry": registry.main, "course": course.main}

if __name__ == "__main__":
    want = sys.argv[1] if len(sys.argv) > 1 else ""
    for name, fn in BENCHMARKS.items():
        if want in name:
            fn()
    if SUMMARY or NOTES:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   platform.machine())
        mem = int(open("/proc/meminfo").readline().split()[1]) // 1024
        machine = (f"{time.strftime('%Y-%m-%d')}, Linux {os.uname().release}, {os.cpu_count()} x {cpu}, "
                   f"{mem} MiB, {platform.freedesktop_os_release().get('PRETTY_NAME', '')}")
        text = (f"the whole lab against the real tools, one run ({machine}); {load()} at the end\n"
                f"{summary_table()}\n" + "".join(f"{line}\n" for line in NOTES))
        print("\n" + text)
        if not want:                     # the whole lab: keep it for the README
            out = Path(__file__).parent / "results" / "latest.txt"
            out.parent.mkdir(exist_ok=True)
            out.write_text(text)
            print(f"(saved in {out})")
