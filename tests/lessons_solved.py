"""The solution bot: `make test`'s second pass over the lessons (not collected on its own; the
Makefile names it after the nbval pass).

Every lesson runs again, in reverse order, in the lab root the nbval pass just used (learners
come back to lessons), with each exercise's published solution put into the learner's cell:
the first ```python block of the collapsed "Solution" (the first markdown cell below the check)
replaces the code cell just above the check. Each lesson is first stopped midway, as learners
stop: 60 % of its code cells run in a kernel that is then killed (SIGKILL: no clean-up cell, no
atexit, no `labkit reset`), and then the whole lesson runs in a new kernel. Then

* every cell must run without error (the lessons' own asserts included), and
* every check must say "Solved": a published solution that no longer solves is a bug;
* the stored outputs, which the nbval pass compares against, show every check unsolved: the
  placeholders solve nothing (and Run All counts no try).
"""
import copy
import re
from pathlib import Path

import nbformat
import pytest

from helpers import run_lesson

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]-*.ipynb")), reverse=True)
SOLVED = "Solved. Well done."
FENCE = re.compile(r"```python\n(.*?)```", re.S)


def exercises(nb) -> list[tuple[int, int, str]]:
    """(answer cell, check cell, solution code) for every check of the notebook."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.lstrip().startswith("ex.check_"):
            answer = nb.cells[i - 1]
            solution = next(c for c in nb.cells[i + 1:] if c.cell_type == "markdown")
            assert answer.cell_type == "code", f"cell {i}: the cell above a check must be the learner's"
            assert solution.cell_type == "markdown" and "<summary>Solution" in solution.source, \
                f"cell {i}: a check must be followed by its collapsed solution"
            code = FENCE.search(solution.source)
            assert code, f"cell {i + 1}: the solution has no ```python block to run"
            found.append((i - 1, i, code.group(1)))
    return found


def _text(outputs) -> str:
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)


@pytest.mark.parametrize("stem", LESSONS)
def test_the_published_solutions_solve_every_exercise(stem):
    nb = nbformat.read(REPO / "notebooks" / f"{stem}.ipynb", as_version=4)
    found = exercises(nb)
    assert found, f"{stem} has no exercise"
    for _, check, _ in found:
        assert SOLVED not in _text(nb.cells[check].outputs), f"{stem}: the stored output of cell {check} is solved"
    for answer, _, code in found:
        nb.cells[answer].source = code
    run_lesson(copy.deepcopy(nb), upto=0.6, kill=True)    # the learner stopped midway
    run_lesson(nb)                                  # and came back; the session's lab root: nbval's
    unsolved = [f"cell {check}: {nb.cells[check].source.strip()}\n{_text(nb.cells[check].outputs)[:600]}"
                for _, check, _ in found if SOLVED not in _text(nb.cells[check].outputs)]
    assert not unsolved, f"{stem}: a published solution does not solve its exercise:\n" + "\n".join(unsolved)
