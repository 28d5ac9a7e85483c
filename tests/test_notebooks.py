"""The stored notebooks match their sources in notebooks/src and have outputs for nbval."""
from pathlib import Path

import jupytext
import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "notebooks" / "src").glob("*.py"))


def test_every_source_has_a_notebook():
    assert SOURCES
    assert [s.stem for s in SOURCES] == [n.stem for n in sorted((REPO / "notebooks").glob("*.ipynb"))]


@pytest.mark.parametrize("src", SOURCES, ids=[s.stem for s in SOURCES])
def test_notebook_is_built_from_its_source(src):
    want = [(c.cell_type, c.source, sorted(c.metadata.get("tags", []))) for c in jupytext.read(src).cells]
    nb = nbformat.read(REPO / "notebooks" / f"{src.stem}.ipynb", as_version=4)
    have = [(c.cell_type, c.source, sorted(c.metadata.get("tags", []))) for c in nb.cells]
    assert have == want, f"run `make notebooks` after editing {src.name}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell has stored outputs"


@pytest.mark.parametrize("src", SOURCES, ids=[s.stem for s in SOURCES])
def test_lesson_shape(src):
    """One setup cell first, clean-up last, and every exercise has a check, a hint and a solution."""
    nb = jupytext.read(src)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "lab.scratch(" in code[0]
    assert "lab.remove_tree(" in code[-1] and "lab.entries(mine=True) == []" in code[-1]   # its own, not another lesson's
    text = "\n".join(c.source for c in nb.cells)
    checks = [c for c in code if c.lstrip().startswith("ex.check_")]
    assert checks and text.count("<summary>Solution") == len(checks)
    assert "What this lesson needs" in text and "leaves behind" in text


def test_every_stored_picture_fits_a_jupyterlab_cell_without_shrinking_its_text():
    """graphviz scales a picture wider than viz.WIDTH_IN down to fit (attribute size); a long
    chain must wrap instead, or its text is too small to read (09's journey was at 47 %)."""
    import re
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb")):
        for cell in nbformat.read(nb, as_version=4).cells:
            for out in cell.get("outputs", []):
                svg = out.get("data", {}).get("image/svg+xml")
                if svg:
                    scale = re.search(r"scale\(([\d.]+)", svg)
                    assert scale is None or float(scale.group(1)) >= 0.9, f"{nb.name}: a picture drawn at {scale.group(1)}"
