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


def run_lesson(nb, home=None, upto: float = 1.0, kill: bool = False) -> int:
    """Run the first ``upto`` of notebook ``nb``'s code cells (nbformat, changed in place) in a new
    Jupyter kernel, as a learner would, with lab root ``home`` (default: the session's). ``kill``:
    SIGKILL the kernel afterwards (the learner closed the tab: no clean-up cell, no atexit).
    Returns the number of code cells run; a failing cell raises nbclient's CellExecutionError,
    unless it is tagged raises-exception."""
    import signal
    from pathlib import Path
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    last = code[max(0, int(len(code) * upto) - 1)]
    env = {**os.environ, **({"LABKIT_HOME": str(home)} if home else {})}
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(__file__).resolve().parents[1] / "notebooks")}})
    ran = 0
    with client.setup_kernel(env=env):
        for index, cell in enumerate(nb.cells[:last + 1]):
            tags = cell.get("metadata", {}).get("tags", [])
            if cell.cell_type != "code" or "skip-execution" in tags:
                continue
            try:
                client.execute_cell(cell, index)
            except CellExecutionError:
                if "raises-exception" not in tags:
                    raise
            ran += 1
        if kill:
            os.kill(client.km.provisioner.process.pid, signal.SIGKILL)
            client.km.provisioner.process.wait(timeout=60)
    return ran


def wait_until(pred, seconds: float = 15) -> bool:
    """Poll ``pred`` every 50 ms until it is true (True) or ``seconds`` pass (False)."""
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False
