"""Every lesson in a real browser: JupyterLab on 127.0.0.1, Debian's chromium driven by
playwright. Each notebook is opened, run with "Run All Cells", and checked: no cell ended in
an error, graphviz SVGs and plots are on the page, and where the lesson has widgets they
render and react (a slider moved, a dropdown changed, a button pressed: the output changes).
Screenshots are kept in test-artifacts/browser/ (full page, after the run and after each
interaction).
"""
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import need
from labkit.registry import reference

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
# Debian's chromium; LABKIT_BROWSER names another Chrome or Chromium (GitHub's Ubuntu runners,
# whose chromium is a snap, have /usr/bin/google-chrome: .github/workflows/lessons.yml)
CHROMIUM = os.environ.get("LABKIT_BROWSER") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
LESSONS = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]-*.ipynb"))
# lesson -> (SVG pictures expected, PNG plots expected)
PICTURES = {"00": (0, 0), "01": (1, 1), "02": (1, 1), "03": (1, 0), "04": (0, 1), "05": (1, 1),
            "06": (1, 0), "07": (1, 1), "08": (1, 1), "09": (1, 0)}


@pytest.fixture(scope="module")
def jupyterlab():
    """JupyterLab on a free loopback port, serving copies of the lessons, with its own lab root."""
    need(os.geteuid() == 0, "root")
    need(Path(CHROMIUM).exists(), f"a browser at {CHROMIUM} (provision.sh installs Debian's chromium; "
                                  "LABKIT_BROWSER names another)")
    home = Path(tempfile.mkdtemp(prefix="labkit-browser-"))
    work = home / "work"
    work.mkdir()
    for nb in LESSONS:
        shutil.copy(REPO / "notebooks" / nb, work / nb)
    import nbformat
    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in ("x = 1", "1 / 0", "print(x)")])
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(broken, work / "zz-fails.ipynb")
    port = reference.free_port()
    token = secrets.token_hex(16)
    env = {**os.environ, "LABKIT_HOME": str(home / "lab"), "LABKIT_WORKDIR": str(work),
           "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_DATA_DIR": str(home / "jupyter-data")}
    # every cell in the page (JupyterLab 4 leaves cells out of view out of the DOM by default), no news prompt
    settings = home / "lab-settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none"}')
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false"}')
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    _add_nobody_kernel(home, work)
    bindir = Path(sys.executable).parent
    # no `jupyter trust`, as `make lab` does not run it: the copies have no outputs to distrust
    log = open(home / "jupyterlab.log", "wb")
    server = subprocess.Popen(
        [bindir / "jupyter", "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--ServerApp.root_dir={work}", f"--IdentityProvider.token={token}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        pytest.fail("JupyterLab did not start: " + (home / "jupyterlab.log").read_text()[-2000:])
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    try:
        yield browser, url, token
    finally:
        browser.close()
        pw.stop()
        os.killpg(server.pid, signal.SIGTERM)       # the server and the kernels it started
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        subprocess.run([bindir / "labkit", "reset"], env=env, capture_output=True)
        shutil.copy(home / "jupyterlab.log", _artifacts() / "jupyterlab.log")
        shutil.rmtree(home, ignore_errors=True)


# --- one lesson as a learner who is not root ----------------------------------------------------
NOBODY = 65534
# The kernel loads what the lessons import while still root (a clone under /root is not readable by
# nobody), reads its connection file and binds its sockets, then becomes nobody for good.
NOBODY_KERNEL = """
import ctypes, os, pkgutil, sys, importlib
import ipykernel.kernelapp, matplotlib, matplotlib.pyplot, matplotlib_inline.backend_inline, graphviz, ipywidgets
import labkit
for m in pkgutil.walk_packages(labkit.__path__, "labkit."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
from labkit.exercises import progress
progress()
app = ipykernel.kernelapp.IPKernelApp.instance()
app.initialize(sys.argv[1:])
for top, dirs, files in os.walk(os.environ["HOME"]):
    for n in [top, *(os.path.join(top, f) for f in dirs + files)]:
        os.lchown(n, %d, %d)
os.setgroups([]); os.setgid(%d); os.setuid(%d)
ctypes.CDLL(None).prctl(4, 1)          # PR_SET_DUMPABLE: /proc/self is the learner's, as after a login
app.start()
""" % ((NOBODY,) * 4)


def _add_nobody_kernel(home: Path, work: Path) -> None:
    """A kernel spec "labkit-nobody" and a copy of the first lesson preflight says runs without
    root, set to use it (its last cell prints the kernel's euid)."""
    import json
    import nbformat
    from labkit import preflight
    os.chmod(home, 0o711)                           # nobody reaches its own home and lab root below
    nobody_home = home / "nobody"
    nobody_home.mkdir()
    os.chown(nobody_home, NOBODY, NOBODY)
    spec = home / "jupyter-data" / "kernels" / "labkit-nobody"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", NOBODY_KERNEL, "-f", "{connection_file}"],
        "display_name": "Python 3 (as nobody)", "language": "python",
        "env": {"HOME": str(nobody_home), "IPYTHONDIR": str(nobody_home / ".ipython"),
                "MPLCONFIGDIR": str(nobody_home / ".matplotlib"), "LABKIT_HOME": str(nobody_home / "lab")}}))
    lesson = next(n for n in LESSONS if n[:2] in preflight.unprivileged_lessons() and n[:2] != "00")
    nb = nbformat.read(REPO / "notebooks" / lesson, as_version=4)
    nb.metadata["kernelspec"] = {"name": "labkit-nobody", "display_name": "Python 3 (as nobody)", "language": "python"}
    nb.cells.append(nbformat.v4.new_code_cell('import os; print("kernel euid", os.geteuid())'))
    nbformat.write(nb, work / f"nobody-{lesson}")


