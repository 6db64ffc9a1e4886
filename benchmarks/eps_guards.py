"""Which eps each giant-cluster guard lets the label-free sweep pick, on recorded eps sweeps.

Issue 26's study of the guard of :func:`adaptreid.pseudo.labels.recommend_eps`: the rule in
the library leaves out an eps whose largest cluster holds more than ``pseudo.giant_factor``
times the median cluster (5 by default; the camera-aware cluster contrast runs tried 10).
This script replays that rule at 5x and 10x on sweeps written by ``adaptreid cluster
--eps-sweep auto --out DIR``, next to a rule that is not in the library: a *growth* guard,
which leaves out every eps from the first one where the largest cluster grows by more than
``--growth`` times from the previous eps of the sweep while holding more than 5x the median
(the onset of single-link chaining, whatever the typical cluster's size). Each pick is shown
with its share of images kept and, from the sweep's ground-truth columns (analysis only),
its pairwise precision and F1.

    python benchmarks/eps_guards.py benchmarks/results/eps_sweeps/guards_*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adaptreid.pseudo.labels import recommend_eps


def growth_onset(rows: list[dict], growth: float, factor: float = 5.0) -> float | None:
    """The first eps (ascending) whose largest cluster is more than ``growth`` x the
    previous row's largest and more than ``factor`` x its own median; None if none is."""
    if not growth > 1:
        raise ValueError(f"growth must be > 1, got {growth}")
    prev = None
    for row in sorted(rows, key=lambda r: r["eps"]):
        largest = row.get("max_cluster_size", 0)
        med = row.get("median_cluster_size") or 0
        if prev and med and largest > growth * prev and largest > factor * med:
            return row["eps"]
        if largest:
            prev = largest
    return None


def growth_pick(rows: list[dict], growth: float) -> float:
    """The library's rule (no ratio guard) over the eps below the growth onset."""
    onset = growth_onset(rows, growth)
    below = [r for r in rows if onset is None or r["eps"] < onset]
    # a factor no sweep reaches: only the onset bounds the choice
    eps, _ = recommend_eps(below or rows, giant_factor=float("inf"))
    return eps


def picks(rows: list[dict], growth: float) -> dict[str, float]:
    return {
        "5x median": recommend_eps(rows, giant_factor=5.0)[0],
        "10x median": recommend_eps(rows, giant_factor=10.0)[0],
        f"growth {growth:g}x": growth_pick(rows, growth),
    }


def _cell(rows: list[dict], eps: float) -> str:
    row = next(r for r in rows if r["eps"] == eps)
    return (
        f"{eps:g}: {row['portion_kept']:.0%} kept, P {row.get('precision', float('nan')):.2f}, "
        f"F1 {row.get('f1', float('nan')):.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("sweeps", nargs="+", type=Path, help="eps_sweep.json files")
    ap.add_argument("--growth", type=float, default=1.5, help="the growth guard's factor")
    args = ap.parse_args(argv)
    table = []
    for path in args.sweeps:
        rows = json.loads(path.read_text())["rows"]
        chosen = picks(rows, args.growth)
        table.append([path.stem, *(_cell(rows, e) for e in chosen.values())])
    print("| sweep | " + " | ".join(f"guard: {name}" for name in chosen) + " |")
    print("|---" * (len(chosen) + 1) + "|")
    for line in table:
        print("| " + " | ".join(line) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
