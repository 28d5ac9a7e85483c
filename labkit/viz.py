"""Pictures: graphviz for structure, matplotlib for measurements. Nothing here changes state.

Every picture is drawn from what was measured or read from disk a moment before, and
each function returns an object (a graphviz.Digraph, a matplotlib Figure) whose data a
check cell can assert on.
"""
from __future__ import annotations

from pathlib import Path

import os

import graphviz

from .overlay import Overlay, _is_whiteout, xattr

_STYLE = {"upper": "#fde2b8", "lower": "#cfe3f7", "merged": "#d9f2d0", "hidden": "#eeeeee"}



WIDTH_IN = 9        # inches: about 860 px, what a cell shows in a 1400-px window with the file browser open


def _digraph(name: str, graph_attr: dict | None = None, **kw) -> graphviz.Digraph:
    """A Digraph that graphviz scales down to WIDTH_IN inches wide when it is drawn wider
    (graph attribute ``size``), so no picture is clipped in JupyterLab."""
    return graphviz.Digraph(name, graph_attr={"size": f"{WIDTH_IN},100", **(graph_attr or {})}, **kw)

PER_ROW = 6         # entries per row in a layer's box: a wider row would be shrunk to fit WIDTH_IN


def overlay_stack(ov: Overlay, highlight: str | None = None, max_files: int = 12) -> graphviz.Digraph:
    """The stack as the kernel sees it: merged on top, then upper, then lowers (top first),
    one box under the other, each box's entries in rows of PER_ROW.

    Each top-level entry of merged gets an arrow to the layer entry that serves it; whiteouts
    are black, opaque directories dashed. ``highlight`` picks one path to draw in red (shown
    even when it lies deeper or past ``max_files``).
    """
    g = _digraph("overlay", graph_attr={"rankdir": "TB", "nodesep": "0.15", "ranksep": "0.3",
                                        "fontname": "Helvetica", "fontsize": "11"},
                 node_attr={"shape": "box", "style": "filled,rounded", "fontname": "Helvetica",
                            "fontsize": "10", "height": "0.3"})
    served = ov.serving_map() if ov.mounted else {}
    layers = ov.layers
    rows = [("merged", ov.merged, "merged")] + [(l.name, l.path, l.role) for l in layers]
    shown: list[list[str]] = []          # node ids per box, in order
    drawn: list[set[str]] = []           # the paths drawn in each box
    for i, (name, path, role) in enumerate(rows):
        with g.subgraph(name=f"cluster_{i}") as c:
            short = name if len(name) <= 24 else name[:12] + "…"      # a snapshot's 64-hex key
            title = {"merged": "merged (what processes see)", "upper": f"upperdir: {short}"}.get(
                role, f"lowerdir {i - (2 if ov.upperdir else 1)}: {short}")
            c.attr(label=title, style="filled", color="#999999", fillcolor="#fafafa")
            top = sorted({r.split("/")[0] for r in served}) if role == "merged" else _top_entries(path)
            there = highlight in served if role == "merged" else bool(highlight) and os.path.lexists(path / highlight)
            entries = _pick(top, highlight if there else None, max_files)
            ids = []
            for rel in entries:
                c.node(_id(i, rel), **_node_style(path / rel, rel, role, rel == highlight, ov.xattr_prefix))
                ids.append(_id(i, rel))
            if len(top) + (highlight not in top and there) > len(entries):
                ids.append(_id(i, "..."))
                c.node(ids[-1], f"... {len(top) + (highlight not in top and there) - len(entries)} more",
                       fillcolor="white")
            if not ids:
                ids.append(_id(i, ""))
                c.node(ids[-1], "(empty)", fillcolor="white", fontcolor="#777777")
            for a, b in zip(ids, ids[PER_ROW:]):              # wrap: each row sits under the last
                c.edge(a, b, style="invis")
            shown.append(ids)
            drawn.append(set(entries))
    for above, below in zip(shown, shown[1:]):                  # each box under the one before
        g.edge(above[len(above) - 1 - (len(above) - 1) % PER_ROW], below[0], style="invis")
    index = {l.name: i + 1 for i, l in enumerate(layers)}
    for rel in sorted(drawn[0]):
        layer = served.get(rel)
        if layer in index and rel in drawn[index[layer]]:
            red = rel == highlight
            g.edge(_id(0, rel), _id(index[layer], rel), color="red" if red else "#555555",
                   penwidth="2" if red else "1", constraint="false")
    return g


