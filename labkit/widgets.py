"""ipywidgets views for the lessons. Each view is a thin shell over a plain function
(the same one the check cells and the tests call), so what a widget shows is tested.
"""
from __future__ import annotations

import os
from html import escape

import graphviz
import ipywidgets as w
from IPython.display import display

from . import viz
from .overlay import Overlay


def explain_path(ov: Overlay, path: str) -> str:
    """One line: which layer serves ``path`` in the merged tree, or why none does."""
    layer = ov.which_layer(path)
    if layer is not None:
        kind = "directory" if (layer.path / path).is_dir() else "file"
        return f"{path}: served by the {kind} in {layer.role} layer '{layer.name}' ({layer.path / path})"
    hidden = ov.hidden_paths()
    if path in hidden:
        return f"{path}: not in merged; hidden by {hidden[path]}"
    return f"{path}: in no layer"


def layer_explorer(ov: Overlay, start: str | None = None) -> w.VBox:
    """Pick a path (from merged and from every layer) and see which layer serves it,
    highlighted in the stack picture. Every answer is read from the live stack when the cell
    runs, so the explorer still answers after the lesson's clean-up cell has taken the stack
    down (Run All runs that cell before anyone touches the dropdown). ``start``: the path
    shown first."""
    paths = sorted(set(ov.serving_map()) | set(ov.hidden_paths()))
    if not paths:
        return w.VBox([w.HTML("<i>This stack is empty or no longer mounted: run the cells above again.</i>")])
    views = {p: (explain_path(ov, p), viz.overlay_stack(ov, highlight=p).source) for p in paths}
    pick = w.Dropdown(options=paths, value=start if start in views else paths[0], description="path")
    line = w.HTML()
    out = w.Output()

    @_shows_errors(out)
    def update(_=None):
        text, source = views[pick.value]
        line.value = f"<code>{escape(text)}</code>"
        out.clear_output(wait=True)
        with out:
            display(graphviz.Source(source))

    pick.observe(update, names="value")
    update()
    return w.VBox([pick, line, out])


def layer_contents(store, name: str, limit: int = 25) -> w.VBox:
    """Pick a layer of image ``name`` (by the history line that made it) and see what its tar
    holds. The tars are read when the cell runs, so this works after the clean-up too."""
    from .image import waste
    img = store.image(name)
    made = [h["created_by"][:50] for h in img.history if not h.get("empty_layer")]
    entries = [[m.name for m in layer] for layer in waste.layer_entries(store, name)]
    pick = w.Dropdown(options=[(label, i) for i, label in enumerate(made)], description="layer")
    shown = w.HTML()

    def show(_=None):
        names = entries[pick.value]
        shown.value = "<pre>" + escape("\n".join(names[:limit]) + ("\n…" if len(names) > limit else "")) + "</pre>"

    pick.observe(show, names="value")
    show()
    return w.VBox([pick, shown])


def _shows_errors(area):
    """A widget callback that fails says so in its own output area (an ``Output`` or an
    ``HTML``), not only in JupyterLab's log console where no learner looks."""
    def wrap(fn):
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:             # shown to the learner, with what to do
                message = (f"⚠ {type(e).__name__}: {e}. Run the cells above this one again "
                           "(the lesson's clean-up may have removed what this widget uses).")
                if isinstance(area, w.Output):
                    area.clear_output()
                    with area:
                        print(message)
                else:
                    area.value = f"<span style='color:#c62828'>{escape(message)}</span>"
        return run
    return wrap


# --- lesson 02: a live fault meter ---------------------------------------------------------
_RUNNING: list = []   # the meter's current run, so a new start stops the old one


