"""`make bench`: labkit measured against the real tools, in the same run, as ratios.

Each benchmark prints its own detailed table and adds its headline numbers to SUMMARY with
headline(); `python -m bench` prints them all as one table for the whole lab at the end.
"""
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Headline:
    what: str          # "overlay mount, 100 layers"
    unit: str          # "ms", "s", "MiB"
    labkit: float
    tool: str          # the real tool it was measured against, in the same run
    theirs: float

    @property
    def ratio(self) -> float:
        """labkit / tool: below 1 means labkit took less (time, memory)."""
        return self.labkit / self.theirs if self.theirs else float("nan")


SUMMARY: list[Headline] = []


def headline(what: str, unit: str, labkit: float, tool: str, theirs: float) -> None:
    SUMMARY.append(Headline(what, unit, labkit, tool, theirs))


def summary_table() -> str:
    w = max(len(h.what) for h in SUMMARY)
    t = max(len(h.tool) for h in SUMMARY)
    lines = [f"{'':<{w}}  {'unit':<4} {'labkit':>9}  {'against':<{t}} {'theirs':>9} {'labkit/theirs':>14}"]
    lines += [f"{h.what:<{w}}  {h.unit:<4} {h.labkit:>9.3g}  {h.tool:<{t}} {h.theirs:>9.3g} {h.ratio:>13.2f}x"
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