def _artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# A failed cell, read from the notebook's model: JupyterLab 4 renders an error as
# application/vnd.jupyter.stderr, so the DOM's mime types cannot tell it from a warning.
FAILED_CELLS = """() => window.jupyterapp.shell.currentWidget.content.widgets
    .filter(c => c.model.type === 'code' && c.model.outputs.toJSON().some(o => o.output_type === 'error'))
    .map(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
               .map(o => o.ename + ': ' + o.evalue).join(' ') + '\\n' + c.model.sharedModel.getSource().slice(0, 300))"""


def _cells_done(page, upto: int, timeout: float = 600) -> None:
    """Wait until the kernel is idle and code cells 0..upto have run, or a cell has failed
    (Run All stops there: waiting for the rest would only time out)."""
    page.wait_for_function(f"""() => {{
        const nb = window.jupyterapp.shell.currentWidget;
        const k = nb.sessionContext.session.kernel;
        const failed = ({FAILED_CELLS})().length > 0;
        return k.status === 'idle' && (failed || nb.content.widgets.slice(0, {upto + 1}).every(c =>
            c.model.type !== 'code' || (c.model.executionCount !== null && !c.promptNode.textContent.includes('*'))));
    }}""", timeout=timeout * 1000, polling=500)
    failed = page.evaluate(FAILED_CELLS)
    assert not failed, "a cell failed: " + "\n---\n".join(failed)[:3000]


def _kernel_ready(page) -> None:
    page.wait_for_function("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " const k = w && w.sessionContext && w.sessionContext.session"
                           " && w.sessionContext.session.kernel; return k && k.status === 'idle'; }",
                           timeout=120_000)


