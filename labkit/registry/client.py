"""Lesson 08: push and pull, the v2 way (seed 001): the manifest first, then layers in
parallel, each verified by its sha256; an interrupted layer resumes with a Range request and
a failed layer is retried alone. Push goes layers, config, manifest, skipping blobs the
registry has. httpx does HTTP; what this module adds is the protocol.

    pull("127.0.0.1:5000/lab/busybox:v1", name="busybox-copy", parallel=4)
    push("busybox", "127.0.0.1:5000/lab/busybox:v1")

Every request is appended to ``trace`` (if given) with its start and end time, which is what
the lesson's timeline (Gantt chart) draws.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from .. import lab
from ..errors import LabError
from ..image import digest as dg, formats, store as st
from .auth import BearerAuth

ACCEPT = formats.ACCEPT          # every manifest and index type labkit reads
CHUNK = 1 << 20


class RegistryError(LabError):
    """The registry said no, or the bytes it sent were not what was asked for."""


@dataclass
class Event:
    what: str             # "manifest", "config", "layer 2/5" ...
    method: str
    url: str
    start: float
    end: float = 0.0
    status: int = 0
    bytes: int = 0


@dataclass
class Ref:
    """HOST:PORT/REPO:TAG or HOST:PORT/REPO@sha256:HEX (distribution's reference grammar);
    ``tag`` is the tag or the digest, whichever the manifest is asked for by."""
    host: str
    repo: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> "Ref":
        m = re.fullmatch(r"([^/]+)/([^@]+?)(?::([\w][\w.-]{0,127}))?(?:@(sha256:[0-9a-f]{64}))?", text)
        if not m or ":" not in m.group(1) and "." not in m.group(1) and m.group(1) != "localhost":
            raise RegistryError(f"{text!r} is not HOST:PORT/REPO:TAG or HOST:PORT/REPO@sha256:DIGEST",
                                "write it like 127.0.0.1:5000/lab/busybox:v1")
        return cls(m.group(1), m.group(2), m.group(4) or m.group(3) or "latest")

    @property
    def by_digest(self) -> bool:
        return self.tag.startswith("sha256:")


@dataclass
class Session:
    """One registry, with bearer-token auth done by :class:`auth.BearerAuth`. ``transport``
    is an httpx transport to send through (lesson 08 uses ``link.Cut`` to break a download)."""
    host: str
    user: str | None = None
    password: str | None = None
    trace: list | None = None
    transport: httpx.BaseTransport | None = None
    bars: dict = field(default_factory=dict)         # {what: tqdm} when pull(progress=True)

    def __post_init__(self):
        self.http = httpx.Client(base_url=f"http://{self.host}", timeout=60, follow_redirects=True,
                                 auth=BearerAuth(self.user, self.password), transport=self.transport)

    def request(self, method: str, path: str, what: str = "", **kw) -> httpx.Response:
        """Send one request; it goes into ``trace``, a cut connection as status -1."""
        ev = Event(what or path, method, path, time.monotonic())
        try:
            r = self.http.request(method, path, **kw)
            ev.status, ev.bytes = r.status_code, len(r.content)
            return r
        except httpx.TransportError:
            ev.status = -1
            raise
        finally:
            ev.end = time.monotonic()
            if self.trace is not None:
                self.trace.append(ev)

    def close(self) -> None:
        self.http.close()


def _unreachable(host: str, e: httpx.TransportError) -> RegistryError:
    return RegistryError(f"cannot reach the registry at {host} ({type(e).__name__}: {e})",
                         "is it running? start one with labkit registry serve --addr HOST:PORT --root DIR")


def _check(r: httpx.Response, what: str, ok=(200,)) -> httpx.Response:
    if r.status_code not in ok:
        try:
            r.read()                     # a streamed error response: read its JSON body
        except httpx.HTTPError:
            pass
        try:
            err = r.json()["errors"][0]
            detail = f"{err['code']}: {err['message']}"
        except (ValueError, KeyError, IndexError, TypeError):
            detail = r.text[:200]
        raise RegistryError(f"{what} failed with HTTP {r.status_code} ({detail})",
                            "see the registry's log; `labkit registry serve` prints every request")
    return r


# --- pull ----------------------------------------------------------------------------------
def pull(ref: str, name: str | None = None, parallel: int = 4, user=None, password=None,
         trace: list | None = None, retries: int = 3, transport: httpx.BaseTransport | None = None,
         progress: bool = False, *, store: st.Store | None = None, platform: str | None = None) -> st.Image:
    """Pull ``ref`` (a tag or ``@sha256:`` digest) into ``store`` (the lab's by default) as
    ``name``. ``parallel=1`` is the v1-style serial pull. An index (manifest list) gives
    ``platform``'s image ("linux/arm64"; this machine's by default). Every layer is checked
    (digest, DiffID, a safe tar) before the name is written: a refused pull names nothing.
    ``progress``: one tqdm bar per blob (a widget in Jupyter, text in a terminal)."""
    r = Ref.parse(ref)
    want = formats.Platform.parse(platform) if platform else formats.Platform.host()
    store = store or st.Store()
    name = st.check_name(name or r.repo.split("/")[-1])
    s = Session(r.host, user, password, trace, transport)
    try:
        body, mtype, manifest, cfg, layers = _manifest(s, r, want)
        jobs = [("config", cfg)] + [(f"layer {i + 1}/{len(layers)}", d) for i, d in enumerate(layers)]
        with _downloads(s, r, jobs, parallel, retries, progress) as files:
            for (what, desc), f in zip(jobs, files):
                with open(f, "rb") as src:
                    store.put_blob(src, desc.media_type, expect=desc.digest)
        mdesc = store.put_bytes(body, mtype)
        img = st.read_image(store, name, mdesc)
        store.check_layers(img)
        store.set_ref(name, mdesc)
        return store.image(name)
    except httpx.TransportError as e:
        raise _unreachable(r.host, e) from None
    finally:
        s.close()


def pull_last_layer(ref: str, user=None, password=None, trace: list | None = None, retries: int = 3,
                    transport: httpx.BaseTransport | None = None) -> Path:
    """Fetch only the top layer of ``ref`` (seed 004: a build's output is its last layer) into
    ``<lab root>/tmp``, verified; returns the file. Nothing enters the store."""
    r = Ref.parse(ref)
    s = Session(r.host, user, password, trace, transport)
    try:
        _, _, _, _, layers = _manifest(s, r, formats.Platform.host())
        if not layers:
            raise RegistryError(f"{ref} has no layers", "pull an image, not an artifact")
        with _downloads(s, r, [(f"layer {len(layers)}/{len(layers)}", layers[-1])], 1, retries, False) as files:
            out = lab.root() / "tmp" / f"{dg.encoded(layers[-1].digest)}.layer"
            files[0].rename(out)
        return out
    except httpx.TransportError as e:
        raise _unreachable(r.host, e) from None
    finally:
        s.close()


def _manifest(s: Session, r: Ref, platform: formats.Platform):
    """The image manifest ``r`` names: (bytes, media type, JSON, config, layers). An index is
    followed to ``platform``'s manifest, fetched by digest. Refused in one line: a body whose
    digest is not the one asked for or announced, an artifact, foreign or unknown layers."""
    body, mtype, doc = _get_manifest(s, r)
    if mtype in formats.INDEXES or (doc.get("manifests") is not None and "config" not in doc):
        entry = formats.select(doc, platform, f"{r.repo}:{r.tag}")
        r = Ref(r.host, r.repo, dg.validate(entry.get("digest")))
        body, mtype, doc = _get_manifest(s, r)
    if mtype not in formats.MANIFESTS:
        raise RegistryError(f"{r.repo}:{r.tag} is a {mtype}, not an image manifest",
                            "labkit reads OCI and Docker schema 2 images and indexes")
    formats.check_image_manifest(doc, mtype, f"{r.repo}:{r.tag}")
    try:
        layers = [st.Descriptor.from_json(d) for d in doc.get("layers", [])]
        return body, mtype, doc, st.Descriptor.from_json(doc["config"]), layers
    except (AttributeError, KeyError, TypeError) as e:
        raise RegistryError(f"the manifest of {r.repo}:{r.tag} is not an image manifest ({type(e).__name__}: {e})",
                            "the registry holds something else under this tag; check it with skopeo inspect --raw") from None


def _get_manifest(s: Session, r: Ref) -> tuple[bytes, str, dict]:
    """GET one manifest or index: (bytes, media type, JSON object). Its digest must be the one
    asked for (by digest) and the one the registry announces (Docker-Content-Digest). A body
    over 4 MiB is refused while it arrives, as distribution refuses to store one (CVE-2017-11468)."""
    what = f"the manifest of {r.repo}{'@' if r.by_digest else ':'}{r.tag}"
    ev = Event("manifest", "GET", f"/v2/{r.repo}/manifests/{r.tag}", time.monotonic())
    with s.http.stream("GET", ev.url, headers={"Accept": ACCEPT}) as resp:
        _check(resp, f"GET manifest {r.repo}:{r.tag}")
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > st.MAX_JSON:
                raise RegistryError(f"{what} is larger than {st.MAX_JSON >> 20} MiB; it was not read further",
                                    "a real manifest is a few KiB: the registry is broken or hostile")
    ev.end, ev.status, ev.bytes = time.monotonic(), resp.status_code, len(body)
    if s.trace is not None:
        s.trace.append(ev)
    body = bytes(body)
    mdigest = dg.of_bytes(body)
    if resp.headers.get("Docker-Content-Digest", mdigest) != mdigest:
        raise RegistryError(f"the manifest hashes to {mdigest}, the registry says "
                            f"{resp.headers['Docker-Content-Digest']}", "the registry or the network changed it")
    if r.by_digest and mdigest != r.tag:
        raise RegistryError(f"{what} hashes to {mdigest}", "the registry sent another manifest than the one asked for")
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise RegistryError(f"{what} is not an image manifest ({type(e).__name__}: {e})",
                            "the registry holds something else under this tag; check it with skopeo inspect --raw") from None
    mtype = doc.get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0] or st.MANIFEST
    return body, mtype, doc


@contextlib.contextmanager
def _downloads(s: Session, r: Ref, jobs: list, parallel: int, retries: int, progress: bool):
    """Fetch ``jobs`` [(what, descriptor)] into a scratch dir under ``<lab root>/tmp``; yields
    the files in job order; the dir is removed afterwards. ``parallel`` counts layers, like
    docker's max-concurrent-downloads; the config (a few hundred bytes) travels beside them,
    except in the serial pull."""
    work = lab.fresh_dir(lab.root() / "tmp" / f"pull-{uuid.uuid4().hex[:8]}")
    try:
        if progress:
            s.bars = {what: tqdm(total=d.size, desc=what, unit="B", unit_scale=True, position=i, leave=True)
                      for i, (what, d) in enumerate(jobs)}
        extra = 1 if parallel > 1 and jobs[0][0] == "config" else 0
        with ThreadPoolExecutor(max_workers=max(1, parallel) + extra) as pool:
            yield list(pool.map(lambda j: _fetch(s, r, j[0], j[1], work, retries), jobs))
    finally:
        for bar in s.bars.values():
            bar.close()
        lab.remove_tree(work)


def _fetch(s: Session, r: Ref, what: str, desc: st.Descriptor, work: Path, retries: int) -> Path:
    """Download one blob, resuming with Range after a cut, verifying its digest at the end."""
    out = work / dg.encoded(desc.digest)
    bar = s.bars.get(what)
    for attempt in range(retries + 1):
        have = out.stat().st_size if out.exists() else 0
        if bar is not None:
            bar.n = have                 # a resumed layer's bar continues where the cut left it
            bar.refresh()
        if have and have == desc.size and dg.of_file(out)[0] == desc.digest:
            return out                   # the cut came after the last byte: nothing to resume
        headers = {"Range": f"bytes={have}-"} if have else {}
        ev = Event(what + (f" (resume at {have})" if have else ""), "GET", f"/v2/{r.repo}/blobs/{desc.digest}",
                   time.monotonic())
        try:
            with s.http.stream("GET", f"/v2/{r.repo}/blobs/{desc.digest}", headers=headers) as resp:
                _check(resp, f"GET {what}", ok=(200, 206))
                mode = "ab" if resp.status_code == 206 else "wb"
                h = _hash_of(out) if mode == "ab" else hashlib.sha256()   # hash as the bytes arrive
                with open(out, mode) as f:
                    for chunk in resp.iter_bytes():      # as it arrives: a cut keeps what came
                        if f.tell() + len(chunk) > desc.size:
                            f.close()
                            out.unlink()
                            raise RegistryError(f"{what} is larger than the {desc.size} bytes its descriptor "
                                                "says; the download was stopped there and discarded",
                                                "the registry is broken or hostile: do not pull from it")
                        f.write(chunk)
                        h.update(chunk)
                        ev.bytes += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            ev.status = resp.status_code
            if resp.history:                 # a redirect: the bytes came from another server
                ev.what += f" (via {resp.history[0].status_code} to {resp.url.host}:{resp.url.port})"
        except httpx.TransportError:
            ev.status = -1
            if attempt == retries:
                raise RegistryError(f"{what} failed {retries + 1} times", "check the network; pull again to resume")
            continue
        finally:
            ev.end = time.monotonic()
            if s.trace is not None:
                s.trace.append(ev)
        got, size = "sha256:" + h.hexdigest(), out.stat().st_size
        if got == desc.digest and size == desc.size:
            return out
        out.unlink()
        if attempt == retries:
            raise RegistryError(f"{what} arrived as {got}, not {desc.digest}",
                                "the registry or the network corrupts data; it was discarded")
    raise RegistryError(f"{what} could not be fetched", "pull again")


def _pieces(f, n: int, piece: int = 1 << 16):
    """Yield the next ``n`` bytes of ``f`` in pieces of at most ``piece`` bytes."""
    while n > 0:
        data = f.read(min(n, piece))
        if not data:
            raise RegistryError("the blob ended early while pushing", "the store is damaged: labkit image rm it")
        n -= len(data)
        yield data


def send_blob(s: Session, what: str, desc: st.Descriptor, loc: str, chunk: int, retries: int,
               store: st.Store) -> str:
    """PATCH the blob to the upload at ``loc`` in chunks of ``chunk`` bytes; returns the last
    Location. After a cut, ask the registry what it has (GET on the upload: 204 with
    ``Range: 0-<last byte>``, distribution spec "Get Blob Upload Status") and go on from there;
    a Range of ``0-0`` is read as nothing stored (the spec's form cannot tell 0 from 1 byte).
    A 416 means the registry holds other than we were told (a busy server stored the cut
    chunk's bytes after answering the status): ask again, as after a cut."""
    offset, cuts = 0, 0
    f = store.open_blob(desc)
    try:
        while offset < desc.size:
            n = min(chunk, desc.size - offset)
            try:
                # the chunk is streamed from the file in small pieces, never held whole
                resp = s.request("PATCH", loc, f"{what} {offset}+{n}", content=_pieces(f, n),
                                 headers={"Content-Range": f"{offset}-{offset + n - 1}",
                                          "Content-Length": str(n),
                                          "Content-Type": "application/octet-stream"})
                if resp.status_code != 416 or cuts >= retries:
                    _check(resp, f"PATCH {what}", ok=(202,))
                    loc, offset = resp.headers["Location"], offset + n
                    continue
            except httpx.TransportError:
                if cuts >= retries:
                    raise
            cuts += 1
            loc, offset = _upload_status(s, what, loc)
            f.close()
            f = store.open_blob(desc)            # read up to the offset again, so the digest
            for _ in _pieces(f, offset):         # check at the end still sees every byte
                pass
        f.read()                     # at the end: the store checks the blob's digest
    finally:
        f.close()
    return loc


def _upload_status(s: Session, what: str, loc: str) -> tuple[str, int]:
    """GET the upload's status: its Location and the offset of the first byte it lacks."""
    status = _check(s.request("GET", loc, f"status {what}"), f"upload status of {what}", ok=(204,))
    end = int(status.headers.get("Range", "0-0").split("-")[1])
    return status.headers.get("Location", loc), end + 1 if end else 0


def _hash_of(path: Path):
    """A sha256 object fed with what is already on disk (the part before a resume)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            h.update(data)
    return h


# --- push ----------------------------------------------------------------------------------
def push(name: str, ref: str, user=None, password=None, trace: list | None = None,
         chunk: int = 4 << 20, mount_from: str | None = None, retries: int = 3,
         transport: httpx.BaseTransport | None = None, *, store: st.Store | None = None) -> str:
    """Push image ``name`` of ``store`` (the lab's by default) to ``ref``: blobs the registry
    lacks (chunked, a cut chunk resumed), then the manifest. Returns the manifest digest."""
    r = Ref.parse(ref)
    store = store or st.Store()
    s = Session(r.host, user, password, trace, transport)
    try:
        img = store.image(name)
        for what, desc in [(f"layer {i + 1}/{len(img.layers)}", d) for i, d in enumerate(img.layers)] + \
                          [("config", img.config_desc)]:
            head = s.request("HEAD", f"/v2/{r.repo}/blobs/{desc.digest}", f"HEAD {what}")
            if head.status_code == 200:
                continue                                       # the registry has it: skip
            if mount_from:
                m = s.request("POST", f"/v2/{r.repo}/blobs/uploads/", f"mount {what}",
                              params={"mount": desc.digest, "from": mount_from})
                if m.status_code == 201:
                    continue
                loc = _check(m, f"start upload of {what}", ok=(202,)).headers["Location"]
            else:
                loc = _check(s.request("POST", f"/v2/{r.repo}/blobs/uploads/", f"start {what}"),
                             f"start upload of {what}", ok=(202,)).headers["Location"]
            loc = send_blob(s, what, desc, loc, chunk, retries, store)
            # keep the query the registry put in Location (docker-registry keeps its upload
            # state there) and add the digest to it
            sep = "&" if "?" in loc else "?"
            _check(s.request("PUT", f"{loc}{sep}digest={desc.digest.replace(':', '%3A')}", f"finish {what}"),
                   f"PUT {what}", ok=(201,))
        with store.open_blob(img.manifest_desc) as f:
            body = f.read()
        _check(s.request("PUT", f"/v2/{r.repo}/manifests/{r.tag}", "manifest", content=body,
                         headers={"Content-Type": img.manifest_desc.media_type}), "PUT manifest", ok=(201,))
        return img.manifest_desc.digest
    except httpx.TransportError as e:
        raise _unreachable(r.host, e) from None
    finally:
        s.close()

