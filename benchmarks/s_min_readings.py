"""PAST's S_min (section 3.4: "the minimal samples in each cluster", 10) read three
ways, on a real target: iteration 1's HDBSCAN clusters of the source model's features.

    python benchmarks/s_min_readings.py FEATURES.pt [--s-min 10]

FEATURES.pt is a feature cache written by ``adaptreid cluster --features`` (the source
model's features of the target training images). As PAST's iteration 1 does: per-row L2
normalisation (a BNNeck source model has one part), the k-reciprocal Jaccard distance (k1 =
20, k2 = 6, computed once), HDBSCAN on it (scikit-learn's algorithm on the sparse graph).
Readings, as scikit-learn's (min_cluster_size, min_samples):

* ``min_cluster_size``: (S_min, S_min) - the paper's words (adaptreid's PAST default);
* ``released_code``: (5, S_min + 1) - the authors' code, which passes S_min to the ``hdbscan``
  package's min_samples (that package does not count the point itself) and keeps its
  min_cluster_size default of 5;
* ``previous``: (5, S_min) - what adaptreid did before (S_min as scikit-learn's min_samples).

Pairwise precision / F1 / NMI against the true identities: analysis only.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from adaptreid.pseudo.clustering import cluster
from adaptreid.pseudo.kreciprocal import jaccard_distance
from adaptreid.pseudo.quality import label_quality, pseudo_label_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("features")
    ap.add_argument("--s-min", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    saved = torch.load(args.features, weights_only=True)
    x = torch.nn.functional.normalize(saved["feats"].float(), dim=1)
    pids, cams = saved["pids"].numpy(), saved["camids"].numpy()
    t0 = time.perf_counter()
    jac = jaccard_distance(x, k1=20, k2=6)
    print(f"{saved['dataset']}: {len(x)} images; Jaccard {time.perf_counter() - t0:.1f} s")
    s = args.s_min
    readings = {
        "min_cluster_size": (s, s),
        "released_code": (5, s + 1),
        "previous": (5, s),
    }
    rows = []
    print(
        "| reading | min_cluster_size | min_samples | clusters | portion kept | largest | "
        "precision | F1 | NMI |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (mcs, ms) in readings.items():
        labels = cluster(method="hdbscan", distance=jac, min_cluster_size=mcs, min_samples=ms)
        st = pseudo_label_stats(labels, cams)
        q = label_quality(labels, pids)
        rows.append({"reading": name, "min_cluster_size": mcs, "min_samples": ms, **st, **q})
        print(
            f"| {name} | {mcs} | {ms} | {st['num_clusters']} | {100 * st['portion_kept']:.1f}% | "
            f"{st['size_max']} | {q['precision']:.3f} | {q['f1']:.3f} | {q['nmi']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)


if __name__ == "__main__":
    main()
