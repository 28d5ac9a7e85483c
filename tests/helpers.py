"""Helpers the tests import: ``need`` for kernel features and tools, ``run_python`` for a
separate interpreter (a second "Jupyter kernel").

On CI (CI=true) a missing feature fails the test; on a learner's laptop it skips.
"""
import os
import subprocess
import sys

import pytest

ON_CI = os.environ.get("CI") == "true"


def need(ok: bool, what: str) -> None:
    """Fail on CI, skip elsewhere, when ``what`` is not available."""
    if not ok:
        if ON_CI:
            pytest.fail(f"CI must have {what}")
        pytest.skip(f"needs {what}")


def run_python(code: str, env_home, check=True, **kw) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter (a separate "Jupyter kernel") with the lab root."""
    env = dict(os.environ, LABKIT_HOME=str(env_home))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=check, timeout=60, **kw)
