"""Lesson 03: images as one file, the way ``docker save`` and ``podman save`` write them.

Two archive formats are in use (both plain tar files):

* **docker-archive** (``docker save``, ``podman save``): ``manifest.json`` lists, per image,
  its config file and its layer files (``[{"Config": "<hex>.json", "RepoTags": ["busybox:latest"],
  "Layers": ["<id>/layer.tar", ...]}]``); the layers are tars, usually uncompressed.
* **oci-archive** (``podman save --format oci-archive``, ``skopeo copy ... oci-archive:``): an
  OCI image layout (oci-layout, index.json, blobs/sha256/...) packed into one tar.

labkit reads both without unpacking them onto disk: an archive is seen as a read-only OCI layout
(:class:`OciArchive`, :class:`DockerArchive`), and store.copy() takes the image from it as it
would from a directory, verifying every blob, DiffID and layer tar before the name is written.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

from .. import lab
from . import digest, formats
from .store import (MAX_JSON, REF_NAME, Descriptor, Image, Layout, Store, StoreError, canonical, check_name)

_HEX = re.compile(r"[0-9a-f]{64}")


class ArchiveError(StoreError):
    """An archive that is not one labkit reads, or one that lies about its contents."""


class _TarLayout(Layout):
    """A read-only layout whose blobs are members of a tar file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.tar = tarfile.open(self.path, "r:")
        except (OSError, tarfile.TarError) as e:
            raise ArchiveError(f"{self.path} is not a tar archive ({e})",
                               "give a file written by docker save, podman save or labkit image save") from None
        self.members = {m.name.removeprefix("./"): m for m in self.tar.getmembers() if m.isfile()}

    def member(self, name: str, limit: int | None = None) -> bytes | io.BufferedReader:
        m = self.members.get(name)
        if m is None:
            raise ArchiveError(f"{self.path} has no file {name}", "the archive is incomplete: save it again")
        if limit is not None:
            if m.size > limit:
                raise ArchiveError(f"{name} in {self.path} is {m.size} bytes; at most {limit} are read",
                                   "this is not a real manifest or config")
            return self.tar.extractfile(m).read()
        return self.tar.extractfile(m)

    def close(self) -> None:
        self.tar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OciArchive(_TarLayout):
    """An OCI layout in a tar file (oci-archive)."""

    def index(self) -> dict:
        idx = json.loads(self.member("index.json", MAX_JSON))
        if not isinstance(idx, dict) or not isinstance(idx.get("manifests", []), list):
            raise ArchiveError(f"index.json in {self.path} is not an image index", "save the archive again")
        return idx

    def open_blob(self, desc: Descriptor) -> digest.VerifyingReader:
        f = self.member(f"blobs/sha256/{digest.encoded(desc.digest)}")
        return digest.VerifyingReader(f, desc.digest, desc.size, desc.media_type)

    def has_blob(self, d: str) -> bool:
        return f"blobs/sha256/{digest.encoded(d)}" in self.members

    def names(self) -> list[str]:
        """Its images' names; an entry without a ref.name is called by its position, '@0'."""
        out = []
        for i, m in enumerate(self.index().get("manifests", [])):
            out.append((m.get("annotations") or {}).get(REF_NAME) or f"@{i}")
        return out

    def refs(self) -> dict[str, Descriptor]:
        return {n: Descriptor.from_json(m, "index entry")
                for n, m in zip(self.names(), self.index().get("manifests", []))}


class DockerArchive(_TarLayout):
    """A docker-archive, seen as a layout: each image of manifest.json gets an OCI manifest made
    here (not stored in the archive), naming its config file and its layer files by digest."""

    def __init__(self, path):
        super().__init__(path)
        try:
            entries = json.loads(self.member("manifest.json", MAX_JSON))
            assert isinstance(entries, list) and entries
        except (ValueError, AssertionError):
            raise ArchiveError(f"manifest.json in {self.path} is not a list of images",
                               "save the archive again with docker save or podman save") from None
        self.blobs: dict[str, str] = {}            # digest -> member name
        self.made: dict[str, bytes] = {}           # digest -> a manifest made here
        self._refs: dict[str, Descriptor] = {}
        for i, e in enumerate(entries):
            self._add(i, e)

    def _describe(self, name: str, media_type: str | None = None) -> Descriptor:
        """The descriptor of member ``name``: its digest and size (one pass over it) and, for a
        layer, a media type from its first bytes (formats.compression)."""
        h, size = hashlib.sha256(), 0
        with self.member(name) as f:
            head = f.read(4)
            h.update(head)
            size += len(head)
            while chunk := f.read(digest.CHUNK):
                h.update(chunk)
                size += len(chunk)
        kind = formats.compression(head)
        media_type = media_type or formats.OCI_LAYER + {"none": "", "gzip": "+gzip", "zstd": "+zstd"}[kind]
        self.blobs["sha256:" + h.hexdigest()] = name
        return Descriptor(media_type, "sha256:" + h.hexdigest(), size)

    def _add(self, i: int, e) -> None:
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str) or not isinstance(e.get("Layers"), list):
            raise ArchiveError(f"image {i} of manifest.json in {self.path} has no Config or Layers",
                               "save the archive again")
        config = self._describe(e["Config"], formats.OCI_CONFIG)
        stem = Path(e["Config"]).name.removesuffix(".json")
        if _HEX.fullmatch(stem) and digest.encoded(config.digest) != stem:
            raise ArchiveError(f"{e['Config']} in {self.path} hashes to {config.digest}",
                               "the archive was changed after it was saved: do not load it")
        layers = [self._describe(name) for name in e["Layers"]]
        manifest = canonical({"schemaVersion": 2, "mediaType": formats.OCI_MANIFEST, "config": config.to_json(),
                              "layers": [d.to_json() for d in layers]})
        desc = Descriptor(formats.OCI_MANIFEST, digest.of_bytes(manifest), len(manifest))
        self.made[desc.digest] = manifest
        tags = [t for t in e.get("RepoTags") or [] if isinstance(t, str)]
        for name in tags or [f"@{i}"]:
            self._refs[name] = desc

    def refs(self) -> dict[str, Descriptor]:
        return dict(self._refs)

    def names(self) -> list[str]:
        return list(self._refs)

    def has_blob(self, d: str) -> bool:
        return d in self.blobs or d in self.made

    def open_blob(self, desc: Descriptor) -> digest.VerifyingReader:
        if desc.digest in self.made:
            f = io.BytesIO(self.made[desc.digest])
        elif desc.digest in self.blobs:
            f = self.member(self.blobs[desc.digest])
        else:
            raise ArchiveError(f"{self.path} has no blob {desc.digest}", "the archive is incomplete")
        return digest.VerifyingReader(f, desc.digest, desc.size, desc.media_type)


