"""Container start-to-exit latency: `labkit run busybox -- true` against `runc run` (and crun),
with two floor rows: Python starting, and Python importing the standard-library modules a
`labkit run` imports (issue 20: they alone take about 2x runc's whole run).

Both run the same busybox rootfs: labkit from its store (overlay of the image layers), runc
and crun from the bundle umoci unpacks from the same image. Each is timed as a whole
command, from exec to exit, REPEAT runs each, taking turns. crun refuses this lab machine's hybrid
cgroup layout unless the unified hierarchy is hidden in its mount namespace; where it
fails, the row says so.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import headline, interleaved, load, with_lab
from labkit import lab
from labkit.image import store as st
from labkit.image.base import base_image

REPEAT = 20


def _stdlib_of_run(labkit: str) -> list[str]:
    """The standard-library modules one `labkit run` imports (python -X importtime's list,
    without labkit's own modules and pyseccomp): what any Python `labkit run` must load."""
    r = subprocess.run([sys.executable, "-X", "importtime", labkit, "run", "--rm", "busybox", "--", "/bin/true"],
                       check=True, capture_output=True, text=True)
    names = [line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    return [n for n in names[1:] if not n.startswith(("labkit", "pyseccomp", "_distutils_hack", "__editable__"))]


def _floor(modules: list[str]):
    """A contender that starts the venv's Python, imports ``modules`` and leaves at once."""
    script = ("import importlib, os\nfor m in %r:\n    try:\n        importlib.import_module(m)\n"
              "    except ImportError:\n        pass\nos._exit(0)\n" % modules)
    return _command([sys.executable, "-c", script])


def _command(argv: list[str]):
    """A contender that runs ``argv`` ({i} numbered per run, for runc's container ids)."""
    count = iter(range(10 ** 6))

    def run():
        i = next(count)
        subprocess.run([a.replace("{i}", str(i)) for a in argv], check=True, capture_output=True)
    return run


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
    from labkit import container
    contenders = {
        "labkit run --rm busybox -- true": _command([str(Path(sys.executable).with_name("labkit")), "run", "--rm",
                                                     "busybox", "--", "/bin/true"]),
        "labkit container.run (in-process)": lambda: container.run("busybox", ["/bin/true"], rm=True),
        "runc run": _command(["runc", "--root", str(w / "runc"), "run", "--bundle", str(w / "bundle"),
                              "labkit-bench-{i}"]),
        "floor: python -c pass": _command([sys.executable, "-c", "pass"]),
        "floor: python + run's stdlib imports": _floor(_stdlib_of_run(str(Path(sys.executable).with_name("labkit"))))}
    if shutil.which("crun"):
        contenders["crun run"] = _command(["crun", "--root", str(w / "crun"), "run", "--bundle", str(w / "bundle"),
                                           "labkit-bench-c{i}"])
    container.run("busybox", ["/bin/true"], rm=True)      # the snapshots unpacked, the modules imported
    r = {k: t.scaled(1e3) for k, t in interleaved(contenders, repeat=REPEAT).items()}
    base = r["runc run"]
    print(f"\ncontainer start to exit (ms), interleaved, {REPEAT} runs each; {load()}")
    print(f"{'':<36} {'min':>7} {'median':>7} {'median/runc':>12}")
    for name, t in r.items():
        print(f"{name:<36} {t.min:>7.1f} {t.median:>7.1f} {t.median / base.median:>11.2f}x")
    print("(the `labkit` command's time includes starting Python and importing labkit; the floor rows are\n"
          " what any Python `labkit run` pays before its own code: the interpreter, and the standard library\n"
          " modules a run imports, timed alone)")
    for name in list(r)[:2]:
        headline("container start to exit: " + name.split(" busybox")[0].split(" (")[0], "ms", r[name],
                 "runc run", base)


if __name__ == "__main__":
    main()
