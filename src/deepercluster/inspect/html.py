"""HTML of the report: an index page, a super-cluster tree and paginated cluster pages.

Pure string building, no template engine. Every page is self-contained (inline CSS, a few
lines of inline JavaScript for the cluster search) and refers only to files next to it
(``figures/*.png``, ``thumbs/**.jpg``), so the report opens from disk without a server and
without the internet. Images use ``loading="lazy"``: a page decodes only what is scrolled to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from deepercluster.evaluation.tags import Enriched

__all__ = ["ClusterCard", "PageSet", "page_name", "write_pages"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
nav{margin:.6em 0}nav a{margin-right:.5em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(430px,1fr));gap:10px}
.card{background:#fff;border:1px solid #ccc;border-radius:6px;padding:6px}
.card h3{font-size:.95em;margin:0 0 4px 0}.tags{font-size:.8em;color:#555;margin:2px 0}
.grid{display:flex;flex-wrap:wrap;gap:2px;margin:2px 0 4px 0}
.grid img{width:70px;height:70px;object-fit:cover;background:#eee}
.label{font-size:.75em;color:#777}figure{display:inline-block;margin:4px}
img.fig{max-width:100%}
"""

_SEARCH_JS = """
function jump(ev){ev.preventDefault();
 var c=parseInt(document.getElementById('cid').value,10),k=%(k)d,per=%(per)d;
 if(isNaN(c)||c<0||c>=k){document.getElementById('msg').textContent='no cluster '+c;return false;}
 var p=String(Math.floor(c/per)+1);while(p.length<4){p='0'+p;}
 window.location.href='%(prefix)spage-'+p+'.html#c'+c;return false;}
"""


@dataclass(frozen=True)
class ClusterCard:
    """What one cluster's card shows.

    Attributes:
        cluster: global id; ``super_cluster``/``sub_cluster``: its place in the hierarchy.
        size: number of images.
        nearest: ids of the members nearest to the centroid, nearest first.
        random: ids of other members drawn at random.
        tags: over-represented tags (empty without metadata).
        mean_distance: mean member distance to the centroid (NaN when unknown).
    """

    cluster: int
    super_cluster: int
    sub_cluster: int
    size: int
    nearest: list[int]
    random: list[int]
    tags: list[Enriched] = field(default_factory=list)
    mean_distance: float = float("nan")


@dataclass(frozen=True)
class PageSet:
    """Everything the pages need besides the cards.

    Attributes:
        title: report title (the run folder).
        summary: (name, value) rows of the run summary.
        config: (setting, value) rows of the resolved config.
        figures: (file name under ``figures/``, caption).
        skipped: (path, reason) of unreadable images (the first ones are listed).
        paths: display path of every image id (image tooltips).
        thumb: image id -> thumbnail path relative to the report folder ("" = none).
        per_page: clusters per page.
        extra: a section of HTML for the index page, before the clusters (e.g. a curation).
    """

    title: str
    summary: Sequence[tuple[str, str]]
    config: Sequence[tuple[str, str]]
    figures: Sequence[tuple[str, str]]
    skipped: Sequence[tuple[str, str]]
    paths: Sequence[str]
    thumb: dict[int, str]
    per_page: int = 100
    extra: str = ""


def page_name(page: int) -> str:
    """File name of cluster page ``page`` (1-based), under ``clusters/``."""
    return f"page-{page:04d}.html"


# A missing thumbnail or figure shows in the browser console (and so fails the browser test).
_IMAGE_ERRORS = (
    "document.addEventListener('error',function(e){var t=e.target;"
    "if(t&&t.tagName==='IMG'){console.error('missing image: '+t.getAttribute('src'));}},true);"
)


def _head(title: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style>"
        f"<script>{_IMAGE_ERRORS}</script></head><body>"
    )


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{escape(a)}</th><td>{escape(b)}</td></tr>" for a, b in rows)
    return f"<table>{body}</table>"


def _search(k: int, per_page: int, prefix: str) -> str:
    js = _SEARCH_JS % {"k": k, "per": per_page, "prefix": prefix}
    return (
        f"<script>{js}</script>"
        '<form onsubmit="return jump(event)">go to cluster <input id="cid" size="6"> '
        '<button>show</button> <span id="msg"></span></form>'
    )


def _grid(ids: Sequence[int], pages: PageSet, up: str) -> str:
    cells = []
    for i in ids:
        rel = pages.thumb.get(i, "")
        title = escape(pages.paths[i], quote=True)
        if rel:
            cells.append(f'<img loading="lazy" src="{up}{rel}" title="{title}" alt="{i}">')
    return f'<div class="grid">{"".join(cells)}</div>'


def _card(card: ClusterCard, pages: PageSet) -> str:
    tags = ", ".join(f"{escape(t.tag)} ({t.count}, x{t.lift:.1f})" for t in card.tags)
    dist = ""
    if math.isfinite(card.mean_distance):
        dist = f", mean distance {card.mean_distance:.3f}"
    random = ""
    if card.random:
        random = '<div class="label">random members</div>' + _grid(card.random, pages, "../")
    return (
        f'<div class="card" id="c{card.cluster}"><h3>cluster {card.cluster} '
        f'<span class="label">super {card.super_cluster} / sub {card.sub_cluster} · '
        f"{card.size} images{dist}</span></h3>"
        + (f'<div class="tags">tags: {tags}</div>' if tags else "")
        + '<div class="label">nearest to the centroid</div>'
        + _grid(card.nearest, pages, "../")
        + random
        + "</div>"
    )


