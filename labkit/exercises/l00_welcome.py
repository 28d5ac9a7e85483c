"""Lesson 00: a warm-up exercise that shows how checks, hints and progress work."""
from __future__ import annotations

from pathlib import Path

from .. import lab
from . import exercise


@exercise("00.hello", "write a file in your scratch dir", hints=[
    "Your scratch dir is the Path that lab.scratch('00-welcome') returned.",
    "Path objects have write_text(): (scratch / 'hello.txt').write_text(...).",
    "The text must be exactly: hello, kernel",
])
def check_hello(path):
    """The learner passes the path of hello.txt; it must say "hello, kernel" and lie in the lab."""
    if path is None:
        yield False, "pass the path of your hello.txt to check_hello(...)"
        return
    p = Path(path)
    yield p.name == "hello.txt", f"the file is called {p.name!r}" + ("" if p.name == "hello.txt" else ", not 'hello.txt'")
    try:
        lab.inside(p)
        yield True, "it lies under the lab root"
    except lab.OutsideLabRoot:
        yield False, f"{p} is outside the lab root {lab.root()}"
        return
    if not p.is_file():
        yield False, f"{p} does not exist yet"
        return
    text = p.read_text().strip()
    yield text == "hello, kernel", f"it says {text!r}" + ("" if text == "hello, kernel" else ", not 'hello, kernel'")