def fault_meter() -> w.VBox:
    """Sliders for buffer size, pages to write and rate; Start forks a child that writes
    while a background thread moves the meter and redraws the plot (it only sets widget
    values). The measuring is cow.write_at_rate, the same function the tests call."""
    import threading
    from . import cow
    size = w.IntSlider(value=16, min=1, max=256, description="buffer MiB")
    pages = w.IntSlider(value=2048, min=1, max=4096, description="pages")
    rate = w.IntSlider(value=1000, min=100, max=20000, step=100, description="pages/s")
    start, stop = w.Button(description="Start", button_style="primary"), w.Button(description="Stop")
    meter = w.IntProgress(value=0, min=0, max=1, description="faults")
    label = w.Label("press Start")
    plot = w.Image(format="png", width=400, layout=w.Layout(display="none", width="400px"))   # at its own size

    def run():
        stop_event = threading.Event()
        _RUNNING.append(stop_event)
        n = min(pages.value, size.value * 256)
        meter.max, meter.value = n, 0
        samples = []

        def on_sample(s):
            samples.append(s)
            meter.value = min(s.faults, meter.max)
            label.value = f"{s.written} pages written, {s.faults} minor faults, Private_Dirty {s.private_kib} KiB"
            if len(samples) % 3 == 0:
                plot.value, plot.layout.display = viz.meter_png(samples), None
        try:
            with cow.Buffer(size.value * 256) as buf:
                buf.touch()
                with cow.Child(buf) as child:
                    cow.write_at_rate(child, n, rate.value, on_sample, stop_event)
            if samples:
                plot.value, plot.layout.display = viz.meter_png(samples), None
        except Exception as e:  # noqa: BLE001 - shown in the widget, never printed from a thread
            label.value = f"stopped: {e}"
        finally:
            _RUNNING.remove(stop_event)

    def on_start(_):
        for ev in list(_RUNNING):
            ev.set()
        threading.Thread(target=run, daemon=True).start()

    start.on_click(on_start)
    stop.on_click(lambda _: [ev.set() for ev in list(_RUNNING)])
    return w.VBox([w.HBox([size, pages, rate]), w.HBox([start, stop]), meter, label, plot])


# --- lesson 05: pick namespaces, see what changes ------------------------------------------
def namespace_picker() -> w.VBox:
    """Tick namespace types, press Start: a process starts in new namespaces of those types,
    and the picture shows which namespaces it shares with this notebook (ns.Process)."""
    from . import ns
    boxes = {t: w.Checkbox(value=t in ("uts", "pid"), description=t, indent=False) for t in ns.TYPES if t != "user"}
    go = w.Button(description="Start a process", button_style="primary")
    out = w.Output()
    state = {}

    def start(_):
        chosen = tuple(t for t, b in boxes.items() if b.value)
        if state.get("p"):
            state["p"].close()
        out.clear_output(wait=True)
        with out:
            p = state["p"] = ns.Process(chosen, hostname="picked" if "uts" in chosen else None)
            import socket
            print(f"new namespaces: {', '.join(chosen) or 'none'}; its hostname: {p.run(socket.gethostname)}")
            display(viz.namespace_graph({"this notebook": ns.links(), f"process {p.pid}": p.links()}))
            p.close()
            state["p"] = None

    go.on_click(start)
    return w.VBox([w.HBox(list(boxes.values())), go, out])


def course_progress() -> w.VBox:
    """One bar per lesson (exercises solved out of its total) and the course table below,
    read again from progress.json when Refresh is pressed (exercises.progress)."""
    from .exercises import progress
    bars, table = w.VBox(), w.HTML()
    refresh = w.Button(description="Refresh", icon="refresh")

    def show(_=None):
        rows = progress()
        lessons: dict[str, list] = {}
        for r in rows:
            lessons.setdefault(r.id.split(".")[0], []).append(r)
        bars.children = [w.IntProgress(value=sum(r.state == "solved" for r in rs), min=0, max=len(rs),
                                       description=f"lesson {n}", bar_style="success",
                                       layout=w.Layout(width="420px")) for n, rs in lessons.items()]
        table.value = rows._repr_html_()

    refresh.on_click(show)
    show()
    return w.VBox([refresh, bars, table])


def memory_limit_runner(image: str = "busybox", store=None, cmd: list[str] | None = None) -> w.VBox:
    """A slider for a container's memory limit and a Run button: the container runs ``cmd``
    under that limit and the widget says how it ended (container.run, cgroups)."""
    from .exercises.l09_capstone import HOG, try_limit
    cmd = cmd or HOG
    limit = w.IntSlider(value=64, min=16, max=128, step=8, description="memory MiB", continuous_update=False)
    go = w.Button(description="Run", button_style="primary")
    verdict = w.HTML()

    @_shows_errors(verdict)
    def run(_=None):
        use, s, note = image, store, ""
        if not _has_image(s, use):            # removed by the clean-up cell: any busybox shows the same limit
            from .image.base import base_image
            from .image.store import Store
            use, s, note = "busybox", Store(), f" (in busybox: {image} was removed by the clean-up)"
            base_image(s)
        r = try_limit(use, limit.value, s, cmd)
        verdict.value = (f"<b>{limit.value} MiB</b>: " + ("exit 0, dd copied its 32 MiB" if r.exit_code == 0 else
                         "OOM-killed (SIGKILL from the kernel)" if r.oom_killed else escape(r.message)) + note)

    go.on_click(run)
    limit.observe(run, "value")
    run()
    return w.VBox([w.Label(" ".join(cmd)), w.HBox([limit, go]), verdict])