def _nav(page: int, n_pages: int) -> str:
    links = ['<a href="../index.html">index</a>', '<a href="../tree.html">tree</a>']
    if page > 1:
        links.append(f'<a href="{page_name(page - 1)}">&larr; previous</a>')
    links.append(f"page {page} of {n_pages}")
    if page < n_pages:
        links.append(f'<a href="{page_name(page + 1)}">next &rarr;</a>')
    return f"<nav>{' '.join(links)}</nav>"


def write_pages(out: Path, cards: Sequence[ClusterCard], pages: PageSet) -> Path:
    """Write ``index.html``, ``tree.html`` and ``clusters/page-NNNN.html`` under ``out``.

    Args:
        out: the report folder (figures and thumbnails are already there).
        cards: one card per cluster, in cluster-id order.
        pages: the rest of the content.

    Returns:
        The path of ``index.html``.
    """
    per = pages.per_page
    k = len(cards)
    n_pages = max(1, -(-k // per))
    (out / "clusters").mkdir(parents=True, exist_ok=True)
    for p in range(1, n_pages + 1):
        chunk = cards[(p - 1) * per : p * per]
        first, last = chunk[0].cluster if chunk else 0, chunk[-1].cluster if chunk else 0
        html = (
            _head(f"{pages.title}: clusters {first}-{last}")
            + f"<h1>{escape(pages.title)}: clusters {first}-{last}</h1>"
            + _nav(p, n_pages)
            + _search(k, per, "")
            + '<div class="cards">'
            + "".join(_card(c, pages) for c in chunk)
            + "</div>"
            + _nav(p, n_pages)
            + "</body></html>"
        )
        (out / "clusters" / page_name(p)).write_text(html, encoding="utf-8")

    # One tree branch and one index row per super-cluster; its clusters are contiguous ids.
    by_super: dict[int, list[int]] = {}
    for i, c in enumerate(cards):
        by_super.setdefault(c.super_cluster, []).append(i)
    tree, rows = [], []
    for s, ids in sorted(by_super.items()):
        members = [cards[i] for i in ids]
        total = sum(c.size for c in members)
        items = "".join(
            f'<li><a href="clusters/{page_name(i // per + 1)}#c{cards[i].cluster}">cluster '
            f"{cards[i].cluster}</a> ({cards[i].size})</li>"
            for i in ids
        )
        tree.append(
            f"<li><details><summary>super-cluster {s}: {len(ids)} clusters, {total} images"
            f"</summary><ul>{items}</ul></details></li>"
        )
        rows.append(
            f"<tr><td>{s}</td><td>{len(ids)}</td><td>{total}</td>"
            f'<td><a href="clusters/{page_name(ids[0] // per + 1)}#c{members[0].cluster}">'
            f"clusters {members[0].cluster}-{members[-1].cluster}</a></td></tr>"
        )
    (out / "tree.html").write_text(
        _head(f"{pages.title}: super-cluster tree")
        + f"<h1>{escape(pages.title)}: super-cluster tree</h1>"
        + f'<nav><a href="index.html">index</a></nav><ul>{"".join(tree)}</ul></body></html>',
        encoding="utf-8",
    )
    super_table = (
        "<table><tr><th>super-cluster</th><th>clusters</th><th>images</th><th>first page</th>"
        f"</tr>{''.join(rows)}</table>"
    )
    page_links = " ".join(
        f'<a href="clusters/{page_name(p)}">{(p - 1) * per}-{min(p * per, k) - 1}</a>'
        for p in range(1, n_pages + 1)
    )
    figures = "".join(
        f'<figure><img class="fig" src="figures/{escape(name)}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
        for name, caption in pages.figures
    )
    skipped = ""
    if pages.skipped:
        shown = pages.skipped[:50]
        more = len(pages.skipped) - len(shown)
        skipped = (
            f"<h2>Unreadable images ({len(pages.skipped)})</h2>"
            + _table([(p, r) for p, r in shown])
            + (f"<p>... and {more} more (see skipped.csv)</p>" if more else "")
        )
    index = (
        _head(pages.title)
        + f"<h1>{escape(pages.title)}</h1><h2>Run</h2>"
        + _table(pages.summary)
        + "<details><summary>configuration</summary>"
        + _table(pages.config)
        + "</details><h2>Training and clustering</h2>"
        + figures
        + skipped
        + pages.extra
        + f"<h2>Clusters ({k})</h2>"
        + '<p><a href="tree.html">super-cluster tree</a></p>'
        + super_table
        + _search(k, per, "clusters/")
        + f"<nav>pages: {page_links}</nav></body></html>"
    )
    (out / "index.html").write_text(index, encoding="utf-8")
    return out / "index.html"
