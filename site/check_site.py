"""Check a built static site before it is published (`make site` runs it on site/_build/html):

- every link inside the site leads to a file that exists, and to an id on that page when it
  names one (`page.html#section`);
- every picture (`<img src>`) is there, and none is empty;
- every exercise's solution stays folded (`<details>` without `open`), and each lesson page has
  as many as its notebook.

Links to other sites are listed, not fetched (the course server may have no network).
Prints one line per problem and exits 1 if there is any.

    python site/check_site.py site/_build/html [notebooks]
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Page:
    """What one HTML page links to, shows and folds."""
    links: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    details: int = 0
    open_details: int = 0


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.page = Page()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.page.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.page.ids.add(a["name"])
        if tag in ("a", "link") and a.get("href"):
            self.page.links.append(a["href"])
        if tag in ("img", "script") and a.get("src"):
            (self.page.images if tag == "img" else self.page.links).append(a["src"])
        if tag == "details":
            self.page.details += 1
            self.page.open_details += "open" in a


def read(path: Path) -> Page:
    reader = _Reader()
    reader.feed(path.read_text(errors="replace"))
    return reader.page


def problems(site: Path, notebooks: Path | None = None) -> tuple[list[str], set[str]]:
    """(the problems found, the external links seen) for the site built in ``site``."""
    # the theme's template fragments under _static/ are not pages (they hold Jinja, not links)
    pages = {p: read(p) for p in sorted(site.rglob("*.html")) if "_static" not in p.relative_to(site).parts}
    found, external = [], set()
    for path, page in pages.items():
        where = path.relative_to(site)
        for ref, is_image in [(r, False) for r in page.links] + [(r, True) for r in page.images]:
            url = urlsplit(ref)
            if url.scheme in ("http", "https") or ref.startswith("//"):
                external.add(ref)
                continue
            if url.scheme in ("data", "mailto", "javascript"):
                continue
            target = (path.parent / unquote(url.path)).resolve() if url.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                found.append(f"{where}: {'picture' if is_image else 'link'} {ref} leads nowhere")
            elif is_image and target.stat().st_size == 0:
                found.append(f"{where}: picture {ref} is empty")
            elif url.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else read(target).ids
                if unquote(url.fragment) not in ids:
                    found.append(f"{where}: link {ref} names no place on {target.name}")
        if page.open_details:
            found.append(f"{where}: {page.open_details} solution(s) shown unfolded (<details open>)")
    for nb in sorted(notebooks.glob("*.ipynb")) if notebooks else []:
        cells = json.loads(nb.read_text())["cells"]
        want = sum("".join(c["source"]).count("<details") for c in cells if c["cell_type"] == "markdown")
        page = site / f"{nb.stem}.html"
        if not page.exists():
            found.append(f"{nb.name}: no page {page.name} in the site")
        elif pages[page].details != want:
            found.append(f"{page.name}: {pages[page].details} folded solutions, the notebook has {want}")
    return found, external


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    site = Path(argv[0])
    found, external = problems(site, Path(argv[1]) if len(argv) > 1 else None)
    for line in found:
        print(f"site: {line}")
    pages = sum("_static" not in p.relative_to(site).parts for p in site.rglob("*.html"))
    print(f"site: {pages} pages checked, {len(found)} problem(s); {len(external)} links to other sites not fetched")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