def _has_image(store, name: str) -> bool:
    from .image.store import Store
    try:
        return name in (store or Store()).refs()
    except Exception:                         # the store's directory itself is gone
        return False


# --- lesson 03: one change, three forms ------------------------------------------------------
def layer_maker() -> w.VBox:
    """Operations on a small overlay (write a file, delete a path, recreate a directory), and
    after each one the upper dir, the layer tar made from it and the tar applied to the lower
    layer, side by side; whiteouts and opaque markers in red (image.roundtrip). Everything is
    made again in a scratch dir of its own on every change, so it works after the clean-up."""
    from . import lab
    from .image import roundtrip
    op = w.Dropdown(options=roundtrip.OPS, value="delete", description="operation")
    path = w.Text(value="bin/vi", description="path")
    text = w.Text(value="", description="text", placeholder="for write")
    add, clear = w.Button(description="Apply", button_style="primary"), w.Button(description="Start again")
    done, view = w.HTML(), w.HTML()
    ops: list = []

    def column(title, lines):
        body = "\n".join(f"<span style='color:#c62828'>{escape(x)}</span>" if (".wh." in x or "c---------" in x
                         or "opaque" in x) else escape(x) for x in lines)
        return f"<div style='flex:1;min-width:260px'><b>{title}</b><pre>{body}</pre></div>"

    def render(candidate):
        r = roundtrip.round_trip(candidate, lab.root() / "tmp" / f"layer-maker-{os.getpid()}")
        ops[:] = candidate                     # kept only once the kernel has done them
        done.value = "operations: " + escape("; ".join(f"{o} {p}" for o, p, _ in ops) or "none yet")
        view.value = ("<div style='display:flex;gap:12px'>" + column("upper dir", r.upper) +
                      column("layer tar", r.tar) +
                      column("applied to the lower layer", [f"{k}  {v!r}" if v else k for k, v in sorted(r.applied.items())])
                      + "</div>")

    @_shows_errors(view)
    def apply(_):
        render(ops + [(op.value, path.value, text.value)])

    @_shows_errors(view)
    def again(_=None):
        render([])

    add.on_click(apply)
    clear.on_click(again)
    again()
    return w.VBox([w.HBox([op, path, text]), w.HBox([add, clear]), done, view])


# --- lesson 04: a driver, n containers -------------------------------------------------------
def driver_costs(store, image: str) -> w.VBox:
    """Pick a driver and a number of containers, press Measure: the driver creates them and
    the plot shows time and disk (drivers.measure). After the clean-up removed ``image``, it
    measures busybox instead and says so."""
    from . import drivers
    driver = w.Dropdown(options=list(drivers.DRIVERS), value="overlay", description="driver")
    n = w.IntSlider(value=4, min=1, max=8, description="containers", continuous_update=False)
    go = w.Button(description="Measure", button_style="primary")
    out = w.Output()

    @_shows_errors(out)
    def measure(_=None):
        use, s, note = image, store, ""
        if not _has_image(s, use):
            from .image.base import base_image
            from .image.store import Store
            use, s, note = "busybox", Store(), f" (busybox: {image} was removed by the clean-up)"
            base_image(s)
        costs = drivers.measure(driver.value, use, n.value, store=s)
        out.clear_output(wait=True)
        with out:
            last = costs[-1]
            print(f"{driver.value}: {last.containers} containers in {last.seconds * 1e3:.0f} ms, "
                  f"{last.disk_bytes / 2**20:.1f} MiB of disk{note}")
            fig = viz.drivers_plot({driver.value: costs})
            display(fig)
            import matplotlib.pyplot as plt
            plt.close(fig)

    go.on_click(measure)
    return w.VBox([w.HBox([driver, n, go]), out])


