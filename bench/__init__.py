"""`make bench`: labkit measured against the real tools, in the same run, as ratios."""
import os
import shutil
import tempfile
from contextlib import contextmanager


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
