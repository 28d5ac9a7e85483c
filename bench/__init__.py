"""`make bench`: labkit measured against the real tools, in the same run, as ratios.

Each benchmark prints its own detailed table and adds its headline numbers to SUMMARY with
headline(); `python -m bench` prints them all as one table for the whole lab at the end.

Honesty rules, kept by :func:`interleaved`: labkit and the tool take turns within every round
(a slow minute on a shared VM hits both), the order inside a round alternates (neither always
runs on the other's warm cache or pays for the other's leftovers), every pair runs at least
REPEAT times, and both the fastest run and the median are reported. The load average is
printed with every table.
"""
import os
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

REPEAT = 5


@dataclass(frozen=True)
class Timing:
    """Seconds of each run of one contender, in the order they ran."""
    runs: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def scaled(self, factor: float) -> "Timing":
        return Timing(tuple(r * factor for r in self.runs))

    def __str__(self) -> str:
        return f"min {self.min:.3f} median {self.median:.3f}"


def interleaved(contenders: dict[str, Callable[[], object]], *, before: Callable[[str], object] | None = None,
                repeat: int = REPEAT) -> dict[str, Timing]:
    """Time each contender ``repeat`` times, taking turns: round i runs them all, in the
    given order on even rounds and reversed on odd ones. ``before(name)`` runs untimed before
    each run (a fresh target directory, say)."""
    runs: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for i in range(max(repeat, REPEAT)):
        for name in (names if i % 2 == 0 else names[::-1]):
            if before:
                before(name)
            t = time.perf_counter()
            contenders[name]()
            runs[name].append(time.perf_counter() - t)
    return {k: Timing(tuple(v)) for k, v in runs.items()}


def load() -> str:
    """The load average (1, 5, 15 minutes) and the number of CPUs, for the tables' headers."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cpus"


@dataclass
class Headline:
    what: str          # "overlay mount, 100 layers"
    unit: str          # "ms", "s", "MiB"
    labkit: Timing
    tool: str          # the real tool it was measured against, in the same run
    theirs: Timing

    @property
    def ratio(self) -> float:
        """labkit / tool, medians: below 1 means labkit took less (time, memory)."""
        return self.labkit.median / self.theirs.median if self.theirs.median else float("nan")

    @property
    def ratio_min(self) -> float:
        return self.labkit.min / self.theirs.min if self.theirs.min else float("nan")


SUMMARY: list[Headline] = []
NOTES: list[str] = []      # lines printed under the table: measures with no real tool to set beside


def headline(what: str, unit: str, labkit: "Timing | float", tool: str, theirs: "Timing | float") -> None:
    """One row of the whole lab's table; a plain number (a memory peak) is a single run."""
    as_timing = lambda x: x if isinstance(x, Timing) else Timing((x,))
    SUMMARY.append(Headline(what, unit, as_timing(labkit), tool, as_timing(theirs)))


def summary_table() -> str:
    if not SUMMARY:
        return ""
    w = max(len(h.what) for h in SUMMARY)
    t = max(len(h.tool) for h in SUMMARY)
    lines = [f"{'':<{w}}  {'unit':<4} {'labkit min':>10} {'median':>9}  {'against':<{t}} {'min':>9} {'median':>9}"
             f" {'ratio of medians':>16} {'of mins':>8} {'runs':>4}"]
    lines += [f"{h.what:<{w}}  {h.unit:<4} {h.labkit.min:>10.3g} {h.labkit.median:>9.3g}  {h.tool:<{t}} "
              f"{h.theirs.min:>9.3g} {h.theirs.median:>9.3g} {h.ratio:>15.2f}x {h.ratio_min:>7.2f}x "
              f"{min(len(h.labkit.runs), len(h.theirs.runs)):>4}"
              for h in SUMMARY]
    return "\n".join(lines)


@contextmanager
def lab_home():
    """A throwaway lab root for one benchmark (unless LABKIT_HOME is set), reset afterwards."""
    own = "LABKIT_HOME" not in os.environ
    if own:
        os.environ["LABKIT_HOME"] = tempfile.mkdtemp(prefix="labkit-bench-")
    try:
        yield
    finally:
        from labkit import lab
        lab.reset()
        if own:
            shutil.rmtree(os.environ.pop("LABKIT_HOME"), ignore_errors=True)


def with_lab(fn):
    """Run a benchmark's main() inside lab_home()."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with lab_home():
            return fn(*args, **kwargs)
    return run
