"""Lesson 08: the registry API before v2 (Docker up to 1.5, seed 004), as a read-only view of a
v2 registry's storage, so that its requests can be made and compared.

v1 had no manifests and no digests. A repository's tag named an **image id**, the name of the
top layer; every id had a JSON document (``id``, ``parent``) and a layer tar, and
``/v1/images/<id>/ancestry`` listed the ids down to the base. So a v1 client could know every
layer up front too; the Docker client of the day then fetched them one by one. What v2
changed is the names: a v2 blob is named by the sha256 of its bytes, so a client checks what
it got and a registry can share one blob between images; a v1 id was a random string (here
it is taken from the ChainID, as Docker's v1-compatibility code did, only to be stable), and
nothing told a client whether the bytes of ``/layer`` were the right ones.

Endpoints (GET only): ``/v1/repositories/<name>/tags``, ``/v1/images/<id>/ancestry``,
``/v1/images/<id>/json``, ``/v1/images/<id>/layer``. :func:`pull` is a v1 client.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..image import digest as dg
from .storage import Filesystem


@dataclass(frozen=True)
class V1Image:
    """One v1 image: a layer and its parent's id."""
    id: str
    parent: str | None
    layer: str            # the v2 blob digest holding its tar


def images(fs: Filesystem, repo: str | None = None) -> dict[str, dict[str, V1Image] | str]:
    """Scan the v2 storage: ``{"tags": {tag: top id}, "images": {id: V1Image}}`` for ``repo``
    (every repository when None). Ids are ChainIDs without their ``sha256:``."""
    tags, found = {}, {}
    repos = [repo] if repo else [str(p.parent.relative_to(fs.root / "repositories"))
                                 for p in (fs.root / "repositories").rglob("_manifests")]
    for r in repos:
        for tag in fs.tags(r) or []:
            manifest = json.loads(fs.blob_path(fs.resolve(r, tag)).read_bytes())
            if "layers" not in manifest:
                continue                                   # an index: v1 has no such thing
            config = json.loads(fs.blob_path(manifest["config"]["digest"]).read_bytes())
            ids = [c[7:] for c in dg.chain_ids(config["rootfs"]["diff_ids"])]
            for i, (vid, desc) in enumerate(zip(ids, manifest["layers"])):
                found[vid] = V1Image(vid, ids[i - 1] if i else None, desc["digest"])
            tags[tag] = ids[-1]
    return {"tags": tags, "images": found}


def ancestry(found: dict[str, V1Image], vid: str) -> list[str]:
    """The ids from ``vid`` down to the base, as /ancestry lists them."""
    out = [vid]
    while found[out[-1]].parent:
        out.append(found[out[-1]].parent)
    return out


def pull(address: str, repo: str, tag: str, dest: Path) -> list[tuple[str, int]]:
    """A v1 client: tags, ancestry, then for each image from the base up its json and its
    layer, saved as ``dest/<id>.tar``. Returns ``[(path, status)]`` in order. There is nothing
    to check a layer against: its id is not the digest of its bytes."""
    trace = []
    with httpx.Client(base_url=f"http://{address}", timeout=60) as http:
        def get(path):
            r = http.get(path)
            trace.append((path, r.status_code))
            r.raise_for_status()
            return r
        top = get(f"/v1/repositories/{repo}/tags").json()[tag]
        for vid in reversed(get(f"/v1/images/{top}/ancestry").json()):
            get(f"/v1/images/{vid}/json")
            (dest / f"{vid}.tar").write_bytes(get(f"/v1/images/{vid}/layer").content)
    return trace
