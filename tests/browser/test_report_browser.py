"""The report in a real browser: headless Chromium loads every kind of page without console
errors and shows the expected cluster cards; a screenshot is kept as a test artefact.

Needs Debian's ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it when it can); the
test is skipped with a message otherwise. Set ``DEEPERCLUSTER_BROWSER_ARTIFACTS=DIR`` to also
copy the screenshot to DIR.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deepercluster.data import ArrayCollection
from deepercluster.inspect.report import ReportOptions, cluster_cards, render_report

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--window-size=1280,2400",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium not found at /usr/bin/chromium (apt-get install chromium)",
)


def _browse(page: Path, profile: Path, *extra: str) -> tuple[str, list[str]]:
    """Load ``page``; returns (the DOM after load, the console messages)."""
    done = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def _report(root: Path, k: int, per_page: int) -> Path:
    rng = np.random.default_rng(0)
    n = 6 * k
    images = rng.integers(0, 255, (n, 48, 48, 3), dtype=np.uint8)
    labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    per_super = k // 2
    options = ReportOptions(per_page=per_page, nearest=4, random=2)
    cards = cluster_cards(labels, labels // per_super, labels % per_super,
                          rng.random(n).astype(np.float32), k, options)  # fmt: skip
    records = [{"epoch": e, "train/loss": 3.0 - e, "time/train_s": 2.0} for e in range(3)]
    return render_report(
        root, title="browser test", summary=[("images", str(n))], config=[("cluster.k", str(k))],
        records=records, cards=cards, collection=ArrayCollection(images),
        paths=[f"img_{i}.png" for i in range(n)], options=options,
    )  # fmt: skip


def test_report_pages_load_cleanly_and_show_the_cards(tmp_path: Path) -> None:
    k, per_page = 10, 4
    index = _report(tmp_path / "report", k, per_page)
    pages = sorted((index.parent / "clusters").glob("page-*.html"))
    assert len(pages) == 3
    seen = []
    for i, page in enumerate([index, index.parent / "tree.html", *pages]):
        dom, console = _browse(page, tmp_path / f"profile-{i}", "--dump-dom")
        assert console == [], f"{page.name}: {console}"
        assert "</html>" in dom
        seen.append(len(re.findall(r'class="card"', dom)))
    assert seen == [0, 0, 4, 4, 2]

    # the "go to cluster" box: submitting 9 opens the page that holds cluster 9
    probe = index.parent / "probe.html"
    submit = "<script>document.getElementById('cid').value='9';jump({preventDefault(){}});</script>"
    probe.write_text(index.read_text().replace("</body>", submit + "</body>"))
    dom, console = _browse(probe, tmp_path / "profile-jump", "--virtual-time-budget=5000",
                           "--dump-dom")  # fmt: skip
    assert console == [] and "<title>browser test: clusters 8-9</title>" in dom

    shot = tmp_path / "report-page.png"
    _browse(pages[0], tmp_path / "profile-shot", f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000  # a rendered page of thumbnails, not a blank one
    target = os.environ.get("DEEPERCLUSTER_BROWSER_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)


def test_broken_pages_are_caught(tmp_path: Path) -> None:
    # The check above can fail: a missing thumbnail and a script error both reach the console.
    index = _report(tmp_path / "report", 4, 4)
    page = index.parent / "clusters" / "page-0001.html"
    first = re.search(r'src="\.\./(thumbs/[^"]+)"', page.read_text())
    assert first is not None
    (index.parent / first.group(1)).unlink()
    page.write_text(page.read_text().replace("</body>", "<script>undefined_fn();</script></body>"))
    _, console = _browse(page, tmp_path / "profile", "--dump-dom")
    text = "\n".join(console)
    assert "missing image: ../" + first.group(1) in text
    assert "undefined_fn is not defined" in text
