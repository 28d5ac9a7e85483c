"""The whole course's compute time: every lesson run under nbval, as `make test` runs them.

Each lesson runs in a pytest process of its own with a fresh lab root, in order, and is timed
from start to exit (the kernel's start and every cell). No real tool does this, so there is no
ratio: the total goes under the summary table. This is what a class waits for in total when
every learner presses Run All on every lesson.
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import NOTES, load

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    rows = []
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        home = tempfile.mkdtemp(prefix="labkit-bench-course-")
        env = dict(os.environ, LABKIT_HOME=home)
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
                            "--nbval-sanitize-with", str(REPO / "tests" / "nbval-sanitize.cfg"), "--nbval-current-env",
                            "--nbval-cell-timeout=600", str(nb)], cwd=REPO, env=env, capture_output=True, text=True)
        rows.append((nb.stem, time.perf_counter() - t, r.returncode == 0))
        subprocess.run([sys.executable, "-m", "labkit", "reset"], env=env, capture_output=True)
        os.rmdir(home) if not os.listdir(home) else subprocess.run(["rm", "-rf", "--one-file-system", home])
    total = sum(t for _, t, _ in rows)
    print(f"\nthe course under nbval, one lesson at a time (s); {load()}")
    for name, t, ok in rows:
        print(f"{name:<28} {t:>7.1f}{'' if ok else '  (failed: run make test)'}")
    print(f"{'total':<28} {total:>7.1f}")
    NOTES.append(f"the whole course under nbval: {total:.0f} s for {len(rows)} lessons "
                 f"({sum(not ok for _, _, ok in rows)} failed), one at a time")


if __name__ == "__main__":
    main()
