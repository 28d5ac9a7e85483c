"""The lesson widgets without a browser: each is built, moved once the way a learner would,
and must show what the plain function underneath computed (test_browser.py moves them in
JupyterLab after Run All)."""
import pytest

from labkit import widgets


def _find(box, kind):
    """Every child widget of type ``kind`` below ``box``, in order."""
    out = []
    for c in getattr(box, "children", ()):
        if isinstance(c, kind):
            out.append(c)
        out += _find(c, kind)
    return out


def test_layer_maker_shows_upper_dir_tar_and_applied_tree(lab_root):
    import ipywidgets as w
    from labkit.image import roundtrip
    box = widgets.layer_maker()
    op, = _find(box, w.Dropdown)
    path, text = _find(box, w.Text)
    apply_, again = _find(box, w.Button)
    done, view = _find(box, w.HTML)
    assert "none yet" in done.value
    apply_.click()                                     # delete bin/vi: the default
    assert "bin/.wh.vi" in view.value and "c---------" in view.value
    op.value, path.value = "recreate dir", "app/data"
    apply_.click()
    assert "app/data/.wh..wh..opq" in view.value and "opaque" in view.value
    path.value = "../../etc/passwd"
    apply_.click()                                     # refused, in the widget, and not kept
    assert "not a path inside the layer" in view.value and done.value.count(";") == 1
    again.click()
    assert "none yet" in done.value
    r = roundtrip.round_trip([("write", "app/new.txt", "hi")], lab_root / "rt")
    assert r.tar == ["app", "app/new.txt"] and r.applied["app/new.txt"] == "hi"


def test_driver_costs_measures_the_picked_driver(busybox, capsys):
    import ipywidgets as w
    box = widgets.driver_costs(busybox, "gone-by-now")        # removed: busybox is measured
    driver, = _find(box, w.Dropdown)
    n, = _find(box, w.IntSlider)
    go, = _find(box, w.Button)
    driver.value, n.value = "overlay", 2
    go.click()
    text = capsys.readouterr().out          # an Output widget outside a kernel lets prints through
    assert "overlay: 2 containers" in text and "busybox: gone-by-now was removed" in text


def test_pull_timeline_draws_a_serial_and_a_parallel_pull(busybox, capsys):
    import ipywidgets as w
    box = widgets.pull_timeline(busybox)
    delay, par = _find(box, w.IntSlider)
    go, = _find(box, w.Button)
    delay.value, par.value = 0, 2
    go.click()
    text = capsys.readouterr().out
    assert "serial" in text and "2 at a time" in text
    assert not [n for n in busybox.refs() if n.startswith("widget08/")]


def test_defences_reruns_the_attacks_with_the_ticked_defences(busybox):
    import ipywidgets as w
    box = widgets.defences(busybox)
    checks = _find(box, w.Checkbox)
    go, = _find(box, w.Button)
    table, = _find(box, w.HTML)
    go.click()
    assert table.value.count("refused") == 4 and "Seccomp 2" in table.value
    next(c for c in checks if "devices" in c.description).value = False
    go.click()
    assert "raw disk: ESCAPED" in table.value
    for c in checks:                          # every defence off but the user namespace
        c.value = "user namespace" in c.description
    go.click()
    assert "raw disk: refused" in table.value and "cgroupfs: refused" in table.value and "Seccomp 0" in table.value
