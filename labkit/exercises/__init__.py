"""Exercises: checks that say what is right and what is wrong, hints one at a time,
the learner's progress through the course, and resetting a notebook to its original.

Each lesson's exercises live in a module of this package (``l00_welcome``,
``l01_overlayfs`` ...). A check is a function decorated with :func:`exercise`; it
returns a list of ``(ok, message)`` claims about the learner's work, and the
decorator turns them into a :class:`Verdict`, records the attempt and offers a hint.

    from labkit.exercises import l01_overlayfs as ex
    ex.check_layer_order([...])        # ✅ / ❌ lines, and how to get a hint
    hint("01.order")                   # the next hint, one at a time
    progress()                         # every exercise of the course and its state
"""
from __future__ import annotations

import fcntl
import functools
import importlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Callable

from .. import lab
from ..errors import LabError

LESSON_MODULES = ("l00_welcome", "l01_overlayfs", "l02_cow", "l03_layers", "l04_drivers",
                  "l05_process", "l06_rootfs", "l07_build", "l08_registry", "l09_capstone")   # later lessons add theirs here


@dataclass
class Exercise:
    id: str            # "01.order": lesson number, dot, short name
    title: str
    hints: list[str]
    check: Callable = field(repr=False, default=None)

    @property
    def lesson(self) -> str:
        return self.id.split(".")[0]


CATALOGUE: dict[str, Exercise] = {}


@dataclass
class Verdict:
    """The answer of a check: each claim that holds, each that does not, what next."""
    exercise: Exercise
    claims: list[tuple[bool, str]]   # in the order the check made them
    hints_left: int

    @property
    def right(self) -> list[str]:
        return [m for ok, m in self.claims if ok]

    @property
    def wrong(self) -> list[str]:
        return [m for ok, m in self.claims if not ok]

    @property
    def ok(self) -> bool:
        return bool(self.claims) and not self.wrong

    placeholder: bool = False       # the answer was still the empty placeholder: not a try

    def _next(self) -> str:
        if self.ok:
            return "Solved. Well done."
        if self.placeholder:
            return ("Fill in your answer in the cell above and run this check again "
                    "(an empty answer is not counted as a try).")
        if self.hints_left:
            return f'Stuck? hint("{self.exercise.id}") gives the next hint ({self.hints_left} left).'
        return "No hints left: the collapsed solution below the exercise shows one way."

    def __str__(self) -> str:
        head = f"{self.exercise.id} {self.exercise.title}"
        lines = [f"  {'✅' if ok else '❌'} {m}" for ok, m in self.claims]
        return "\n".join([head, *lines, self._next()])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{'✅' if ok else '❌'} {escape(m)}</li>" for ok, m in self.claims)
        colour = "#2e7d32" if self.ok else "#c62828"
        return (f"<div style='border-left:4px solid {colour};padding-left:8px'>"
                f"<b>{escape(self.exercise.id)} {escape(self.exercise.title)}</b>"
                f"<ul style='list-style:none;padding-left:0'>{items}</ul><i>{escape(self._next())}</i></div>")


def exercise(id: str, title: str, hints: list[str]):
    """Register a check function as exercise ``id``; the wrapper returns a Verdict."""
    def wrap(fn):
        ex = Exercise(id, title, list(hints))

        @functools.wraps(fn)
        def check(*args, **kwargs) -> Verdict:
            try:
                claims = list(fn(*args, **kwargs))
            except LabError as e:
                claims = [(False, str(e))]
            except Exception as e:  # the learner's answer broke the check: say how
                claims = [(False, f"checking your answer raised {type(e).__name__}: {e}")]
            claims = claims or [(False, "nothing to check yet")]
            solved = all(ok for ok, _ in claims)
            empty = not solved and any(_is_placeholder(a) for a in [*args, *kwargs.values()])
            state = _load().get(ex.id, {}) if empty else _record(ex.id, solved, _fingerprint(args, kwargs))
            return Verdict(ex, claims, len(ex.hints) - state.get("hints", 0), placeholder=empty)

        ex.check = check
        CATALOGUE[id] = ex
        return check
    return wrap


# --- hints and progress -------------------------------------------------------------------
def hint(id: str) -> str:
    """The hints of exercise ``id`` so far, one more than before if the learner has tried an
    answer since the last one (so running a notebook again does not spend hints) and has not
    solved it yet."""
    ex = _get(id)
    state = _load().get(id, {})
    shown, tries = state.get("hints", 0), state.get("attempts", 0)
    note = ""
    if state.get("solved"):
        note = "Solved already: no more hints are spent on it."
    elif shown >= len(ex.hints):
        note = f"No more hints: all {len(ex.hints)} are above. The collapsed solution below the exercise shows one way."
    elif shown == 0 or tries > state.get("hint_after", 0):
        shown += 1
        _update(id, hints=shown, hint_after=tries)
    else:
        note = "Try an answer with the hints above first: the next hint comes after your next check."
    lines = [f"Hint {i + 1} of {len(ex.hints)}: {h}" for i, h in enumerate(ex.hints[:shown])]
    return HintText("\n".join(lines + ([note] if note else [])))


class HintText(str):
    def __repr__(self) -> str:   # show as text in Jupyter, not as a quoted string
        return str(self)


@dataclass
class Row:
    id: str
    title: str
    state: str         # "not started", "tried", "solved"
    attempts: int
    hints: int


