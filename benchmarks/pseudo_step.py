"""A whole pseudo-label step at scale (issue 16): Jaccard once, DBSCAN and HDBSCAN on it,
cluster selection, PAST's RTL ranking table, on synthetic N x 2048 features (default
N = 200,000), in one fresh process: time per stage and peak memory.

Stages (the k-reciprocal Jaccard distance is computed ONCE and reused by every later stage):

1. ``jaccard``: ``jaccard_with_neighbors(x, k1=20, k2=6, num_neighbors=2 eta + 1)`` (sparse
   CSR, missing entries = 1; its one exact neighbour search also keeps each row's 2 eta + 1
   nearest samples for the ranking table, as the engine does since issue 27);
2. ``dbscan``: ``cluster(distance=jac, method="dbscan", eps, min_samples=4)``;
3. ``hdbscan``: ``cluster(distance=jac, method="hdbscan", min_cluster_size=10)`` (the sparse
   HDBSCAN: no N x N array at any N);
4. ``select``: ``select_clusters`` (>= 4 images, >= 2 cameras) of both clusterings;
5. ``ranking``: ``ranked_neighbors(jac, 2 * eta, neighbors=table)`` with eta = 20 (RTL's
   table, its rows short of stored entries filled from the Jaccard search's table).
   ``--ranking search`` measures the path before issue 27 instead: ``jaccard_distance`` and
   ``ranked_neighbors(jac, 2 * eta, features=x)``, whose fill is a second exact search.

Features: ``benchmarks/kreciprocal.py``'s synthetic generator (identity centres, 6 camera
offsets, noise; about 17 images per identity), with its identities and cameras.
Peak memory = ``ru_maxrss`` of the process (interpreter, torch and the 1.6 GB of features
included); the RSS after each stage is recorded too (``/proc/self/statm``).

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/pseudo_step.py            # 200k
    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/pseudo_step.py --n 20000 --profile

Writes ``benchmarks/results/pseudo_step.json`` (one entry per N and ``--ranking``, key
``N_ranking_shared`` / ``N_ranking_search``; a key of N alone is a run made before issue 27,
whose ranking was the second search) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from kreciprocal import machine, synthetic_reid  # noqa: E402

RESULTS = HERE / "results" / "pseudo_step.json"
K1, K2, ETA = 20, 6, 20
EPS, MIN_SAMPLES, MIN_CLUSTER_SIZE = 0.6, 4, 10


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def worker(n: int, verbose: bool, ranking: str = "shared") -> dict:
    import torch
    from sklearn.metrics import adjusted_rand_score

    from adaptreid.pseudo.clustering import cluster
    from adaptreid.pseudo.kreciprocal import jaccard_distance, jaccard_with_neighbors
    from adaptreid.pseudo.ranking import ranked_neighbors
    from adaptreid.pseudo.selection import select_clusters

    torch.zeros(1) @ torch.zeros(1)
    x, pid, cam = synthetic_reid(n)
    out: dict = {"n": n, "ranking_path": ranking, "base_gb": _peak_gb(), "stages": {}}

    def stage(name, fn):
        t0 = time.perf_counter()
        res = fn()
        out["stages"][name] = {
            "seconds": time.perf_counter() - t0,
            "rss_after_gb": _rss_gb(),
            "peak_so_far_gb": _peak_gb(),
        }
        if verbose:
            print(name, out["stages"][name], file=sys.stderr, flush=True)
        return res

    t_all = time.perf_counter()
    if ranking == "shared":
        jac, table = stage(
            "jaccard",
            lambda: jaccard_with_neighbors(x, K1, K2, num_neighbors=2 * ETA + 1, verbose=verbose),
        )
    else:
        jac, table = stage("jaccard", lambda: jaccard_distance(x, K1, K2, verbose=verbose)), None
    out["nnz_per_row"] = jac.nnz / n
    db = stage(
        "dbscan",
        lambda: cluster(distance=jac, method="dbscan", eps=EPS, min_samples=MIN_SAMPLES),
    )
    hd = stage(
        "hdbscan",
        lambda: cluster(distance=jac, method="hdbscan", min_cluster_size=MIN_CLUSTER_SIZE),
    )
    sel = stage(
        "select",
        lambda: (select_clusters(db, cam, min_size=4), select_clusters(hd, cam, min_size=4)),
    )
    if table is None:
        ranked = stage("ranking", lambda: ranked_neighbors(jac, 2 * ETA, features=x))
    else:
        ranked = stage("ranking", lambda: ranked_neighbors(jac, 2 * ETA, neighbors=table))
    out["seconds_total"] = time.perf_counter() - t_all
    out["peak_gb"] = _peak_gb()
    for name, lab, (_kept, info) in (("dbscan", db, sel[0]), ("hdbscan", hd, sel[1])):
        out[name] = {
            "clusters": int(lab.max() + 1),
            "outliers": int((lab < 0).sum()),
            "clusters_after_selection": info["clusters_after"],
            "images_kept": info["images_kept"],
            "ari_vs_identities": float(adjusted_rand_score(pid, lab)),
        }
    # rows whose stored neighbours (other than the row itself, distance < 1) are fewer than
    # 2 eta: ranked_neighbors fills them by euclidean rank (the Jaccard search's table, or with
    # --ranking search an exact euclidean top-k over all the features)
    rows = np.repeat(np.arange(n), np.diff(jac.indptr))
    ok = (jac.indices != rows) & (jac.data < 1.0)
    out["ranking_rows_short"] = int((np.bincount(rows[ok], minlength=n) < 2 * ETA).sum())
    del rows, ok
    valid = ranked[:, 0] >= 0
    out["ranking"] = {
        "shape": list(ranked.shape),
        "rank1_same_identity": float((pid[ranked[valid, 0]] == pid[valid]).mean()),
        "rows_filled_by_euclidean": int((ranked < 0).any(1).sum()),
    }
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--profile", action="store_true", help="cProfile the step (to stderr)")
    ap.add_argument("--verbose", action="store_true", help="progress per stage (stderr)")
    ap.add_argument(
        "--ranking",
        choices=["shared", "search"],
        default="shared",
        help="the ranking table from the Jaccard search's neighbours (shared), or a second "
        "exact search (search: the path before issue 27)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        if args.profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            res = prof.runcall(worker, args.worker, args.verbose, args.ranking)
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
            print(s.getvalue(), file=sys.stderr)
        else:
            res = worker(args.worker, args.verbose, args.ranking)
        print(json.dumps(res))
        return

    results = {"machine": machine(), "runs": {}}
    if args.out.exists():
        results["runs"] = json.loads(args.out.read_text()).get("runs", {})
    cmd = [sys.executable, __file__, "--worker", str(args.n)]
    cmd += ["--profile"] * args.profile + ["--verbose"] * args.verbose
    cmd += ["--ranking", args.ranking]
    load = os.getloadavg()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed with exit code {proc.returncode}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(
        {
            "date": datetime.datetime.now().isoformat(timespec="minutes"),
            "command": " ".join(["python"] + sys.argv),
            "load_avg_at_start": load,
            "machine": results["machine"],
        }
    )
    key = f"{args.n}_ranking_{args.ranking}"  # a key of N alone: a run before issue 27 (search)
    results["runs"][key] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(markdown(res))


def markdown(r: dict) -> str:
    lines = ["| stage | time (s) | RSS after (GB) | peak so far (GB) |", "|---|---|---|---|"]
    for name, s in r["stages"].items():
        lines.append(
            f"| {name} | {s['seconds']:.1f} | {s['rss_after_gb']:.2f} | {s['peak_so_far_gb']:.2f} |"
        )
    lines.append(f"| **total** | **{r['seconds_total']:.1f}** | | **{r['peak_gb']:.2f}** |")
    for name in ("dbscan", "hdbscan"):
        c = r[name]
        lines.append(
            f"\n{name}: {c['clusters']} clusters, {c['outliers']} outliers, "
            f"{c['clusters_after_selection']} kept by selection ({c['images_kept']} images), "
            f"ARI vs identities {c['ari_vs_identities']:.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
