"""Overlay mount time for 1, 10, 100 and 500 lower layers.

Three ways to mount the same stack, each timed from the call to a mounted tree:
  labkit mount(2)   one option string (relative paths from a child when it is over a page)
  labkit new API    fsopen + one fsconfig(lowerdir+) per layer + fsmount + move_mount
  mount(8)          util-linux, run as a command from the layers' parent directory
The ratio column is labkit's faster API against mount(8), medians; the three take turns, REPEAT
runs each, and every mount is taken down (untimed) before the next.
"""
import subprocess

from bench import headline, interleaved, load, with_lab
from labkit import lab, overlay
from labkit.kernel import MNT_DETACH, umount2

LAYERS = (1, 10, 100, 500)
REPEAT = 15


def measure(n: int) -> dict:
    base = lab.scratch(f"bench-overlay-{n}")
    ov = overlay.stack(base, {str(i): {f"f{i}": ""} for i in range(n)}, upper="u", work="w", merged="m")
    rel = ",".join(["lowerdir=" + ":".join(str(i) for i in range(n)), "upperdir=u", "workdir=w"])
    cmd = ["mount", "-t", "overlay", "overlay", "-o", rel, "m"]

    def with_api(api):
        def mount():
            ov.api = api
            ov.mount()
        return mount

    def down(_):
        ov.unmount()
        if (base / "m").is_mount():
            umount2(str(base / "m"), MNT_DETACH)
    r = interleaved({"mount": with_api("mount"), "new": with_api("new"),
                     "mount(8)": lambda: subprocess.run(cmd, cwd=base, check=True)}, before=down, repeat=REPEAT)
    down(None)
    lab.remove_tree(base)
    return {k: t.scaled(1e3) for k, t in r.items()}


@with_lab
def main() -> None:
    print(f"\noverlay mount (ms), the three interleaved, {REPEAT} runs each, medians; {load()}")
    print(f"{'layers':>6} {'labkit mount(2)':>16} {'labkit new API':>15} {'mount(8)':>9} {'labkit/mount(8)':>16}")
    for n in LAYERS:
        r = measure(n)
        best = min(r["mount"], r["new"], key=lambda t: t.median)
        print(f"{n:>6} {r['mount'].median:>16.3f} {r['new'].median:>15.3f} {r['mount(8)'].median:>9.3f} "
              f"{best.median / r['mount(8)'].median:>15.2f}x")
        if n in (1, 100):
            headline(f"overlay mount, {n} layer{'s' if n > 1 else ''}", "ms", best, "mount(8)", r["mount(8)"])


if __name__ == "__main__":
    main()