# --- lesson 08: latency, parallelism and the pull's timeline -------------------------------------
def pull_timeline(store, image: str | None = None) -> w.VBox:
    """Sliders for the link's delay and the client's parallel downloads, and Pull: a serial
    and a parallel pull of ``image`` over a slow link between two network namespaces, drawn as
    a Gantt chart (link.timeline). Without ``image`` (or once the clean-up removed it) it uses
    an image of eight 1 MiB layers made in a scratch dir of its own."""
    from . import lab
    from .registry import link
    delay = w.IntSlider(value=50, min=0, max=200, step=10, description="delay ms", continuous_update=False)
    par = w.IntSlider(value=4, min=2, max=8, description="parallel", continuous_update=False)
    go = w.Button(description="Pull", button_style="primary")
    out = w.Output()

    @_shows_errors(out)
    def pull(_=None):
        name, made = image, []
        if not name or not _has_image(store, name):
            name, made = _eight_layers(store)
        try:
            root = lab.fresh_dir(lab.root() / "tmp" / f"timeline-{os.getpid()}")
            t = link.timeline(root, store, name, layers_parallel=(1, par.value), delay=delay.value / 1000, rate=None)
        finally:
            for m in reversed(made):
                store.remove(m)
            lab.remove_tree(lab.root() / "tmp" / f"timeline-{os.getpid()}")
        out.clear_output(wait=True)
        with out:
            print(f"delay {delay.value} ms: serial {t.span(1):.2f} s, {par.value} at a time {t.span(par.value):.2f} s")
            fig = viz.pull_gantt(t.pulls)
            display(fig)
            import matplotlib.pyplot as plt
            plt.close(fig)

    go.on_click(pull)
    return w.VBox([w.HBox([delay, par, go]), out])


def _eight_layers(store) -> tuple[str, list[str]]:
    """An image of eight 1 MiB layers (named widget08/PID/eightN: two kernels may pull at once);
    returns its name and every name made."""
    from . import lab
    from .image import mutate
    from .image.base import base_image
    from .tree import write_tree
    base_image(store)
    prev, made = "busybox", []
    work = lab.fresh_dir(lab.root() / "tmp" / f"timeline-layers-{os.getpid()}")
    try:
        for i in range(8):
            d = write_tree(work / f"m{i}", {f"part{i}/data": 1 << 20})
            prev = mutate.add_layer(prev, d, f"widget08/{os.getpid()}/eight{i}", f"COPY part {i}", store=store).name
            made.append(prev)
    finally:
        lab.remove_tree(work)
    return prev, made


# --- lesson 05: defences against attacks from inside -------------------------------------------
def defences(store=None, image: str = "busybox") -> w.VBox:
    """Tick the defences, press Run: the attacks of confine.attacks() run in containers with only
    those, against a disposable disk made for this run, and the table says which got through."""
    from . import confine, lab
    boxes = {"caps": w.Checkbox(value=True, description="docker's 14 capabilities", indent=False),
             "seccomp": w.Checkbox(value=True, description="no_new_privs + seccomp", indent=False),
             "masked": w.Checkbox(value=True, description="read-only /proc/sys, masked paths", indent=False),
             "devices": w.Checkbox(value=True, description="devices cgroup", indent=False),
             "userns": w.Checkbox(value=False, description="user namespace (--userns auto)", indent=False)}
    go = w.Button(description="Run the attacks", button_style="primary")
    table = w.HTML()

    @_shows_errors(table)
    def run(_=None):
        b = {k: v.value for k, v in boxes.items()}
        conf = confine.Confinement(caps=sorted(confine.DOCKER_CAPS) if b["caps"] else list(confine.CAPS),
                                   seccomp=b["seccomp"], no_new_privs=b["seccomp"], masked_paths=b["masked"],
                                   devices=b["devices"], userns=b["userns"])
        with confine.DisposableDisk(lab.root() / "tmp" / f"disposable-disk-{os.getpid()}.img") as disk:
            rung = confine.try_attacks(image, conf, disk, store=store)
        cells = "".join(f"<td style='color:{'#c62828' if rung.escaped[a] else '#2e7d32'}'>"
                        f"{a}: {'ESCAPED' if rung.escaped[a] else 'refused'}</td>" for a in rung.escaped)
        table.value = (f"<table><tr>{cells}</tr></table><code>CapEff {rung.status.get('CapEff')} · Seccomp "
                       f"{rung.status.get('Seccomp')} · NoNewPrivs {rung.status.get('NoNewPrivs')}</code>")

    go.on_click(run)
    return w.VBox([w.HBox(list(boxes.values())), go, table])
