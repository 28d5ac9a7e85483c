"""Lesson 08 exercises: push order; the header that resumes a download."""
from __future__ import annotations

from . import exercise


@exercise("08.order", "why the manifest goes last", hints=[
    "The registry refuses a manifest while a blob it names is missing (MANIFEST_BLOB_UNKNOWN).",
    "So the client uploads layers and config first; answer with the method and what it sends last.",
])
def check_push_order(answer):
    """``answer``: the last request of a push, e.g. "PUT manifest"."""
    a = (answer or "").lower()
    ok = "put" in a and "manifest" in a
    yield ok, "PUT of the manifest comes last: everything it names is there by then" if ok else (
        f"{answer!r} is not the last request of a push" if answer else "answer like: PUT manifest")


@exercise("08.resume", "the header that resumes a download", hints=[
    "The client asks for the bytes from where it stopped, the server answers 206 Partial Content.",
    "It is the same header a browser uses to resume: bytes=N-",
])
def check_resume_header(answer):
    """``answer``: the request header name a client sends to resume a blob download."""
    ok = (answer or "").strip().lower() == "range"
    yield ok, "Range: bytes=N- asks for the rest, and the registry answers 206" if ok else (
        f"{answer!r} is not it" if answer else "name the header")
