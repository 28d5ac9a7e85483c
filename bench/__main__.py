"""Run every benchmark and print one table per benchmark.

    python -m bench            # all
    python -m bench overlay    # those whose name contains "overlay"
"""
import sys

from . import build, container_start, cow_fork, layers, overlay_mount, registry

BENCHMARKS = {"overlay mount": overlay_mount.main, "fork cost": cow_fork.main, "layers": layers.main,
              "container start": container_start.main, "build and squash": build.main,
              "registry": registry.main}

if __name__ == "__main__":
    want = sys.argv[1] if len(sys.argv) > 1 else ""
    for name, fn in BENCHMARKS.items():
        if want in name:
            fn()
