"""Where an image's bytes go: what each layer stores, and what later layers make useless.

Like the tool *dive*: a file stored in one layer and changed or deleted in a later one
still ships with the image (every layer is downloaded whole), so its bytes are wasted;
and whatever was "deleted" can be read back from the older layer.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from . import layer
from .store import Store


@dataclass(frozen=True)
class Entry:
    """One regular file stored in one layer."""
    layer: int            # 0 is the base layer
    path: str
    size: int


@dataclass(frozen=True)
class Wasted:
    path: str
    layer: int            # the layer that stores the useless copy
    size: int
    why: str              # "overwritten in layer N" or "deleted in layer N"


@dataclass(frozen=True)
class Report:
    total: int            # bytes of all files in all layers
    wasted: list[Wasted]

    @property
    def wasted_bytes(self) -> int:
        return sum(w.size for w in self.wasted)

    @property
    def efficiency(self) -> float:
        """Share of the stored file bytes that the final tree still uses."""
        return 1 - self.wasted_bytes / self.total if self.total else 1.0


def layer_entries(store: Store, name: str) -> list[list[tarfile.TarInfo]]:
    """The tar headers of each layer of ``name``, base first."""
    out = []
    for desc in store.image(name).layers:
        with tarfile.open(store.open_layer(desc)) as t:
            out.append(t.getmembers())
    return out


def analyse(store: Store, name: str) -> Report:
    """Which stored bytes the final tree no longer uses, and why."""
    live: dict[str, Entry] = {}
    wasted, total = [], 0
    for i, members in enumerate(layer_entries(store, name)):
        for m in members:
            path = str(PurePosixPath(m.name))
            base = PurePosixPath(path).name
            if base == layer.OPAQUE:
                d = str(PurePosixPath(path).parent)
                gone = [p for p in live if p.startswith(d + "/")]
            elif base.startswith(layer.WHITEOUT):
                target = str(PurePosixPath(path).parent / base[len(layer.WHITEOUT):])
                gone = [p for p in live if p == target or p.startswith(target + "/")]
            else:
                gone = [path] if path in live else []
            for p in gone:
                e = live.pop(p)
                kind = "overwritten" if not base.startswith(layer.WHITEOUT) else "deleted"
                wasted.append(Wasted(p, e.layer, e.size, f"{kind} in layer {i}"))
            if m.isreg() and not base.startswith(layer.WHITEOUT):
                live[path] = Entry(i, path, m.size)
                total += m.size
    return Report(total, sorted(wasted, key=lambda w: -w.size))


def read_from_layer(store: Store, name: str, index: int, path: str) -> bytes:
    """The bytes of ``path`` as layer ``index`` of ``name`` stores them (even if deleted later)."""
    desc = store.image(name).layers[index]
    with tarfile.open(store.open_layer(desc)) as t:
        try:
            f = t.extractfile(path.lstrip("/"))
        except KeyError:
            f = None
        if f is None:
            raise layer.LayerError(f"layer {index} of {name} has no file {path}",
                                   "list its entries with waste.layer_entries(store, name)")
        return f.read()
