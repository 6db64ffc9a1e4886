"""The eps sweep of ``adaptreid cluster`` as a text table."""

from __future__ import annotations


def format_sweep(rows: list[dict]) -> str:
    """The eps sweep as an aligned table (quality columns only when ground truth exists)."""
    cols = [
        ("eps", "eps", "{:.3f}"),
        ("clusters_before", "DBSCAN clusters", "{:d}"),
        ("clusters", "kept clusters", "{:d}"),
        ("outliers", "images left out", "{:d}"),
        ("portion_kept", "portion kept", "{:.1%}"),
        ("multi_camera_fraction", "multi-camera", "{:.1%}"),
    ]
    if rows and "f1" in rows[0]:
        cols += [
            ("precision", "precision", "{:.3f}"),
            ("recall", "recall", "{:.3f}"),
            ("f1", "F1", "{:.3f}"),
            ("nmi", "NMI", "{:.3f}"),
        ]
    table = [[title for _, title, _ in cols]]
    for r in rows:
        table.append([fmt.format(r[key]) if key in r else "-" for key, _, fmt in cols])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