class Progress(list):
    """The course table: one Row per exercise."""

    def __str__(self) -> str:
        w = max(len(r.title) for r in self)
        lines = [f"{'exercise':<12} {'title':<{w}}  {'state':<11} tries hints"]
        lines += [f"{r.id:<12} {r.title:<{w}}  {r.state:<11} {r.attempts:>5} {r.hints:>5}" for r in self]
        solved = sum(r.state == "solved" for r in self)
        return "\n".join(lines + [f"{solved} of {len(self)} solved"])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        mark = {"solved": "✅", "tried": "🟡", "not started": "⬜"}
        rows = "".join(f"<tr><td>{mark[r.state]}</td><td>{r.id}</td><td>{escape(r.title)}</td>"
                       f"<td>{r.attempts}</td><td>{r.hints}</td></tr>" for r in self)
        solved = sum(r.state == "solved" for r in self)
        return (f"<table><tr><th></th><th>exercise</th><th>title</th><th>tries</th><th>hints</th></tr>"
                f"{rows}</table><p>{solved} of {len(self)} solved</p>")


def progress() -> Progress:
    """Every exercise of the course, in lesson order, with the learner's state."""
    _load_catalogue()
    saved = _load()
    rows = Progress()
    order = list(CATALOGUE)   # lesson by lesson, in the order the lessons define them
    for id in sorted(CATALOGUE, key=lambda i: (CATALOGUE[i].lesson, order.index(i))):
        s = saved.get(id, {})
        state = "solved" if s.get("solved") else ("tried" if s.get("attempts") else "not started")
        rows.append(Row(id, CATALOGUE[id].title, state, s.get("attempts", 0), s.get("hints", 0)))
    return rows


def forget_progress(id: str | None = None) -> None:
    """Forget the progress of one exercise, or of all of them."""
    data = {} if id is None else {k: v for k, v in _load().items() if k != id}
    _save(data)


def _get(id: str) -> Exercise:
    _load_catalogue()
    if id not in CATALOGUE:
        raise LabError(f"there is no exercise {id!r}", f"pick one of {', '.join(sorted(CATALOGUE))}")
    return CATALOGUE[id]


def _load_catalogue() -> None:
    for name in LESSON_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def _progress_file() -> Path:
    return lab.root() / "progress.json"


def _load() -> dict:
    try:
        return json.loads(_progress_file().read_text())
    except (OSError, ValueError):
        return {}


def _save(data: dict) -> None:
    tmp = _progress_file().with_name(f".progress-{os.getpid()}-{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(_progress_file())


def _update(id: str, **changes) -> dict:
    """Read, change and write progress.json under a lock: two lessons open at once both count."""
    with open(lab.root() / ".progress.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _load()
        data.setdefault(id, {}).update(changes)
        _save(data)
        return data[id]


def _record(id: str, solved: bool, answer: str) -> dict:
    """Count a try, unless the answer is the one checked last time (a rerun, Run All)."""
    s = _load().get(id, {})
    tries = s.get("attempts", 0) + (answer != s.get("answer"))
    return _update(id, attempts=tries, solved=s.get("solved", False) or solved, answer=answer, last=time.time())


def _is_placeholder(v) -> bool:
    """The empty answers the exercise cells start with: None, "", [], (), {}, ..."""
    return v is None or v is Ellipsis or (isinstance(v, (str, bytes, list, tuple, dict, set)) and len(v) == 0)


def _fingerprint(args, kwargs) -> str:
    """A short digest of the answer, to tell a new answer from the same one run again."""
    import hashlib
    text = repr((args, sorted(kwargs.items())))
    return hashlib.sha256(text.encode(errors="replace")).hexdigest()[:16]


# --- the learner's copies of the notebooks -------------------------------------------------
def originals_dir() -> Path:
    """The course notebooks as shipped (``$LABKIT_NOTEBOOKS`` or the repository's notebooks/)."""
    return Path(os.environ.get("LABKIT_NOTEBOOKS", Path(__file__).resolve().parents[2] / "notebooks"))


def work_dir() -> Path:
    """Where the learner's copies live (``$LABKIT_WORKDIR`` or the repository's work/)."""
    return Path(os.environ.get("LABKIT_WORKDIR", Path(__file__).resolve().parents[2] / "work"))


def sync_notebooks() -> list[str]:
    """Copy every course notebook the learner does not have yet into the work dir."""
    work_dir().mkdir(parents=True, exist_ok=True)
    added = []
    for nb in sorted(originals_dir().glob("*.ipynb")):
        if not (work_dir() / nb.name).exists():
            _copy_without_outputs(nb, work_dir() / nb.name)
            added.append(nb.name)
    return added


def reset_notebook(name: str) -> Path:
    """Put the original of notebook ``name`` (e.g. "01-overlayfs") back in the work dir.

    The learner's version is kept as ``.backup/<name>-<time>.ipynb`` beside it: nothing is lost.
    """
    stem = name.removesuffix(".ipynb")
    matches = sorted(originals_dir().glob(f"{stem}*.ipynb"))
    if len(matches) != 1:
        names = ", ".join(p.stem for p in sorted(originals_dir().glob("*.ipynb")))
        raise LabError(f"no single course notebook matches {name!r}", f"use one of: {names}")
    src, dst = matches[0], work_dir() / matches[0].name
    if dst.exists():
        backup = work_dir() / ".backup" / f"{src.stem}-{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dst, backup)
    work_dir().mkdir(parents=True, exist_ok=True)
    _copy_without_outputs(src, dst)
    return dst


def _copy_without_outputs(src: Path, dst: Path) -> None:
    """The learner's copy starts blank: no outputs, no execution counts. The originals keep
    the outputs they were built with (nbval compares against them), but a learner should not
    see another machine's page frame numbers and paths before running anything."""
    try:
        nb = json.loads(src.read_text())
    except ValueError:
        shutil.copy2(src, dst)
        return
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.get("metadata", {}).pop("widgets", None)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(dst)
