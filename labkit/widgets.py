"""ipywidgets views for the lessons. Each view is a thin shell over a plain function
(the same one the check cells and the tests call), so what a widget shows is tested.
"""
from __future__ import annotations

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


def layer_explorer(ov: Overlay) -> w.VBox:
    """Pick a path (from merged and from every layer) and see which layer serves it,
    highlighted in the stack picture."""
    paths = sorted(set(ov.serving_map()) | set(ov.hidden_paths()))
    pick = w.Dropdown(options=paths, description="path")
    line = w.HTML()
    out = w.Output()

    def update(_=None):
        line.value = f"<code>{explain_path(ov, pick.value)}</code>"
        out.clear_output(wait=True)
        with out:
            display(viz.overlay_stack(ov, highlight=pick.value))

    pick.observe(update, names="value")
    update()
    return w.VBox([pick, line, out])
