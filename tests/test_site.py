"""site/check_site.py, the check `make site` runs on the built lesson site before it is published."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "site"))
import check_site  # noqa: E402


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "html"
    (site / "_images").mkdir(parents=True)
    (site / "_images" / "tree.svg").write_text("<svg/>")
    (site / "_images" / "empty.png").write_bytes(b"")
    (site / "_static").mkdir()
    (site / "_static" / "macros.html").write_text("<link href=\"{{ pathto('x') }}\">")   # a theme fragment
    (site / "index.html").write_text('<a href="01-overlayfs.html#whiteouts">1</a> <a href="https://example.org/">ext</a>')
    (site / "01-overlayfs.html").write_text(
        '<h2 id="whiteouts">W</h2><img src="_images/tree.svg"><a href="#whiteouts">here</a>'
        '<details><summary>Solution</summary>x</details>')
    return site


def _notebook(tmp_path: Path, solutions: int) -> Path:
    nbs = tmp_path / "notebooks"
    nbs.mkdir(exist_ok=True)
    cells = [{"cell_type": "markdown", "source": "<details><summary>Solution</summary>\nx\n</details>", "metadata": {}}]
    (nbs / "01-overlayfs.ipynb").write_text(json.dumps({"cells": cells * solutions}))
    return nbs


def test_a_good_site_passes_and_other_sites_are_listed_not_fetched(tmp_path):
    found, external = check_site.problems(_site(tmp_path), _notebook(tmp_path, 1))
    assert found == [] and external == {"https://example.org/"}


def test_broken_links_missing_pictures_and_unfolded_solutions_are_each_named(tmp_path):
    site = _site(tmp_path)
    (site / "02-cow-fork.html").write_text(
        '<a href="01-overlayfs.html#no-such-part">a</a><a href="03.html">b</a>'
        '<img src="_images/gone.svg"><img src="_images/empty.png"><details open>s</details>')
    found, _ = check_site.problems(site, _notebook(tmp_path, 2))
    assert found == [
        "02-cow-fork.html: link 01-overlayfs.html#no-such-part names no place on 01-overlayfs.html",
        "02-cow-fork.html: link 03.html leads nowhere",
        "02-cow-fork.html: picture _images/gone.svg leads nowhere",
        "02-cow-fork.html: picture _images/empty.png is empty",
        "02-cow-fork.html: 1 solution(s) shown unfolded (<details open>)",
        "01-overlayfs.html: 1 folded solutions, the notebook has 2",
    ]
    assert check_site.main([str(site)]) == 1
