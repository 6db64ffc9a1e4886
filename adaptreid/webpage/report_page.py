"""``report.html``: the run's ``report.md`` (per-step table, plots, rank lists) as one
self-contained page, plus what each adaptation step taught the model: a grid of a few of its
pseudo-label clusters (from ``labels/step_N.npz``, written by the loop)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..rundir.step_labels import load_step_labels, step_label_files
from .html import CLUSTER, esc, markdown_to_html, page, thumbnail

__all__ = ["cluster_samples", "write_report_html"]


def cluster_samples(
    labels: np.ndarray, *, clusters: int = 4, images: int = 6
) -> list[tuple[int, np.ndarray, int]]:
    """``[(cluster id, image rows shown, cluster size)]``: the ``clusters`` largest clusters
    (ties: smaller id first), up to ``images`` of each, in row order. Outliers (-1) are not
    clusters."""
    labels = np.asarray(labels)
    ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
    order = sorted(range(len(ids)), key=lambda k: (-sizes[k], ids[k]))[:clusters]
    return [(int(ids[k]), np.flatnonzero(labels == ids[k])[:images], int(sizes[k])) for k in order]


def _cluster_section(run_dir: Path, clusters: int, images: int) -> str:
    files = step_label_files(run_dir)
    if not files:
        return ""
    out = [
        "<h2>Pseudo-label clusters per step</h2>",
        f"<p>The {clusters} largest clusters of each step's pseudo-labels (up to {images} "
        "images each, purple frames): what the model was taught to see as one person.</p>",
    ]
    for step, f in files:
        lab = load_step_labels(f)
        n_clusters = len(set(lab.labels[lab.labels >= 0].tolist()))
        outliers = int((lab.labels < 0).sum())
        out.append(
            f"<h3>step {step}</h3><p>{n_clusters} clusters, {outliers} of {len(lab.labels)} "
            'images left out</p><div class="grid">'
        )
        for cid, rows, size in cluster_samples(lab.labels, clusters=clusters, images=images):
            cams = sorted({int(lab.camids[r]) for r in np.flatnonzero(lab.labels == cid)})
            cams_text = ", ".join(str(c + 1) for c in cams if c >= 0) or "unknown"
            thumbs = "".join(thumbnail(lab.paths[r], CLUSTER, lab.paths[r]) for r in rows)
            out.append(
                f'<div class="cluster" data-step="{step}"><h4>cluster {cid}: {size} images, '
                f"cameras {esc(cams_text)}</h4>{thumbs}</div>"
            )
        out.append("</div>")
    return "\n".join(out)


def write_report_html(
    run_dir: str | Path, markdown: str, *, clusters: int = 4, images: int = 6
) -> Path:
    """Write ``run_dir/report.html`` from the report's Markdown and the step label files."""
    run_dir = Path(run_dir)
    body = markdown_to_html(markdown, run_dir) + "\n" + _cluster_section(run_dir, clusters, images)
    out = run_dir / "report.html"
    tmp = out.with_name(".report.html.tmp")
    tmp.write_text(page(f"Run report: {run_dir.name}", body))
    tmp.replace(out)
    return out
