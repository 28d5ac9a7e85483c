"""The local image store: one OCI image layout under the lab root.

image-spec image-layout.md: a directory with ``oci-layout``, ``index.json`` and
``blobs/sha256/<hex>``. Every blob (layer tar, config, manifest) is named by its digest,
so a base layer shared by ten images is stored once, like a Git object. Image names are
``org.opencontainers.image.ref.name`` annotations in index.json, which is why
``skopeo inspect oci:<store>:<name>`` and ``umoci`` read the store directly.

* A blob is written once: to a temporary name while hashing, fsync, then renamed to its
  digest. A crash leaves at most a temporary file, never a wrong blob.
* A blob is verified every time it is read (:class:`digest.VerifyingReader`).
* JSON documents are small; anything larger than MAX_JSON is refused, not parsed.
* The store only holds blobs and names; unpacking layers into directories is the
  snapshotter's job (snapshot.py), as containerd splits its content store and snapshotter.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .. import lab
from ..errors import LabError
from . import digest, formats, layer

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = layer.MEDIA_TYPE
LAYER_GZIP = layer.MEDIA_TYPE + "+gzip"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = formats.LAYERS
REF_NAME = "org.opencontainers.image.ref.name"
MAX_JSON = 4 << 20
EPOCH = "1970-01-01T00:00:00Z"
SCRATCH = "scratch"     # FROM scratch, squash onto scratch: docker's name for the empty image (never stored)
_NAME = re.compile(r"[a-z0-9][a-z0-9._/:-]{0,254}")


class StoreError(LabError):
    """A store operation that cannot be done; the message says what to do."""


@dataclass(frozen=True)
class Descriptor:
    """image-spec descriptor.md: what a blob is, its digest and its size."""
    media_type: str
    digest: str
    size: int
    annotations: dict = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    @classmethod
    def from_json(cls, d: dict, what: str = "descriptor") -> "Descriptor":
        try:
            size = d["size"]
            if not isinstance(size, int) or size < 0:
                raise ValueError
            return cls(str(d["mediaType"]), digest.validate(d["digest"]), size, dict(d.get("annotations") or {}))
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"malformed {what}: {json.dumps(d)[:200]}",
                             "a descriptor needs mediaType, a sha256 digest and a non-negative size") from None


def canonical(obj) -> bytes:
    """JSON with sorted keys and no spaces: the same document always has the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise StoreError(f"{name!r} is not a valid image name",
                         "use lowercase letters, digits and . _ / : - (for example busybox or lab/app:v1)")
    return name


