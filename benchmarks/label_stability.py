"""How much DBSCAN's and HDBSCAN's labels move when nothing but the order of the images, or
the last bits of the features, change (issue 27: what an ARI target between two neighbour
searches can ask for).

On the synthetic N x 2048 features of ``benchmarks/kreciprocal.py`` (as ``topk_approx.py``),
the exact path (``jaccard_with_neighbors``, k1 = 20, k2 = 6; DBSCAN eps 0.6, min_samples 4;
HDBSCAN min_cluster_size 10) is run three times:

* on the features as generated (the reference);
* on the same features in a random order (labels mapped back): the same data, so any change
  comes from the order in which sums are taken and ties are broken;
* on the features plus Gaussian noise of standard deviation ``--jitter`` (default 1e-4, on
  coordinates of about 0.02: far below the noise that separates two images of a person).

The adjusted Rand index of each against the reference, for both algorithms, and against the
synthetic identities. Run (heavy: under the shared lock)::

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/label_stability.py \\
        --n 20000 50000

Writes ``benchmarks/results/label_stability.json`` (one entry per N) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from kreciprocal import machine, synthetic_reid  # noqa: E402

RESULTS = HERE / "results" / "label_stability.json"
K1, K2 = 20, 6
EPS, MIN_SAMPLES, MIN_CLUSTER_SIZE = 0.6, 4, 10


def labels_of(x: np.ndarray) -> dict[str, np.ndarray]:
    from adaptreid.pseudo.clustering import cluster
    from adaptreid.pseudo.kreciprocal import jaccard_distance

    jac = jaccard_distance(x, K1, K2, neighbors="exact")
    return {
        "dbscan": cluster(distance=jac, method="dbscan", eps=EPS, min_samples=MIN_SAMPLES),
        "hdbscan": cluster(distance=jac, method="hdbscan", min_cluster_size=MIN_CLUSTER_SIZE),
    }


def one_n(n: int, jitter: float, seed: int) -> dict:
    from sklearn.metrics import adjusted_rand_score as ari

    x, pid, _cam = synthetic_reid(n)
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    ref = labels_of(x)
    perm = rng.permutation(n)
    permuted = labels_of(x[perm])
    back = {k: np.empty_like(v) for k, v in permuted.items()}
    for k, v in permuted.items():
        back[k][perm] = v
    noisy = x + (jitter * rng.standard_normal(x.shape)).astype(np.float32)
    jittered = labels_of(noisy)
    out: dict = {"n": n, "jitter": jitter, "seed": seed}
    for algo in ("dbscan", "hdbscan"):
        out[algo] = {
            "clusters": int(ref[algo].max() + 1),
            "outliers": int((ref[algo] < 0).sum()),
            "ari_permuted_vs_reference": float(ari(ref[algo], back[algo])),
            "ari_jittered_vs_reference": float(ari(ref[algo], jittered[algo])),
            "ari_reference_vs_identities": float(ari(pid, ref[algo])),
            "ari_permuted_vs_identities": float(ari(pid, back[algo])),
            "ari_jittered_vs_identities": float(ari(pid, jittered[algo])),
        }
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[20_000])
    ap.add_argument("--jitter", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    print(
        "| N | algorithm | ARI, permuted vs reference | ARI, jittered vs reference | "
        "ARI vs identities (reference / permuted / jittered) |"
    )
    print("|---|---|---|---|---|")
    for n in args.n:
        entry = one_n(n, args.jitter, args.seed)
        entry.update(
            date=datetime.datetime.now().isoformat(timespec="minutes"),
            command=" ".join(["python"] + sys.argv),
            machine=machine(),
        )
        results["runs"][f"{n}_jitter{args.jitter:g}_seed{args.seed}"] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        for algo in ("dbscan", "hdbscan"):
            r = entry[algo]
            print(
                f"| {n:,} | {algo} | {r['ari_permuted_vs_reference']:.4f} | "
                f"{r['ari_jittered_vs_reference']:.4f} | {r['ari_reference_vs_identities']:.4f} / "
                f"{r['ari_permuted_vs_identities']:.4f} / {r['ari_jittered_vs_identities']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