def open_archive(path: str | Path) -> _TarLayout:
    """The archive at ``path`` as a layout: a docker-archive if it has manifest.json, an
    oci-archive if it has oci-layout (docker 25+ writes both: its manifest.json is read)."""
    probe = _TarLayout(path)
    kinds = probe.members.keys()
    probe.close()
    if "manifest.json" in kinds:
        return DockerArchive(path)
    if "oci-layout" in kinds:
        return OciArchive(path)
    raise ArchiveError(f"{path} is neither a docker-archive (no manifest.json) nor an oci-archive (no oci-layout)",
                       "give a file written by docker save, podman save or labkit image save")


def short_name(ref: str) -> str:
    """A store name for an archive's image name: 'docker.io/library/busybox:latest' -> 'busybox',
    'localhost/lab/app:v1' -> 'lab/app:v1' (the registry host, 'library/' and ':latest' go)."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        ref = rest
    ref = ref.removeprefix("library/")
    return ref.removesuffix(":latest")


def load(store: Store, path: str | Path, name: str | None = None, ref: str | None = None,
         platform: "formats.Platform | None" = None) -> Image:
    """``docker load -i`` / ``podman load -i``: copy one image of the archive at ``path`` into
    ``store`` as ``name``. ``ref`` picks an image of an archive that holds several (its name
    in the archive); a name that is an index gives ``platform``'s image."""
    with open_archive(path) as arc:
        names = arc.names()
        if ref is None and len(names) > 1 and len({arc.refs()[n].digest for n in names}) > 1:
            raise ArchiveError(f"{path} holds {len(names)} images: {', '.join(names)}",
                               "choose one: labkit image load -i FILE --ref NAME")
        src = ref or names[0]
        if src not in names:
            raise ArchiveError(f"{path} has no image {src!r}", f"it has: {', '.join(names)}")
        dst = check_name(name or short_name(src if not src.startswith("@") else Path(path).stem.lower()))
        from .store import copy
        img = copy(arc, src, store, dst, check=store.check_layers, platform=platform)
    return store.image(img.name)


def save(store: Store, name: str, path: str | Path, fmt: str = "docker-archive") -> Path:
    """``podman save``: image ``name`` as one file (under the lab root), a docker-archive
    (uncompressed layers, docker's layout of files) or an oci-archive (the OCI layout, blobs as
    stored). Written to a temporary name, then renamed: never half a file under ``path``."""
    path = lab.inside(path)               # like every file labkit writes: under the lab root
    img = store.image(name)
    repo_tag = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
            if fmt == "docker-archive":
                _docker_archive(store, img, repo_tag, out)
            elif fmt == "oci-archive":
                _oci_archive(store, img, repo_tag, out)
            else:
                raise ArchiveError(f"unknown archive format {fmt!r}", "use docker-archive or oci-archive")
        tmp.rename(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _add_bytes(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    out.addfile(info, io.BytesIO(data))


def _add_file(out: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = path.stat().st_size, 0o644
    with open(path, "rb") as f:
        out.addfile(info, f)


def _docker_archive(store: Store, img: Image, repo_tag: str, out: tarfile.TarFile) -> None:
    with store.open_blob(img.config_desc) as r:
        config = r.read()
    cfg_name = f"{digest.encoded(img.config_desc.digest)}.json"
    _add_bytes(out, cfg_name, config)
    layers = []
    for desc, diff_id in zip(img.layers, img.diff_ids):
        name = f"{digest.encoded(diff_id)}/layer.tar"
        if name not in layers:                    # the same layer twice is stored once
            _add_file(out, name, store.open_layer(desc, diff_id))
        layers.append(name)
    _add_bytes(out, "manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": [repo_tag],
                                                  "Layers": layers}]).encode())


def _oci_archive(store: Store, img: Image, repo_tag: str, out: tarfile.TarFile) -> None:
    _add_bytes(out, "oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
    entry = img.manifest_desc.to_json()
    entry["annotations"] = {REF_NAME: repo_tag}
    _add_bytes(out, "index.json", canonical({"schemaVersion": 2, "mediaType": formats.OCI_INDEX,
                                             "manifests": [entry]}))
    for desc in {d.digest: d for d in [img.manifest_desc, img.config_desc, *img.layers]}.values():
        _add_file(out, f"blobs/sha256/{digest.encoded(desc.digest)}", store.blob_path(desc.digest))