# --- an OCI image layout ----------------------------------------------------------------------
class Layout:
    """An OCI image layout directory: blobs by digest, and names in index.json."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        if create:
            (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            if not (self.path / "oci-layout").exists():
                _atomic_write(self.path / "oci-layout", canonical(OCI_LAYOUT))
            if not (self.path / "index.json").exists():
                self._write_index({"schemaVersion": 2, "mediaType": INDEX, "manifests": []})
        elif not (self.path / "oci-layout").is_file():
            raise StoreError(f"{self.path} is not an OCI image layout (no oci-layout file)",
                             "give the directory skopeo or umoci wrote, or `labkit image save` made")

    # blobs
    def blob_path(self, d: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.encoded(d)

    def has_blob(self, d: str) -> bool:
        return self.blob_path(d).is_file()

    def claim_blob(self, d: str) -> bool:
        """``has_blob``, and if so mark the blob as in use now (its mtime), so that a
        :meth:`gc` running meanwhile keeps it through its grace period while the image that
        reuses it is still getting its name."""
        try:
            os.utime(self.blob_path(d))
            return True
        except FileNotFoundError:
            return False

    def put_blob(self, src: BinaryIO, media_type: str, expect: str | None = None) -> Descriptor:
        """Stream ``src`` into a blob; refuse it if ``expect`` is given and does not match."""
        tmp = self.path / "blobs" / "sha256" / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f, digest.HashingWriter(f) as hw:
                while chunk := src.read(digest.CHUNK):
                    hw.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if expect and hw.digest != expect:
                raise digest.DigestError(f"the blob should be {expect} but its bytes hash to {hw.digest}",
                                         "the source is corrupt or was changed: fetch it again")
            final = self.blob_path(hw.digest)
            if self.claim_blob(hw.digest):          # stored already: now in use again
                tmp.unlink()
            else:
                tmp.rename(final)
            return Descriptor(media_type, hw.digest, hw.size)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        import io
        return self.put_blob(io.BytesIO(data), media_type)

    def put_json(self, obj, media_type: str) -> Descriptor:
        return self.put_bytes(canonical(obj), media_type)

    def open_blob(self, desc: Descriptor) -> digest.VerifyingReader:
        """A reader that raises DigestError at the end if the bytes are not ``desc``'s."""
        p = self.blob_path(desc.digest)
        if not p.is_file():
            raise StoreError(f"blob {desc.digest} is missing from {self.path}",
                             "the layout is incomplete: copy or pull the image again")
        return digest.VerifyingReader(open(p, "rb"), desc.digest, desc.size, desc.media_type)

    def read_json(self, desc: Descriptor) -> dict:
        """A JSON blob, verified and size-limited."""
        if desc.size > MAX_JSON:
            raise StoreError(f"{desc.media_type} {desc.digest} is {desc.size} bytes; "
                             f"at most {MAX_JSON} are accepted", "this is not a real manifest or config")
        with self.open_blob(desc) as r:
            data = r.read()
        try:
            obj = json.loads(data)
        except ValueError as e:
            raise StoreError(f"{desc.media_type} {desc.digest} is not JSON ({e})", "the blob is corrupt") from None
        if not isinstance(obj, dict):
            raise StoreError(f"{desc.media_type} {desc.digest} is not a JSON object", "the blob is corrupt")
        return obj

    # names
    def index(self) -> dict:
        p = self.path / "index.json"
        if p.stat().st_size > MAX_JSON:
            raise StoreError(f"{p} is larger than {MAX_JSON} bytes", "this is not a real image index")
        try:
            idx = json.loads(p.read_text())
            assert isinstance(idx.get("manifests", []), list)
            return idx
        except (ValueError, AssertionError):
            raise StoreError(f"{p} is not a valid image index", "restore it, or remove the layout") from None

    def _write_index(self, idx: dict) -> None:
        _atomic_write(self.path / "index.json", json.dumps(idx, indent=1).encode())

    def refs(self) -> dict[str, Descriptor]:
        """``{name: manifest descriptor}`` from index.json's ref-name annotations."""
        out = {}
        for m in self.index().get("manifests", []):
            d = Descriptor.from_json(m, "index entry")
            name = d.annotations.get(REF_NAME)
            if name:
                out[name] = d
        return out

    def set_ref(self, name: str, desc: Descriptor) -> None:
        with self._locked():
            idx = self.index()
            keep = [m for m in idx.get("manifests", []) if (m.get("annotations") or {}).get(REF_NAME) != name]
            entry = desc.to_json()
            entry["annotations"] = {**desc.annotations, REF_NAME: name}
            idx["manifests"] = keep + [entry]
            self._write_index(idx)

    def remove_ref(self, name: str) -> None:
        with self._locked():
            idx = self.index()
            idx["manifests"] = [m for m in idx.get("manifests", [])
                                if (m.get("annotations") or {}).get(REF_NAME) != name]
            self._write_index(idx)

    @contextlib.contextmanager
    def _locked(self):
        """index.json is read, changed and written by one process at a time (two lessons may
        add images at once); the lock file sits beside the layout, not in it."""
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _reachable(self, descs) -> set[str]:
        """The digests of the manifests ``descs`` and of every config and layer they name (and,
        for an index, of its manifests' in turn). A blob that is not JSON reaches nothing more."""
        keep, todo = set(), list(descs)
        while todo:
            desc = todo.pop()
            if desc.digest in keep:
                continue
            keep.add(desc.digest)
            if not self.has_blob(desc.digest):
                continue
            try:
                m = self.read_json(Descriptor(desc.media_type, desc.digest, self.blob_path(desc.digest).stat().st_size))
            except LabError:
                continue
            named = [m.get("config"), *(m.get("layers") or []), *(m.get("manifests") or [])]
            for d in named:
                if isinstance(d, dict) and isinstance(d.get("digest"), str) and d["digest"].startswith("sha256:"):
                    todo.append(Descriptor(str(d.get("mediaType", "")), d["digest"], 0))
        return keep

    def unreferenced(self) -> dict[str, int]:
        """``{digest: bytes}`` of the blobs no name reaches: the manifests, configs and layers of
        untagged images (Docker's ``<none>:<none>``: a name moved to a new build), and layers
        that lost their last image."""
        keep = self._reachable(self.refs().values())
        return {f"sha256:{p.name}": p.stat().st_size for p in (self.path / "blobs" / "sha256").iterdir()
                if not p.name.startswith(".") and f"sha256:{p.name}" not in keep}

    def gc(self, grace: float = 300.0) -> list[str]:
        """Delete the :meth:`unreferenced` blobs not written or claimed in the last ``grace``
        seconds; returns their digests. The grace period is what makes it safe beside another
        kernel that is writing an image: its blobs go in (or are claimed again, by the build
        cache or ``put_blob``) before its name does (as containerd's leases and the
        registry's garbage-collect warnings are about)."""
        now, gone = time.time(), []
        for d in self.unreferenced():
            p = self.blob_path(d)
            try:
                if p.stat().st_mtime <= now - grace:
                    p.unlink()
                    gone.append(d)
            except FileNotFoundError:
                pass
        return sorted(gone)