def _run(page, nb: str, marker: str | None, interact) -> None:
    """Run All Cells, as learners do first; then, for a lesson with a widget, scroll to the
    widget's cell (the one containing ``marker``) and move it: the clean-up cells at the end
    have already run, and the widget must still react."""
    _kernel_ready(page)
    cmd = "(name) => window.jupyterapp.commands.execute(name)"
    count = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets.length")
    page.evaluate(cmd, "notebook:run-all-cells")
    _cells_done(page, count - 1)
    if marker is None:
        return
    index = page.evaluate("""(marker) => window.jupyterapp.shell.currentWidget.content.widgets
        .findIndex(c => c.model.sharedModel.getSource().includes(marker))""", marker)
    assert index >= 0, f"{nb}: no cell contains {marker!r}"
    page.evaluate(f"() => window.jupyterapp.shell.currentWidget.content.widgets[{index}].node.scrollIntoView()")
    _shot(page, nb.removesuffix(".ipynb") + "-widget-before")
    interact(page)
    _shot(page, nb.removesuffix(".ipynb") + "-widget-after")
    failed = page.evaluate(FAILED_CELLS)
    assert not failed, f"{nb}: a cell failed: " + "\n---\n".join(failed)[:3000]


def _open(browser, url: str, token: str, nb: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/tree/{nb}?token={token}&reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    return page


def _shot(page, name: str) -> None:
    page.screenshot(path=str(_artifacts() / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("nb", LESSONS)
def test_lesson_runs_in_a_real_browser(jupyterlab, nb):
    browser, url, token = jupyterlab
    page = _open(browser, url, token, nb)
    try:
        marker, interact = INTERACT.get(nb[:2], (None, None))
        _run(page, nb, marker, interact)
        _shot(page, nb.removesuffix(".ipynb"))
        failed = page.evaluate(FAILED_CELLS)
        assert not failed, f"{nb}: a cell failed: " + "\n---\n".join(failed)[:3000]
        svgs, plots = PICTURES[nb[:2]]
        # JupyterLab shows SVG output as an <img> of the SVG; count the ones the browser decoded
        drawn = page.evaluate("""(sel) => [...document.querySelectorAll(sel)]
            .filter(i => i.complete && i.naturalWidth > 0).length""", ".jp-RenderedSVG img, .jp-RenderedSVG svg")
        plotted = page.evaluate("""(sel) => [...document.querySelectorAll(sel)]
            .filter(i => i.complete && i.naturalWidth > 0).length""", ".jp-RenderedImage img")
        assert drawn >= svgs, f"{nb}: {drawn} graphviz pictures rendered, expected {svgs}"
        assert plotted >= plots, f"{nb}: {plotted} plots rendered, expected {plots}"
    finally:
        page.close()
        _shut_down_kernels(url, token)


def _shut_down_kernels(url: str, token: str) -> None:
    """DELETE every session through the server's REST API: its kernel exits, with the
    namespaces, mounts and children it made (they are its own or in the lab's ledger)."""
    import json
    sessions = json.load(urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=10))
    for sess in sessions:
        req = urllib.request.Request(f"{url}/api/sessions/{sess['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(req, timeout=60)


# --- the widgets, moved the way a learner would --------------------------------------------------
def _changes(page, locator, act, timeout=60_000):
    """Do ``act`` and wait until the element's text is no longer what it was; returns the element."""
    el = locator.element_handle()
    before = el.inner_text()
    act()
    page.wait_for_function("([el, before]) => el.innerText !== before", arg=[el, before], timeout=timeout)
    return el


def _dropdown(page):
    select = page.locator(".widget-dropdown select").first
    line = page.locator(".widget-dropdown").first.locator("xpath=following-sibling::*[1]")
    options = select.locator("option").all_inner_texts()
    _changes(page, line, lambda: select.select_option(index=len(options) - 1))


def _fault_meter(page):
    label = page.locator(".widget-label", has_text="press Start").first
    for name in ("pages", "pages/s"):          # every page of the buffer, at the highest rate
        handle = page.locator(".widget-slider").filter(has=page.get_by_text(name, exact=True)).locator(".noUi-handle")
        handle.focus()
        handle.press("End")
    el = _changes(page, label, lambda: page.get_by_role("button", name="Start", exact=True).click())
    page.wait_for_function("el => /4096 pages written/.test(el.innerText)", arg=el, timeout=60_000)
    box = el.evaluate_handle("el => el.closest('.widget-vbox')")
    page.wait_for_function("box => [...box.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0)",
                           arg=box, timeout=60_000)            # the meter's plot arrived


def _namespace_picker(page):
    out = page.get_by_role("button", name="Start a process").locator(
        "xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
    el = _changes(page, out, lambda: page.get_by_role("button", name="Start a process").click())
    page.wait_for_function("el => /new namespaces/.test(el.innerText)", arg=el, timeout=60_000)


def _memory_slider(page):
    box = page.locator(".widget-slider", has_text="memory MiB").first
    verdict = box.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]").locator(".widget-html").first
    assert "exit 0" in verdict.inner_text()
    handle = box.locator(".noUi-handle")
    handle.focus()
    el = _changes(page, verdict, lambda: handle.press("Home"))          # 16 MiB
    assert "OOM-killed" in el.inner_text() and "16 MiB" in el.inner_text()


def _button_then(label: str, expect: str):
    """Press the button ``label`` and wait until its widget shows ``expect``."""
    def move(page):
        button = page.get_by_role("button", name=label, exact=True).first
        box = button.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
        el = _changes(page, box, lambda: button.click())
        page.wait_for_function("([el, want]) => el.innerText.includes(want)", arg=[el, expect], timeout=120_000)
    return move


# lesson -> (a text in the widget's cell, how to move it)
INTERACT = {"01": ("widgets.layer_explorer(ov)", _dropdown), "02": ("widgets.fault_meter()", _fault_meter),
            "03": ("widgets.layer_maker()", _button_then("Apply", ".wh.vi")),
            "04": ("widgets.driver_costs(", _button_then("Measure", "containers in")),
            "05": ("widgets.namespace_picker()", _namespace_picker), "06": ("widgets.layer_explorer(view", _dropdown),
            "07": ("widgets.layer_contents(", _dropdown), "08": ("widgets.pull_timeline(", _button_then("Pull", "at a time")),
            "09": ("widgets.memory_limit_runner", _memory_slider)}


def test_a_lesson_runs_in_the_browser_for_a_learner_who_is_not_root(jupyterlab):
    """The lesson preflight names first as unprivileged runs All in a kernel whose euid is nobody,
    and its widget still reacts afterwards."""
    browser, url, token = jupyterlab
    import json
    listing = json.load(urllib.request.urlopen(f"{url}/api/contents?token={token}", timeout=10))
    nb = next(f["name"] for f in listing["content"] if f["name"].startswith("nobody-"))
    page = _open(browser, url, token, nb)
    try:
        marker, interact = INTERACT.get(nb.removeprefix("nobody-")[:2], (None, None))
        _run(page, nb, marker, interact)
        _shot(page, nb.removesuffix(".ipynb"))
        last = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets.at(-1).model.outputs.toJSON()")
        assert any(f"kernel euid {NOBODY}" in str(o.get("text", "")) for o in last), last
    finally:
        page.close()
        _shut_down_kernels(url, token)


def test_jupyterlab_saves_widget_state(jupyterlab):
    """provision.sh's settings override reaches the running JupyterLab: saveState is on."""
    import json
    _, url, token = jupyterlab
    plugin = json.load(urllib.request.urlopen(
        f"{url}/lab/api/settings/@jupyter-widgets/jupyterlab-manager:plugin?token={token}", timeout=10))
    assert plugin["schema"]["properties"]["saveState"]["default"] is True


def test_a_failing_cell_is_reported_at_once_not_as_a_timeout(jupyterlab):
    """JupyterLab 4 renders an error as stderr; the check reads the notebook model instead, and
    stops waiting when Run All stops at the failed cell."""
    browser, url, token = jupyterlab
    page = _open(browser, url, token, "zz-fails.ipynb")
    try:
        with pytest.raises(AssertionError, match="ZeroDivisionError: division by zero"):
            _run(page, "zz-fails.ipynb", None, None)
    finally:
        page.close()
        _shut_down_kernels(url, token)
