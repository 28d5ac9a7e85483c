"""Lessons 03, 06 and 07: new images from old ones, as go-containerregistry's ``mutate`` does.

An image is a config and a manifest naming layers. Making a new one never copies a layer:
it writes a new config (the old DiffIDs plus the new ones, the old history plus new
entries) and a new manifest (the old layer descriptors plus the new ones), and names it.
The base's layers are shared, like Git objects (image-spec config.md, manifest.md).
"""
from __future__ import annotations

import os
from pathlib import Path

from . import formats
from .store import CONFIG, EPOCH, MANIFEST, Descriptor, Image, Store, StoreError, check_name


def commit(name: str, layers: list[tuple[Descriptor, str]], history: list[dict], config: dict | None = None,
           base: Image | None = None, *, store: Store | None = None) -> Image:
    """Write config and manifest for ``base``'s layers plus ``layers`` [(descriptor, DiffID)]
    and name the result. ``history`` entries are appended to the base's; ``config`` entries
    are merged into the base's ``config``."""
    store = store or Store()
    check_name(name)
    here = formats.Platform.host()
    cfg = dict(base.config) if base else {"architecture": here.architecture, "os": "linux", "created": EPOCH,
                                          **({"variant": here.variant} if here.variant else {}),
                                          "config": {"Env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin"]}}
    if config:
        cfg["config"] = {**cfg.get("config", {}), **config}
    cfg["rootfs"] = {"type": "layers", "diff_ids": (base.diff_ids if base else []) + [d for _, d in layers]}
    cfg["history"] = (base.history if base else []) + [{"created": EPOCH, **h} for h in history]
    if history and "created" in history[-1]:
        cfg["created"] = history[-1]["created"]       # the image is as new as its last step
    cfg_desc = store.put_json(cfg, CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": cfg_desc.to_json(),
                "layers": [d.to_json() for d in (base.layers if base else [])] + [d.to_json() for d, _ in layers]}
    store.set_ref(name, store.put_json(manifest, MANIFEST))
    return store.image(name)


def import_rootfs(rootfs: str | os.PathLike, name: str, created_by: str = "", config: dict | None = None,
                  *, store: Store | None = None) -> Image:
    """A one-layer image from a directory tree."""
    store = store or Store()
    desc, diff = store.add_layer_dir(rootfs)
    return commit(name, [(desc, diff)], [{"created_by": created_by or f"import {Path(rootfs).name}"}],
                  config=config, store=store)


def add_layer(base: str, directory: str | os.PathLike, name: str, created_by: str,
              *, store: Store | None = None) -> Image:
    """A new image: ``base``'s layers (shared, not copied) plus ``directory`` as a layer."""
    store = store or Store()
    desc, diff = store.add_layer_dir(directory)
    return commit(name, [(desc, diff)], [{"created_by": created_by}], base=store.image(base), store=store)


def rebase(name: str, old_base: str, new_base: str, new_name: str, *, store: Store | None = None) -> Image:
    """``git rebase`` for images (what ``crane rebase`` does): the layers ``name`` added above
    ``old_base``, the very same blobs, put on top of ``new_base`` (e.g. a patched busybox).
    Their DiffIDs stay; their ChainIDs change, since a ChainID covers every layer below.
    Sound only when those layers do not depend on what changed in the base: a layer is a
    changeset, applied to whatever lies below it, and nothing checks that it still fits."""
    store = store or Store()
    img, old, new = store.image(name), store.image(old_base), store.image(new_base)
    n = len(old.layers)
    if img.chain_ids[:n] != old.chain_ids:
        raise StoreError(f"{old_base} is not a base of {name}: their first {n} layers differ",
                         "rebase from the image the Dockerfile started FROM")
    upper = list(zip(img.layers[n:], img.diff_ids[n:]))
    steps = img.history[len(old.history):] + [{"created_by": f"rebase from {old_base} onto {new_base}",
                                               "empty_layer": True}]
    return commit(new_name, upper, steps, config=img.config.get("config", {}), base=new, store=store)