def _diff_id_mismatch(desc: Descriptor, want: str, got: str) -> LabError:
    return digest.DigestError(f"layer {desc.digest} unpacks to {got}, but the image config says its DiffID is {want}",
                              "the image is broken or hostile: remove it (labkit image rm) and do not run it")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)


# --- images -----------------------------------------------------------------------------------
@dataclass
class Image:
    """A named image: its manifest and config, read from a layout and verified."""
    name: str
    manifest_desc: Descriptor
    manifest: dict
    config: dict

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(d, "layer descriptor") for d in self.manifest.get("layers", [])]

    @property
    def config_desc(self) -> Descriptor:
        return Descriptor.from_json(self.manifest.get("config", {}), "config descriptor")

    @property
    def diff_ids(self) -> list[str]:
        return [digest.validate(d) for d in self.config.get("rootfs", {}).get("diff_ids", [])]

    @property
    def chain_ids(self) -> list[str]:
        return digest.chain_ids(self.diff_ids)

    @property
    def history(self) -> list[dict]:
        return list(self.config.get("history", []))

    @property
    def size(self) -> int:
        return sum(d.size for d in self.layers)


def read_image(layout: Layout, name: str, desc: Descriptor) -> Image:
    """Read and check the manifest and config a name points to."""
    if desc.media_type not in formats.MANIFESTS:
        raise StoreError(f"{name} points to a {desc.media_type}, not an image manifest",
                         "load it again with labkit image load, which picks this machine's platform")
    m = layout.read_json(desc)
    if m.get("schemaVersion") != 2 or not isinstance(m.get("layers"), list) or "config" not in m:
        raise StoreError(f"the manifest of {name} is malformed (schemaVersion 2, config and layers needed)",
                         "the image is broken: remove it and load it again")
    formats.check_image_manifest(m, desc.media_type, name)
    img = Image(name, desc, m, {})
    img.config = layout.read_json(img.config_desc)
    if len(img.diff_ids) != len(img.layers):
        raise StoreError(f"{name} has {len(img.layers)} layers but {len(img.diff_ids)} DiffIDs in its config",
                         "the image is broken: remove it and load it again")
    return img


GUARD_EVERY = 16 << 20


def decompress(src, dst, where: Path, what: str) -> None:
    """Copy a decompressing stream, checking the free space every 16 MiB: a gzip bomb (a few
    KiB that inflate to terabytes) stops with an error naming ``what``, not a full disk."""
    since = GUARD_EVERY
    while chunk := src.read(digest.CHUNK):
        if since >= GUARD_EVERY:
            layer.ensure_space(where, GUARD_EVERY, what)
            since = 0
        dst.write(chunk)
        since += len(chunk)


