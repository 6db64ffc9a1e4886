"""The HTML pages in a real browser: headless Chromium takes a screenshot and the test counts
the thumbnails in it.

Each thumbnail is drawn with a frame of a known colour *in its own pixels* (query blue, match
green / red, cluster sample purple), so a thumbnail that does not render leaves no frame: the
count is of images the browser decoded and drew (the last test checks exactly that by
breaking one). Skipped when no Chromium is installed (``apt-get install chromium``)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import write_identity_market
from PIL import Image
from scipy import ndimage
from test_export import _checkpoint

from adaptreid.cli import main
from adaptreid.report.report import write_report
from adaptreid.rundir.step_labels import save_step_labels
from adaptreid.webpage.html import CLUSTER, CORRECT, QUERY, THUMB, WRONG
from adaptreid.webpage.report_page import cluster_samples

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium (apt-get install chromium) to render the pages"
)


def screenshot(html, tmp_path, size=(1200, 2400)) -> np.ndarray:
    """The page as headless Chromium draws it, an (H, W, 3) uint8 array."""
    png = tmp_path / f"{html.stem}.png"
    png.unlink(missing_ok=True)
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={png}",
        f"--window-size={size[0]},{size[1]}",
        html.resolve().as_uri(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot (rc {out.returncode}): {out.stderr[-800:]}"
    return np.asarray(Image.open(png).convert("RGB"))


def count_frames(img: np.ndarray, colour, tol: int = 3) -> int:
    """Rectangular frames of ``colour`` the size of a thumbnail in the screenshot."""
    mask = (np.abs(img.astype(int) - np.array(colour)) <= tol).all(axis=2)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    w, h = THUMB
    n = 0
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        bh, bw = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        n += abs(bw - w) <= 2 and abs(bh - h) <= 2
    return n


@pytest.fixture(scope="module")
def search_page(tmp_path_factory):
    """A search page of 2 queries x top 4 on a tiny Market folder (identities known)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("browser")
    _, ckpt = _checkpoint(tmp)
    root = write_identity_market(tmp / "market")
    query = sorted((root / "query").iterdir())[:2]
    page = tmp / "search.html"
    argv = ["search", "--checkpoint", str(ckpt), "--query", *map(str, query), "-q"]
    argv += ["--gallery", str(root / "bounding_box_test"), "--top", "4", "--html", str(page)]
    assert main(argv) == 0
    return page


def test_search_page_shows_every_thumbnail(search_page, tmp_path):
    img = screenshot(search_page, tmp_path)
    assert count_frames(img, QUERY) == 2
    assert count_frames(img, CORRECT) + count_frames(img, WRONG) == 2 * 4
    assert count_frames(img, CORRECT) >= 1  # the colour-coded identities are found


def test_a_thumbnail_that_does_not_render_is_not_counted(search_page, tmp_path):
    html = search_page.read_text()
    start = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(html[:start] + "AAAA" + html[start + 40 :])  # the first query's image
    assert count_frames(screenshot(broken, tmp_path), QUERY) == 1


def _run_folder(tmp_path):
    """A run folder as the adaptation loop leaves it: records, and each step's labels."""
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {"kind": "step", "step": 0, "stage": "direct_transfer", "rank1": 0.3, "mAP": 0.25},
        {"kind": "labels", "step": 1, "num_clusters": 3, "portion_kept": 0.8, "eps": 0.5},
        {"kind": "epoch", "step": 1, "epoch": 1, "loss": 2.0},
        {"kind": "step", "step": 1, "stage": "msplr", "rank1": 0.4, "mAP": 0.35},
        {"kind": "labels", "step": 2, "num_clusters": 5, "portion_kept": 0.9, "eps": 0.5},
        {"kind": "epoch", "step": 2, "epoch": 1, "loss": 1.5},
        {"kind": "step", "step": 2, "stage": "msplr", "rank1": 0.5, "mAP": 0.45},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(30):
        p = tmp_path / "crops" / f"{i:03d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 120, (32, 16, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    expected = 0
    for step, n in ((1, 3), (2, 5)):
        labels = np.where(np.arange(30) % 7 == 6, -1, np.arange(30) % n)
        save_step_labels(run, step, paths, labels, np.arange(30) % 2)
        expected += sum(len(rows) for _, rows, _ in cluster_samples(labels))
    return run, expected


def test_report_page_shows_plots_tables_and_cluster_samples(tmp_path):
    run, expected = _run_folder(tmp_path)
    write_report(run)
    html = (run / "report.html").read_text()
    assert "Adaptation steps" in html and "<table>" in html and 'class="plot"' in html
    assert "Pseudo-label clusters per step" in html and 'src="steps.png"' not in html
    img = screenshot(run / "report.html", tmp_path, size=(1200, 3200))
    # step 1: its 3 clusters, 6 images shown of each; step 2: its 4 largest of 5 (6, 5, 5, 5)
    assert expected == 3 * 6 + 6 + 5 + 5 + 5
    assert count_frames(img, CLUSTER) == expected