def _pick(names: list[str], highlight: str | None, limit: int) -> list[str]:
    """At most ``limit`` of ``names`` in order, always with ``highlight`` (and the top-level
    entry it lies in) among them."""
    must = [n for n in names if highlight and (n == highlight or highlight.startswith(n + "/"))]
    if highlight and highlight not in names:
        must.append(highlight)
    rest = [n for n in names if n not in must][:max(0, limit - len(must))]
    return sorted(set(rest) | set(must))


def _top_entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def _node_style(p: Path, label: str, role: str, highlight: bool, prefix: str) -> dict:
    style = {"label": label, "fillcolor": _STYLE[role]}
    if role != "merged" and _is_whiteout(p, prefix):
        style.update(label=f"{label}\\nwhiteout c 0/0", fillcolor="black", fontcolor="white")
    elif role != "merged" and p.is_dir() and xattr(p, prefix + "opaque") == b"y":
        style.update(label=f"{label}/\\nopaque", style="filled,dashed")
    elif p.is_dir():
        style["label"] = label + "/"
    if highlight:
        style.update(color="red", penwidth="2")
    return style


def _id(i: int, rel: str) -> str:
    return f"n{i}_{rel}".replace("/", "_").replace(".", "_dot_").replace(" ", "_")


def copy_up_plot(rows):
    """Copy-up time and upper-dir disk use against file size (rows of overlay.CopyUp)."""
    import matplotlib.pyplot as plt
    mib = [r.size / 2**20 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(mib, [r.open_write_s * 1e3 for r in rows], "o-", label="open for write (copy-up)")
    a.plot(mib, [r.open_rdonly_s * 1e3 for r in rows], "s-", label="open read-only")
    a.set(xlabel="lower file size (MiB)", ylabel="time to open (ms)", title="copy-up cost")
    a.legend(fontsize=8)
    b.plot(mib, [r.upper_bytes / 2**20 for r in rows], "o-", color="tab:orange", label="after open for write")
    b.plot(mib, [r.upper_before_write / 2**20 for r in rows], "s-", color="tab:green", label="after read-only open")
    b.set(xlabel="lower file size (MiB)", ylabel="upper dir disk use (MiB)", title="the whole file is copied")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- lesson 02: copy-on-write ------------------------------------------------------------------
def cow_pages(rows, title: str = "") -> graphviz.Digraph:
    """Page tables of parent and child pointing at physical frames, from measured rows
    (cow.PageRow). With PFNs (root) frames are named by number; without, a shared frame
    is one node and a copied page gets a frame of its own."""
    g = _digraph("cow", graph_attr={"rankdir": "LR", "nodesep": "0.08", "ranksep": "0.9",
                                            "fontname": "Helvetica", "fontsize": "11", "label": title},
                         node_attr={"shape": "box", "style": "filled", "fontname": "Helvetica",
                                    "fontsize": "10", "height": "0.25", "width": "0.9"})
    def frame(side, r):
        pfn = r.parent_pfn if side == "parent" else r.child_pfn
        if pfn is not None:
            return f"f{pfn:x}", f"frame {pfn:#x}"
        return (f"s{r.index}", f"frame of page {r.index}") if r.shared else (
            f"{side[0]}{r.index}", f"{side}'s copy of {r.index}")
    for side, colour in (("parent", "#cfe3f7"), ("child", "#fde2b8")):
        with g.subgraph(name=f"cluster_{side}") as c:
            c.attr(label=f"{side} page table", style="filled", fillcolor="#fafafa", color="#999999")
            for r in rows:
                c.node(f"{side}{r.index}", f"page {r.index}", fillcolor=colour)
    with g.subgraph(name="cluster_frames") as c:
        c.attr(label="physical memory", style="filled", fillcolor="#fafafa", color="#999999")
        seen = set()
        for r in rows:
            for side in ("parent", "child"):
                fid, label = frame(side, r)
                if fid not in seen:
                    seen.add(fid)
                    c.node(fid, label, fillcolor="#d9f2d0" if r.shared else "#f7cfcf")
    for r in rows:
        for side in ("parent", "child"):
            g.edge(f"{side}{r.index}", frame(side, r)[0], color="#555555" if r.shared else "#c62828")
    return g


def faults_plot(writes, faults):
    """Minor faults against pages written, with the line faults = writes."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(writes, faults, "o-", label="measured minor faults")
    ax.plot(writes, writes, "--", color="#999999", label="one fault per page")
    ax.set(xlabel="pages the child wrote", ylabel="minor faults", title="one write, one copy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def spawn_plot(rows):
    """fork(2) and posix_spawn(3) time against memory mapped (rows of cow.SpawnCost)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    mib = [r.mib for r in rows]
    ax.plot(mib, [r.fork_s * 1e3 for r in rows], "o-", label="fork()")
    ax.plot(mib, [r.posix_spawn_s * 1e3 for r in rows], "s-", label="posix_spawn()")
    ax.set(xlabel="memory touched by the parent (MiB)", ylabel="time to start a child (ms)",
           title="fork copies page tables, not pages")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def refcount_plot(story: dict):
    """MiB dirtied per scenario (cow.refcount_story)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 2.8))
    names = list(story)
    ax.barh(names, [story[n] for n in names], color="#e6a04b")
    ax.invert_yaxis()
    ax.set(xlabel="MiB the child made private", title="reference counts write to every object")
    fig.tight_layout()
    return fig


def meter_png(samples) -> bytes:
    """A small PNG of faults and Private_Dirty over time, for the live meter (cow.Sample)."""
    import io
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5, 2.6))
    ax = fig.subplots()
    t = [s.t for s in samples]
    ax.plot(t, [s.faults for s in samples], label="minor faults")
    ax.plot(t, [s.private_kib / 4 for s in samples], "--", label="Private_Dirty / 4 KiB")
    ax.set(xlabel="seconds", ylabel="pages", title="the child's writes: one fault, one private page each")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80)
    return out.getvalue()


# --- lesson 03: images sharing layers ------------------------------------------------------------
def image_graph(images) -> graphviz.Digraph:
    """Images (store.Image) and their layers: a layer stored once is drawn once, however
    many images use it, like a Git object shared by many commits."""
    g = _digraph("images", graph_attr={"rankdir": "BT", "fontname": "Helvetica", "nodesep": "0.3"},
                         node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled"})
    users: dict[str, int] = {}
    for img in images:
        for d in img.layers:
            users[d.digest] = users.get(d.digest, 0) + 1
    drawn: set[str] = set()
    for img in images:
        g.node(f"img_{img.name}", f"{img.name}\\nmanifest {img.manifest_desc.digest[7:19]}",
               shape="folder", fillcolor="#d9f2d0")
        parent = None
        for d in img.layers:
            nid = f"layer_{d.digest[7:19]}"
            if nid not in drawn:          # a shared layer is one node, with one edge to its parent
                drawn.add(nid)
                g.node(nid, f"layer {d.digest[7:19]}\\n{_size(d.size)}", shape="box",
                       fillcolor="#cfe3f7" if users[d.digest] > 1 else "#fde2b8")
                if parent:
                    g.edge(nid, parent, style="dashed", color="#999999")
            parent = nid
        g.edge(f"img_{img.name}", parent)
    return g


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# --- lesson 04: storage drivers ------------------------------------------------------------------
def drivers_plot(costs: dict):
    """Time and disk against containers created, one line per driver (lists of drivers.Cost)."""
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    styles = ["o-", "s--", "^:", "D-.", "v-"]      # lines that coincide (overlay, btrfs: ~0 MiB) stay visible
    for i, (name, rows) in enumerate(costs.items()):
        n = [c.containers for c in rows]
        style = dict(markersize=8 - 1.5 * i, linewidth=2.2 - 0.3 * i, alpha=0.85)
        a.plot(n, [c.seconds * 1e3 for c in rows], styles[i % len(styles)], label=name, **style)
        b.plot(n, [c.disk_bytes / 2**20 for c in rows], styles[i % len(styles)], label=name, **style)
    a.set(xlabel="containers", ylabel="total time to create (ms)", title="time")
    b.set(xlabel="containers", ylabel="disk used (MiB)", title="disk")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- lesson 05: namespaces and cgroups -----------------------------------------------------------
def namespace_graph(processes: dict) -> graphviz.Digraph:
    """Processes ``{label: ns.links() dict}`` pointing at the namespaces they are in; a
    namespace shared by several processes is one node (namespaces(7): same inode, same one).
    Blue: shared; red: a later process's own; grey: the first process's (the notebook's) that
    the others left."""
    g = _digraph("ns", graph_attr={"rankdir": "LR", "fontname": "Helvetica", "nodesep": "0.1"},
                         node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled"})
    users: dict = {}
    for label, links in processes.items():
        for t, inode in links.items():
            users.setdefault((t, inode), []).append(label)
    for label in processes:
        g.node(f"p_{label}", label, shape="box", fillcolor="#fde2b8")
    first = next(iter(processes))          # the notebook: whose namespaces the others may leave
    for (t, inode), who in sorted(users.items()):
        colour = "#cfe3f7" if len(who) > 1 else ("#e0e0e0" if who == [first] else "#f7cfcf")
        g.node(f"{t}_{inode}", f"{t}:[{inode}]", shape="ellipse", fillcolor=colour)
        for label in who:
            g.edge(f"p_{label}", f"{t}_{inode}", color="#777777")
    return g


def memory_plot(trace):
    """Memory charged to the group against time, the limit, and the OOM kill."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2))
    t = [s[0] for s in trace.samples]
    ax.plot(t, [s[1] / 2**20 for s in trace.samples], label="memory charged to the group")
    ax.axhline(trace.limit / 2**20, color="red", linestyle="--", label="limit")
    if trace.killed_by:
        ax.annotate(f"{trace.killed_by} (oom_kill = {trace.oom_kills})", (t[-1], trace.samples[-1][1] / 2**20),
                    xytext=(0.35, 0.35), textcoords="axes fraction", arrowprops={"arrowstyle": "->"})
    ax.set(xlabel="seconds", ylabel="MiB", title="a memory limit ends in an OOM kill")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def cpu_plot(trace):
    """CPU share and throttled periods of a spinning child under a quota."""
    import matplotlib.pyplot as plt
    fig, a = plt.subplots(figsize=(6, 3.2))
    t = [s[0] for s in trace.samples]
    a.plot(t, [s[1] for s in trace.samples], "o-", label="CPU share")
    a.axhline(trace.cpus, color="red", linestyle="--", label="quota")
    a.set(xlabel="seconds", ylabel="CPUs used", ylim=(0, 1.05), title="a CPU quota throttles")
    b = a.twinx()
    b.plot(t, [s[2] for s in trace.samples], "s:", color="tab:gray", label="throttled periods")
    b.set_ylabel("throttled periods (total)")
    a.legend(fontsize=8, loc="upper left")
    b.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def rootfs_parts(c) -> graphviz.Digraph:
    """A container's root filesystem: image layers, the init layer, the read-write layer and
    its volumes, drawn from its directory (container.Container)."""
    g = _digraph("rootfs", graph_attr={"rankdir": "BT", "fontname": "Helvetica"},
                         node_attr={"shape": "box", "style": "filled", "fontname": "Helvetica", "fontsize": "10"})
    prev = None
    for i, d in enumerate(reversed(c.lowerdirs[1:])):
        g.node(f"img{i}", f"image layer {d.name[:12]}\\nread-only", fillcolor="#cfe3f7")
        if prev:
            g.edge(prev, f"img{i}")
        prev = f"img{i}"
    init = ", ".join(sorted(p.name for p in (c.init / "etc").iterdir()))
    g.node("init", f"init layer\\n{init}\\nread-only, not committed", fillcolor="#e8d9f7")
    g.edge(prev, "init")
    changed = len(list(c.upper.rglob("*")))
    g.node("rw", f"read-write layer\\n{changed} entries\\ncommitted by `commit`", fillcolor="#fde2b8")
    g.edge("init", "rw")
    g.node("root", f"container /  ({c.cfg.hostname})", shape="folder", fillcolor="#d9f2d0")
    g.edge("rw", "root")
    for i, v in enumerate(c.cfg.volumes):
        host, ctr = v.split(":", 1)
        g.node(f"vol{i}", f"volume {ctr}\\nhost dir, not committed", fillcolor="#eeeeee", shape="cylinder")
        g.edge(f"vol{i}", "root", style="dashed", label="bind")
    return g


# --- lesson 07: snapshots and squashing -------------------------------------------------------
def snapshot_tree(infos, names: dict | None = None) -> graphviz.Digraph:
    """Committed and active snapshots (snapshot.Info) as a tree, children above parents."""
    names = names or {}
    g = _digraph("snapshots", graph_attr={"rankdir": "BT", "fontname": "Helvetica"},
                         node_attr={"shape": "box", "style": "filled", "fontname": "Helvetica", "fontsize": "10"})
    colour = {"committed": "#cfe3f7", "active": "#fde2b8", "view": "#eeeeee"}
    short = lambda k: names.get(k, k[7:19] if k.startswith("sha256:") else k[:24])
    nid = lambda k: "s_" + k.replace(":", "_").replace("/", "_")
    for i in infos:
        g.node(nid(i.key), f"{short(i.key)}\\n{i.kind}", fillcolor=colour[i.kind])
        if i.parent:
            g.edge(nid(i.key), nid(i.parent))
    return g


def squash_plot(rows):
    """Squash time against the number of layers, both methods (rows of squash.measure)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    n = [r["layers"] for r in rows]
    ax.plot(n, [r["merge"] for r in rows], "o-", label="(a) merge layer by layer")
    ax.plot(n, [r["diff"] for r in rows], "s-", label="(b) diff final against base")
    ax.set(xlabel="layers squashed", ylabel="seconds", title="squash time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- lesson 08: registries ---------------------------------------------------------------------
def journey(stages, per_row: int = 3) -> graphviz.Digraph:
    """The capstone's path, left to right in rows of ``per_row`` (a long chain in one row would be
    shrunk to unreadable text): ``stages`` is a list of (what, detail, how it got there) read from
    the run a moment before, e.g. ("pulled", "manifest sha256:ab12...", "pull")."""
    g = _digraph("journey", graph_attr={"rankdir": "TB", "fontname": "Helvetica", "nodesep": "0.5",
                                        "ranksep": "0.45", "newrank": "true"},
                 node_attr={"shape": "box", "style": "filled,rounded", "fontname": "Helvetica",
                            "fontsize": "10", "fillcolor": _STYLE["lower"], "width": "1.8"})
    for start in range(0, len(stages), per_row):
        with g.subgraph() as row:
            row.attr(rank="same")
            for i in range(start, min(start + per_row, len(stages))):
                what, detail, _ = stages[i]
                row.node(f"s{i}", f"{what}\n{detail}")
        if start:                        # keep each row's first stage under the previous row's first
            g.edge(f"s{start - per_row}", f"s{start}", style="invis", weight="10")
    for i in range(1, len(stages)):
        wraps = {} if i % per_row else {"constraint": "false"}        # into the next row
        g.edge(f"s{i - 1}", f"s{i}", label=stages[i][2], fontname="Helvetica", fontsize="9", **wraps)
    return g


def link_graph(client, server, delay: float) -> graphviz.Digraph:
    """The lesson 08 link (registry.link.Side for each end): two network namespaces, the
    veth pair between them with its addresses and qdisc, the process on each side."""
    g = _digraph("link", graph_attr={"rankdir": "LR", "fontname": "Helvetica", "fontsize": "11"},
                         node_attr={"shape": "box", "style": "filled,rounded", "fontname": "Helvetica",
                                    "fontsize": "10"})
    for key, side, proc in (("c", client, "labkit client\n(pull, 1 or 4 at once)"),
                            ("s", server, f"registry\n(+{delay * 1000:.0f} ms per answer)")):
        with g.subgraph(name=f"cluster_{key}") as c:
            c.attr(label=f"network namespace {side.netns}", style="filled", color="#999999", fillcolor="#fafafa")
            c.node(f"{key}p", proc, fillcolor=_STYLE["merged"])
            qdisc = side.qdisc.split(" root")[0].replace("qdisc ", "") if side.qdisc else "no qdisc"
            rate = side.qdisc.split(" rate ")[1].split()[0] if " rate " in side.qdisc else "unshaped"
            c.node(f"{key}v", f"{side.device}\n{side.ip}/30\n{qdisc.split()[0]} {rate}", fillcolor=_STYLE["lower"])
            c.edge(f"{key}p", f"{key}v", dir="both") if key == "c" else c.edge(f"{key}v", f"{key}p", dir="both")
    g.edge("cv", "sv", label="veth pair", dir="both", penwidth="2")
    return g


def pull_gantt(traces: dict):
    """One row per request of each pull (client.Event), from its start to its end."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(traces), 1, figsize=(8, 1.2 + 0.35 * max(len(t) for t in traces.values()) * len(traces) / 2),
                             sharex=True)
    axes = axes if len(traces) > 1 else [axes]
    for ax, (par, trace) in zip(axes, traces.items()):
        t0 = min(e.start for e in trace)
        for i, e in enumerate(trace):
            ax.barh(i, e.end - e.start, left=e.start - t0, color="#4c72b0" if "layer" in e.what else "#dd8452")
            ax.text(e.end - t0, i, f" {e.what}", va="center", fontsize=7)
        ax.set_yticks([])
        ax.set_xlim(0, (max(e.end for e in trace) - t0) * 1.3)     # room for the last labels
        ax.set_title(f"parallel={par}: {max(e.end for e in trace) - t0:.2f} s", fontsize=9)
    axes[-1].set_xlabel("seconds since the manifest request")
    fig.tight_layout()
    return fig


# --- every lesson: the code behind an experiment --------------------------------------------------
def behind(*functions):
    """The source of the labkit functions an experiment ran, the system calls in plain view,
    to read beside the result (inspect.getsource, shown with colours by IPython's Code)."""
    import inspect
    from IPython.display import Code
    return Code("\n\n".join(inspect.getsource(f) for f in functions), language="python")
