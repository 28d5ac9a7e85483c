"""Content addressing: a blob is named by the SHA-256 of its bytes.

image-spec descriptor.md, "Digests": ``algorithm ":" encoded``; for sha256 the encoded
part is exactly 64 lowercase hex characters. A digest string from outside (a manifest,
an index, a URL) is validated here before it ever becomes part of a path (a digest used
as a path was CVE-2024-3727).

image-spec config.md: the **DiffID** of a layer is the digest of its *uncompressed* tar;
the **ChainID** names a whole stack: ChainID(1) = DiffID(1),
ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n)).
"""
from __future__ import annotations

import hashlib
import re
from typing import BinaryIO, Iterable

from ..errors import LabError

_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
CHUNK = 1 << 20


class DigestError(LabError):
    """A malformed digest, or bytes that do not match their digest."""


def validate(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256 digest, else raise DigestError."""
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        shown = digest if isinstance(digest, str) and len(digest) < 100 else f"{str(digest)[:60]}..."
        raise DigestError(f"{shown!r} is not a valid digest",
                          "a digest is 'sha256:' followed by 64 lowercase hex characters")
    return digest


def encoded(digest: str) -> str:
    """The hex part of a validated digest: safe to use as a file name."""
    return validate(digest).split(":", 1)[1]


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def of_stream(f: BinaryIO) -> tuple[str, int]:
    """(digest, size) of everything ``f`` yields, read in 1 MiB chunks (memory stays flat)."""
    h, size = hashlib.sha256(), 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def of_file(path) -> tuple[str, int]:
    with open(path, "rb") as f:
        return of_stream(f)


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The ChainID of each prefix of a layer stack (base layer first)."""
    out: list[str] = []
    for d in diff_ids:
        validate(d)
        out.append(d if not out else of_bytes(f"{out[-1]} {d}".encode()))
    return out


class HashingWriter:
    """A file wrapper that hashes what is written through it, on a second thread.

    hashlib releases the GIL for large buffers, so hashing one chunk overlaps with
    writing the next: a layer is written and its DiffID known in one pass. Use it as a
    context manager; ``digest`` is final after the ``with`` block.
    """

    def __init__(self, f: BinaryIO):
        import queue
        import threading
        self.f, self.h, self.size = f, hashlib.sha256(), 0
        self._q: "queue.Queue[bytes | None]" = queue.Queue(maxsize=64)
        self._t = threading.Thread(target=self._hash, daemon=True)
        self._t.start()

        self._pending = bytearray()     # small writes (tar headers) are hashed in batches

    def _hash(self) -> None:
        while (chunk := self._q.get()) is not None:
            self.h.update(chunk)

    def write(self, data) -> int:
        self._pending += data
        if len(self._pending) >= CHUNK:
            self._q.put(bytes(self._pending))
            self._pending.clear()
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(bytes(self._pending))
            self._pending.clear()
            self._q.put(None)
            self._t.join()

    def __enter__(self) -> "HashingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def digest(self) -> str:
        self.close()
        return "sha256:" + self.h.hexdigest()


class VerifyingReader:
    """Read a blob and check, at its end, that the bytes match ``digest`` and ``size``."""

    def __init__(self, f: BinaryIO, digest: str, size: int | None = None, what: str = "blob"):
        self.f, self.want, self.size, self.what = f, validate(digest), size, what
        self.h, self.seen = hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.seen += len(data)
        if not data or n < 0:
            self._verify()
        return data

    def _verify(self) -> None:
        got = "sha256:" + self.h.hexdigest()
        if got != self.want or (self.size is not None and self.seen != self.size):
            raise DigestError(f"{self.what} {self.want} has {self.seen} bytes hashing to {got}",
                              "the blob is corrupt: remove it (labkit image rm) and load or pull it again")

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
