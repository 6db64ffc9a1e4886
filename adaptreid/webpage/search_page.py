"""The page of ``adaptreid search``: one row per query, its thumbnail (blue frame) then its
matches, nearest first, each with rank, distance and camera id, framed green (same identity),
red (another identity) or orange (identities unknown)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .html import CORRECT, QUERY, UNLABELLED, WRONG, esc, page, thumbnail

__all__ = ["Images", "write_search_page"]


class Images(Protocol):
    """One side of a search (a :class:`~adaptreid.retrieval.features.FeatureSet` is one):
    image paths, 0-based camera ids (``-1``: unknown) and identities (None: unknown)."""

    paths: Sequence[str]
    camids: Sequence[int]
    pids: Sequence[int] | None


def _cam(c: int) -> str:
    return "cam ?" if c < 0 else f"cam {c + 1}"


def write_search_page(
    path: str | Path,
    query: Images,
    gallery: Images,
    indices: np.ndarray,
    distances: np.ndarray,
    *,
    title: str = "adaptreid search",
    note: str = "",
) -> Path:
    """Write the page to ``path``: ``indices[i, j]`` is query ``i``'s ``j``-th match in
    ``gallery`` (``-1``: none), ``distances[i, j]`` its distance; identities of both sides
    (``>= 0``) give the marks."""
    query_paths, query_camids, query_pids = query.paths, query.camids, query.pids
    gallery_paths, gallery_camids, gallery_pids = gallery.paths, gallery.camids, gallery.pids
    labelled = query_pids is not None and gallery_pids is not None
    rows = []
    for i, qp in enumerate(query_paths):
        cells = [
            f'<div class="cell">{thumbnail(qp, QUERY, qp)}<b>query</b><br>'
            f"{_cam(int(query_camids[i]))}</div>",
            '<div class="sep"></div>',
        ]
        for j, g in enumerate(indices[i]):
            if g < 0:
                continue
            g = int(g)
            mark, colour = "", UNLABELLED
            if labelled and query_pids[i] >= 0 and gallery_pids[g] >= 0:
                ok = int(query_pids[i]) == int(gallery_pids[g])
                mark, colour = ("&#10003; ", CORRECT) if ok else ("&#10007; ", WRONG)
            cells.append(
                f'<div class="cell">{thumbnail(gallery_paths[g], colour, gallery_paths[g])}'
                f"{mark}#{j + 1} d={distances[i, j]:.3f}<br>{_cam(int(gallery_camids[g]))}</div>"
            )
        rows.append(
            f'<h3>{esc(Path(qp).name)}</h3><div class="row" data-query="{i}">'
            + "".join(cells)
            + "</div>"
        )
    legend = "Blue: query. Matches nearest first (rank, distance, camera); " + (
        "green &#10003; same identity, red &#10007; another identity."
        if labelled
        else "orange: identities unknown."
    )
    body = f"<h1>{esc(title)}</h1><p>{esc(note)}</p><p>{legend}</p>" + "\n".join(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, body))
    return path
