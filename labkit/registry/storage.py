"""Registry storage behind a small driver interface (seed 001: a registry does not store
anything itself; a storage driver does: filesystem, S3, Swift, OSS ...).

:class:`Filesystem` is the default. Its rules:

* a blob becomes visible only by rename(2) of a complete, fsynced, digest-checked file, so a
  partial upload is never a blob and a crash loses nothing already acknowledged;
* an upload is a directory ``uploads/<uuid>`` with a ``data`` file that only grows;
* a repository *links* the blobs it may serve (``repositories/<name>/_layers/<hex>``), as
  distribution does, so a blob pushed to one repository is not readable from another
  until it is mounted there;
* every digest is validated before it becomes a path, every name by the spec's grammar.

An S3-compatible driver would implement the same methods over object keys.
"""
from __future__ import annotations

import errno
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import LabError
from ..image import digest

NAME = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
UPLOAD_TTL = 3600      # seconds an unfinished upload is kept (docker-registry's default purges after days)


class BadName(LabError):
    """A repository name the distribution spec does not allow."""


class Filesystem:
    def __init__(self, root: str | os.PathLike, upload_ttl: float = UPLOAD_TTL):
        self.root = Path(root)
        self.upload_ttl = upload_ttl
        self._swept = 0.0               # when expire_uploads last ran
        for d in ("blobs/sha256", "repositories", "uploads"):
            (self.root / d).mkdir(parents=True, exist_ok=True)

    # --- blobs ---
    def blob_path(self, d: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.encoded(d)

    def blob_size(self, d: str) -> int | None:
        try:
            return self.blob_path(d).stat().st_size
        except FileNotFoundError:
            return None

    def open_blob(self, d: str) -> BinaryIO:
        return open(self.blob_path(d), "rb")

    def link(self, repo: str, d: str) -> None:
        p = self._repo(repo) / "_layers" / digest.encoded(d)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()

    def linked(self, repo: str, d: str) -> bool:
        return (self._repo(repo) / "_layers" / digest.encoded(d)).exists() and self.blob_size(d) is not None

    def unlink(self, repo: str, d: str) -> bool:
        p = self._repo(repo) / "_layers" / digest.encoded(d)
        if not p.exists():
            return False
        p.unlink()
        return True

    # --- uploads ---
    def start_upload(self, repo: str) -> str:
        """A new upload session. Abandoned ones older than ``upload_ttl`` are swept first, at
        most once a minute (each sweep reads every upload's info.json)."""
        if time.time() - self._swept > min(60, self.upload_ttl):
            self.expire_uploads()
        uid = uuid.uuid4().hex
        d = self.root / "uploads" / uid
        d.mkdir()
        (d / "data").touch()
        (d / "info.json").write_text(json.dumps({"repo": repo, "started": time.time()}))
        return uid

    def upload(self, uid: str, repo: str) -> Path | None:
        """The upload's data file, if it exists, belongs to ``repo`` and has not expired."""
        if not re.fullmatch(r"[0-9a-f]{32}", uid or ""):
            return None
        d = self.root / "uploads" / uid
        try:
            info = json.loads((d / "info.json").read_text())
        except (OSError, ValueError):
            return None
        if info["repo"] != repo:
            return None
        if time.time() - info["started"] > self.upload_ttl:
            self.cancel_upload(uid)
            return None
        return d / "data"

    def append(self, data_file: Path, chunks: Iterator[bytes]) -> int:
        """Add ``chunks`` to an upload; if the disk fills up, the whole upload is removed at once
        (not left to expire), so the space is back for the next push."""
        try:
            with open(data_file, "ab") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                return f.tell()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self.cancel_upload(data_file.parent.name)
            raise

    def finish_upload(self, uid: str, repo: str, want: str) -> bool:
        """Hash the upload; if it is ``want``, move it into place and link it. False if not."""
        data = self.upload(uid, repo)
        got, _ = digest.of_file(data)
        if got != want:
            return False
        final = self.blob_path(want)
        if final.exists():
            data.unlink()
        else:
            data.rename(final)
        self.cancel_upload(uid)
        self.link(repo, want)
        return True

    def cancel_upload(self, uid: str) -> None:
        d = self.root / "uploads" / uid
        for f in ("data", "info.json"):
            (d / f).unlink(missing_ok=True)
        try:
            d.rmdir()
        except OSError:
            pass

    def expire_uploads(self) -> int:
        """Remove uploads that never finished within ``upload_ttl``; returns how many."""
        self._swept = time.time()
        n = 0
        for d in (self.root / "uploads").iterdir():
            try:
                started = json.loads((d / "info.json").read_text())["started"]
            except (OSError, ValueError, KeyError):
                try:                         # being created right now, or half-written by a crash
                    started = d.stat().st_mtime
                except FileNotFoundError:
                    continue                 # finished or swept by another request meanwhile
            if time.time() - started > self.upload_ttl:
                self.cancel_upload(d.name)
                n += 1
        return n

    # --- manifests and tags ---
    def _repo(self, repo: str) -> Path:
        if not NAME.fullmatch(repo) or len(repo) > 255:
            raise BadName(f"{repo[:80]!r} is not a repository name",
                          "use lowercase path components like lab/app (spec.md, \"Pulling manifests\")")
        return self.root / "repositories" / repo

    def put_manifest(self, repo: str, d: str, media_type: str, tag: str | None) -> None:
        rev = self._repo(repo) / "_manifests" / "revisions" / digest.encoded(d)
        rev.parent.mkdir(parents=True, exist_ok=True)
        rev.write_text(media_type)
        if tag:
            t = self._repo(repo) / "_manifests" / "tags" / tag
            t.parent.mkdir(parents=True, exist_ok=True)
            tmp = t.with_name(f".{tag}.{uuid.uuid4().hex}")
            tmp.write_text(d)
            tmp.rename(t)

    def resolve(self, repo: str, reference: str) -> str | None:
        if reference.startswith("sha256:"):
            return reference if (self._repo(repo) / "_manifests" / "revisions" / digest.encoded(reference)).exists() else None
        try:
            return (self._repo(repo) / "_manifests" / "tags" / reference).read_text()
        except FileNotFoundError:
            return None

    def manifest_type(self, repo: str, d: str) -> str:
        return (self._repo(repo) / "_manifests" / "revisions" / digest.encoded(d)).read_text()

    def delete_manifest(self, repo: str, reference: str) -> bool:
        base = self._repo(repo) / "_manifests"
        if reference.startswith("sha256:"):
            rev = base / "revisions" / digest.encoded(reference)
            if not rev.exists():
                return False
            rev.unlink()
            for t in (base / "tags").glob("*") if (base / "tags").exists() else []:
                if t.read_text() == reference:
                    t.unlink()
            return True
        t = base / "tags" / reference
        if not t.exists():
            return False
        t.unlink()
        return True

    def repositories(self) -> list[str]:
        """Every repository that holds a manifest, sorted (a name is a path of components)."""
        top = self.root / "repositories"
        out = [str(p.parent.parent.relative_to(top)) for p in top.glob("**/_manifests/revisions")] if top.exists() else []
        return sorted(r for r in out if NAME.fullmatch(r))

    def tags(self, repo: str) -> list[str] | None:
        d = self._repo(repo)
        if not d.exists():
            return None
        t = d / "_manifests" / "tags"
        return sorted(p.name for p in t.iterdir() if not p.name.startswith(".")) if t.exists() else []

    def revisions(self, repo: str) -> list[str]:
        d = self._repo(repo) / "_manifests" / "revisions"
        return sorted(f"sha256:{p.name}" for p in d.iterdir()) if d.exists() else []
