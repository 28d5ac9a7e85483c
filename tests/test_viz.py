"""The pictures draw what was measured: the lessons' check cells assert the numbers (what a
learner can read); these tests check that each picture shows those numbers as its caption says."""
from types import SimpleNamespace

from labkit import viz
from labkit.cow import PageRow


def _lines_with(source: str, colour: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if colour in line]


def test_cow_pages_draws_a_copied_page_with_its_own_frame_and_red_arrows():
    rows = [PageRow(i, 0x100 + i, 0x100 + i if i != 3 else 0x999, i == 3, i == 3, 1 if i == 3 else 2)
            for i in range(6)]
    src = viz.cow_pages(rows, "after").source
    red = _lines_with(src, "#c62828")
    assert len(red) == 2 and all(line.startswith(("parent3 ->", "child3 ->")) for line in red)
    assert "f999 [label=\"frame 0x999\"" in src and src.count("[label=\"frame 0x10") == 6


def _image(name, layers):
    return SimpleNamespace(name=name, layers=[SimpleNamespace(digest="sha256:" + d * 64, size=10) for d in layers],
                           manifest_desc=SimpleNamespace(digest="sha256:" + name[0] * 64))


def test_image_graph_draws_a_shared_layer_once_and_blue():
    family = [_image("app", "ab"), _image("web", "ac"), _image("web2", "acd")]
    src = viz.image_graph(family).source
    boxes = [line for line in src.splitlines() if "shape=box" in line]
    assert len(boxes) == 4                                             # a, b, c, d: each once
    assert sorted(line.strip()[6] for line in boxes if "#cfe3f7" in line) == ["a", "c"]   # used twice or more


def test_namespace_graph_colours_own_left_and_shared_namespaces():
    mine = {"mnt": 1, "uts": 2, "user": 3}
    theirs = {"mnt": 11, "uts": 2, "user": 3}
    src = viz.namespace_graph({"notebook": mine, "process": theirs}).source
    assert len(_lines_with(src, "#f7cfcf")) == 1 and "mnt_11" in _lines_with(src, "#f7cfcf")[0]   # the process's own
    assert len(_lines_with(src, "#e0e0e0")) == 1 and "mnt_1 " in _lines_with(src, "#e0e0e0")[0]   # the notebook's, left
    assert len(_lines_with(src, "#cfe3f7")) == 2                                                  # shared: uts, user


def test_behind_shows_the_system_calls_of_an_experiment():
    from labkit import overlay, roots
    code = viz.behind(roots.pivot_into, overlay.mount_classic)
    assert "kernel.pivot_root(rootfs, old)" in code.data and "kernel.mount(\"overlay\"" in code.data