class Store(Layout):
    """The lab's image store at ``<lab root>/store``, with its own snapshotter.

    ``snapshot_root`` is where its layers are unpacked (the snapshotter's directory, see
    snapshot.py): ``<lab root>/snapshots`` for the default store; a store elsewhere
    (``Store(path)``) gets ``<path>.snapshots`` beside it, so two stores never share them.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__(lab.inside(path or lab.root() / "store"))
        self.snapshot_root = (lab.root() / "snapshots" if path is None
                              else self.path.with_name(self.path.name + ".snapshots"))

    def listing(self) -> tuple[list[Image], dict[str, str]]:
        """One pass over index.json: the images that can be read, and ``{name: why}`` for the
        names that cannot (another tool's index or artifact, a damaged blob), which ``image ls``
        shows and ``image rm`` removes."""
        images, unreadable = [], {}
        for n, d in sorted(self.refs().items()):
            try:
                images.append(read_image(self, n, d))
            except LabError as e:
                unreadable[n] = e.message
        return images, unreadable

    def images(self) -> list[Image]:
        """Every image that can be read (see :meth:`listing` for the others)."""
        return self.listing()[0]

    def image(self, name: str) -> Image:
        refs = self.refs()
        if name not in refs:
            have = ", ".join(sorted(refs)) or "none yet"
            raise StoreError(f"there is no image called {name!r}",
                             f"images in the store: {have}; make one with labkit image import or load")
        return read_image(self, name, refs[name])

    def add_layer_tar(self, tar: str | os.PathLike) -> tuple[Descriptor, str]:
        """Store a layer tar as a blob; returns (descriptor, DiffID). Uncompressed: they are equal."""
        layer.validate(tar)
        with open(tar, "rb") as f:
            desc = self.put_blob(f, LAYER)
        return desc, desc.digest

    def add_layer_dir(self, directory: str | os.PathLike) -> tuple[Descriptor, str]:
        """Turn a directory (an upper dir, or a rootfs) into a stored layer, written straight
        into the blob directory (one pass: the tar is hashed as it is written)."""
        tmp = self.path / "blobs" / "sha256" / f".tmp-{uuid.uuid4().hex}"
        try:
            info = layer.create(directory, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            if not self.claim_blob(info.diff_id):
                tmp.rename(self.blob_path(info.diff_id))
            return Descriptor(LAYER, info.diff_id, info.size), info.diff_id
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self, name: str) -> list[str]:
        """Drop a name, then those of *its* blobs that no other name needs; returns the freed
        digests. Blobs it never named stay, so an image another lesson is writing right now (its
        blobs stored, its name not yet) is safe."""
        refs = self.refs()
        if name not in refs:
            self.image(name)                 # the "no image called" error, with the names there are
        mine = self._reachable([refs[name]])      # an unreadable image can be removed too
        self.remove_ref(name)
        return self._free(mine)

    def remove_untagged(self, manifest: str) -> list[str]:
        """``docker rmi`` of a ``<none>:<none>`` image: delete the blobs of the manifest
        ``manifest`` (a digest) that no name reaches; returns them. Refused while a name
        points at it."""
        if manifest in {d.digest for d in self.refs().values()}:
            raise StoreError(f"image {manifest[:19]} still has a name", "remove it by that name")
        if not self.has_blob(manifest):
            raise StoreError(f"no manifest {manifest[:19]} in {self.path}", "see store.unreferenced()")
        return self._free(self._reachable([Descriptor(MANIFEST, manifest, self.blob_path(manifest).stat().st_size)]))

    def _free(self, mine: set[str]) -> list[str]:
        """Delete those of the blobs ``mine`` that no name reaches."""
        keep = self._reachable(self.refs().values())
        gone = []
        for d in sorted(mine - keep):
            p = self.blob_path(d)
            if p.exists():
                p.unlink()
                gone.append(d)
        return gone

    # reading layers
    def open_layer(self, desc: Descriptor, diff_id: str | None = None) -> Path:
        """A plain tar file for a layer blob, its digest verified (and, given ``diff_id``,
        the uncompressed bytes checked against the config's DiffID). The first bytes say how it
        is compressed, whatever its media type says (formats.compression); a compressed layer is
        decompressed once into ``<lab root>/tmp``, hashed as it is written."""
        with self.open_blob(desc) as r:
            kind = formats.compression(r.read(4))
            if kind == "none":
                while r.read(digest.CHUNK):      # reading it through verifies the digest
                    pass
        if kind == "none":
            if diff_id and desc.digest != diff_id:
                raise _diff_id_mismatch(desc, diff_id, desc.digest)
            return self.blob_path(desc.digest)
        out = lab.root() / "tmp" / f"{digest.encoded(desc.digest)}.tar"
        known = out.with_suffix(".diffid")
        if out.exists() and known.exists() and (not diff_id or known.read_text() == diff_id):
            return out
        out.parent.mkdir(exist_ok=True)
        tmp = out.with_suffix(f".{uuid.uuid4().hex}")
        try:
            with self.open_blob(desc) as r, formats.decompressed(r, kind) as src, open(tmp, "wb") as f, \
                    digest.HashingWriter(f) as dst:
                decompress(src, dst, out.parent, f"layer {desc.digest[:19]} ({kind}, {desc.size} bytes)")
            if diff_id and dst.digest != diff_id:
                raise _diff_id_mismatch(desc, diff_id, dst.digest)
            out.with_suffix(".diffid").write_text(dst.digest)
            tmp.rename(out)
        except Exception as e:                  # gzip.BadGzipFile, EOFError, zstandard.ZstdError ...
            if isinstance(e, LabError):
                raise
            raise StoreError(f"layer {desc.digest[:19]} is not valid {kind} ({e})",
                             "the image is broken: remove it (labkit image rm) and pull it again") from None
        finally:
            tmp.unlink(missing_ok=True)
        return out

    def flatten(self, name: str, dest: str | os.PathLike) -> Path:
        """Apply every layer of ``name``, base first, into ``dest``: the image's root filesystem."""
        dest = lab.inside(dest)
        img = self.image(name)
        for desc, diff_id in zip(img.layers, img.diff_ids):
            layer.apply(self.open_layer(desc, diff_id), dest)
        return dest

    # moving images between layouts
    def save(self, directory: str | os.PathLike, tag: str, name: str) -> Path:
        """Copy image ``name`` into the OCI layout ``directory`` (made if missing) as ``tag``."""
        dst = Layout(lab.inside(directory))
        copy(self, name, dst, tag)
        return dst.path

    def load(self, directory: str | os.PathLike, tag: str, name: str | None = None,
             platform: "formats.Platform | None" = None) -> Image:
        """Copy image ``tag`` of the OCI layout ``directory`` into the store as ``name``
        (``platform``'s image if ``tag`` names an index)."""
        img = copy(Layout(directory, create=False), tag, self, check_name(name or tag), check=self.check_layers,
                   platform=platform)
        return self.image(img.name)

    def check_layers(self, img: Image) -> None:
        """Before an image gets its name: every layer decompresses to its DiffID and is a safe
        tar (layer.validate). A pull or load that fails here leaves no name behind."""
        for d, diff_id in zip(img.layers, img.diff_ids):
            layer.validate(self.open_layer(d, diff_id))


def copy(src: Layout, src_name: str, dst: Layout, dst_name: str, check=None,
         platform: "formats.Platform | None" = None) -> Image:
    """Copy image ``src_name`` of layout ``src`` into layout ``dst`` as ``dst_name`` (what
    ``skopeo copy oci:A:x oci:B:y`` does): each blob ``dst`` lacks, verified as it is read,
    then ``check(image)`` if given, and only then the name. A name that points at an index
    copies ``platform``'s image (this machine's by default)."""
    refs = src.refs()
    if src_name not in refs:
        raise StoreError(f"{src.path} has no image tagged {src_name!r}",
                         f"tags there: {', '.join(sorted(refs)) or 'none'}")
    d = refs[src_name]
    d = Descriptor(d.media_type, d.digest, d.size)
    if d.media_type in formats.INDEXES:
        d = Descriptor.from_json(formats.select(src.read_json(d), platform or formats.Platform.host(),
                                                f"{src_name} in {src.path}"), "index entry")
    img = read_image(src, src_name, d)
    for desc in [*img.layers, img.config_desc, img.manifest_desc]:
        if not dst.claim_blob(desc.digest):
            with src.open_blob(desc) as r:
                dst.put_blob(r, desc.media_type, expect=desc.digest)
    if check:
        check(img)
    dst.set_ref(dst_name, Descriptor(img.manifest_desc.media_type, img.manifest_desc.digest, img.manifest_desc.size))
    return Image(dst_name, img.manifest_desc, img.manifest, img.config)
