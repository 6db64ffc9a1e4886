"""Approximate neighbours against the exact path at scale (issue 27, "A million images").

On synthetic N x 2048 features with identities and cameras (``benchmarks/kreciprocal.py``'s
generator, as ``pseudo_step.py`` uses it; default N = 200,000), each path in its own fresh
process (so that its peak RSS is its own):

* ``exact``: ``jaccard_with_neighbors(x, k1=20, k2=6, num_neighbors=2 eta + 1,
  neighbors="exact")`` (the blocked exact top-k), then DBSCAN (eps 0.6, min_samples 4) and
  HDBSCAN (min_cluster_size 10) on the Jaccard distance and PAST's ranking table
  (``ranked_neighbors(jac, 2 eta, neighbors=table)``, eta = 20) from the same pass;
* ``approximate``: the same with ``neighbors=NeighborSettings(mode="approximate", ...)``
  (inverted lists from a faiss k-means, each list's rows searched against its ``--nprobe``
  nearest lists' by dense products with exact distances; ``--nlist``, ``--nprobe``,
  ``--spill``, ``--drop``).

Compared: top-k recall of the neighbour table (k = k1 + 1, the encoding's columns, and
2 eta + 1, the ranking's; the row itself included), the k-th distance ratio, the row maxima
(approximate / exact), the Jaccard entries' error (over the union of the stored pairs; a
missing entry is 1), the adjusted Rand index between the exact and the approximate DBSCAN
(target >= 0.99) and HDBSCAN labels, the ranking tables' agreement, and each path's time and
peak memory (``ru_maxrss`` of its process: interpreter, torch and the features included;
``base`` = the RSS once the features are generated).

Without ``--exact`` (e.g. N = 1,000,000, where the exact path takes hours), recall and the
row maxima are measured on ``--sample-rows`` random rows whose exact top-k is computed
against all N (a (rows x N) product), and the labels are compared with the synthetic
identities only.

Run (heavy: under the shared lock)::

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/topk_approx.py --n 20000
    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/topk_approx.py            # 200k
    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/topk_approx.py --n 1000000 \\
        --no-exact

``--keep DIR`` keeps each path's arrays (neighbour table, labels, Jaccard CSR) in DIR and
``--reuse-exact`` reads the exact path's from there instead of running it again (to try other
``--nprobe`` values). Writes ``benchmarks/results/topk_approx.json`` (one entry per N and
settings) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from kreciprocal import machine, synthetic_reid  # noqa: E402

RESULTS = HERE / "results" / "topk_approx.json"
K1, K2, ETA = 20, 6, 20
EPS, MIN_SAMPLES, MIN_CLUSTER_SIZE = 0.6, 4, 10


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# --------------------------------------------------------------------------------------------
# one path, in a fresh process
# --------------------------------------------------------------------------------------------


def worker(args) -> dict:
    import scipy.sparse as sp
    import torch

    import adaptreid.pseudo.kreciprocal as kr
    from adaptreid.pseudo.clustering import cluster
    from adaptreid.pseudo.ranking import ranked_neighbors
    from adaptreid.pseudo.settings import NeighborSettings

    torch.zeros(1) @ torch.zeros(1)
    x, pid, _cam = synthetic_reid(args.n, rank=args.rank or None)
    out: dict = {"path": args.worker, "n": args.n, "base_gb": _peak_gb(), "seconds": {}}
    if args.worker == "exact":
        neighbors = NeighborSettings(mode="exact")
    else:
        neighbors = NeighborSettings(
            mode="approximate",
            nlist=args.nlist,
            nprobe=args.nprobe,
            drop_components=args.drop,
            spill=args.spill,
            train_per_list=args.train_per_list,
            niter=args.niter,
        )
    infos, rowmax = [], []
    real_knn, real_neighbours = kr.approximate_knn, kr.neighbours

    def spy_knn(*a, **kw):  # the approximate path's own breakdown and row maxima
        res = real_knn(*a, **kw)
        infos.append(res[2])
        rowmax.append(res[1].numpy().copy())
        return res

    def spy_neighbours(*a, **kw):  # the exact path's row maxima
        res = real_neighbours(*a, **kw)
        rowmax.append(res[1].numpy().copy())
        return res

    kr.approximate_knn, kr.neighbours = spy_knn, spy_neighbours
    t_all = t0 = time.perf_counter()
    jac, table = kr.jaccard_with_neighbors(
        x, K1, K2, num_neighbors=2 * ETA + 1, neighbors=neighbors, verbose=args.verbose
    )
    out["seconds"]["jaccard"] = time.perf_counter() - t0
    out["peak_after_jaccard_gb"] = _peak_gb()
    if infos:
        out["approximate"] = infos[0]
    t0 = time.perf_counter()
    ranked = ranked_neighbors(jac, 2 * ETA, neighbors=table)
    out["seconds"]["ranking"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    db = cluster(distance=jac, method="dbscan", eps=EPS, min_samples=MIN_SAMPLES)
    out["seconds"]["dbscan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hd = cluster(distance=jac, method="hdbscan", min_cluster_size=MIN_CLUSTER_SIZE)
    out["seconds"]["hdbscan"] = time.perf_counter() - t0
    out["seconds"]["total"] = time.perf_counter() - t_all
    out["peak_gb"] = _peak_gb()
    out["nnz_per_row"] = jac.nnz / args.n

    from sklearn.metrics import adjusted_rand_score

    out["dbscan"] = {
        "clusters": int(db.max() + 1),
        "outliers": int((db < 0).sum()),
        "ari_vs_identities": float(adjusted_rand_score(pid, db)),
    }
    out["hdbscan"] = {
        "clusters": int(hd.max() + 1),
        "outliers": int((hd < 0).sum()),
        "ari_vs_identities": float(adjusted_rand_score(pid, hd)),
    }
    valid = ranked[:, 0] >= 0
    out["ranking_rank1_same_identity"] = float((pid[ranked[valid, 0]] == pid[valid]).mean())
    if args.sample_rows:  # exact top-k of sampled rows against all rows
        rng = np.random.default_rng(1)
        rows = np.sort(rng.choice(args.n, min(args.sample_rows, args.n), replace=False))
        from adaptreid.pseudo.topk import topk_neighbors

        t0 = time.perf_counter()
        ed, ei = topk_neighbors(x[rows], 2 * ETA + 1, y=x)
        # the rows' own distance is not exactly 0 in this (query x all) product
        out["sample"] = _sample_metrics(x, rows, ed, ei, table, rowmax[0])
        out["seconds"]["sample_exact"] = time.perf_counter() - t0
    if args.keep:
        keep = Path(args.keep)
        keep.mkdir(parents=True, exist_ok=True)
        np.savez(
            keep / f"{args.worker}_{args.n}{_tag(args)}.npz",
            table=table.astype(np.int32),
            rowmax=rowmax[0],
            dbscan=db,
            hdbscan=hd,
            ranked=ranked.astype(np.int32),
        )
        sp.save_npz(keep / f"{args.worker}_{args.n}{_tag(args)}_jaccard.npz", jac, compressed=False)
    return out


def _tag(args) -> str:
    return f"_rank{args.rank}" if args.rank else ""


def _sample_metrics(x, rows, ed, ei, table, rowmax) -> dict:
    """Recall and k-th distance ratio of ``table`` on sampled rows against their exact top-k
    (the row itself counted as found), and the row maxima against exact ones."""
    import torch

    from adaptreid.pseudo.topk import sq_norms

    xt = torch.from_numpy(x)
    xn = sq_norms(xt)
    res = {"rows": len(rows)}
    for k in (K1 + 1, 2 * ETA + 1):
        hits = [len(np.intersect1d(table[r, :k], ei[i, :k])) for i, r in enumerate(rows)]
        res[f"recall@{k}"] = float(np.mean(hits) / k)
        xr = xt[rows]
        far = torch.from_numpy(table[rows, k - 1].astype(np.int64))
        d_apx = (xn[rows] + xn[far] - 2 * (xr * xt[far]).sum(1)).clamp(min=0).numpy()
        res[f"kth_distance_ratio@{k}"] = float(np.mean(d_apx / np.maximum(ed[:, k - 1], 1e-12)))
    exact_max = np.empty(len(rows), np.float32)
    for s in range(0, len(rows), 256):
        r = rows[s : s + 256]
        d = torch.addmm(xn.unsqueeze(0), xt[r], xt.T, alpha=-2.0) + xn[r].unsqueeze(1)
        exact_max[s : s + len(r)] = d.amax(1).numpy()
    ratio = rowmax[rows] / exact_max
    res["rowmax_ratio"] = {
        "min": float(ratio.min()),
        "median": float(np.median(ratio)),
        "max": float(ratio.max()),
    }
    return res


# --------------------------------------------------------------------------------------------
# comparison of the two paths' arrays
# --------------------------------------------------------------------------------------------


def compare(keep: Path, n: int, tag: str = "") -> dict:
    import scipy.sparse as sp
    from sklearn.metrics import adjusted_rand_score

    e = np.load(keep / f"exact_{n}{tag}.npz")
    a = np.load(keep / f"approximate_{n}{tag}.npz")
    res = {}
    for k in (K1 + 1, 2 * ETA + 1):
        te, ta = np.sort(e["table"][:, :k], 1), np.sort(a["table"][:, :k], 1)
        hits = 0
        for s in range(0, n, 20000):  # sorted rows: |intersection| by a merge per row
            for r_e, r_a in zip(te[s : s + 20000], ta[s : s + 20000]):
                hits += len(np.intersect1d(r_e, r_a, assume_unique=True))
        res[f"recall@{k}"] = hits / (n * k)
    ratio = a["rowmax"] / np.maximum(e["rowmax"], 1e-12)
    res["rowmax_ratio"] = {
        "min": float(ratio.min()),
        "median": float(np.median(ratio)),
        "max": float(ratio.max()),
    }
    je = sp.load_npz(keep / f"exact_{n}{tag}_jaccard.npz").tocsr()
    ja = sp.load_npz(keep / f"approximate_{n}{tag}_jaccard.npz").tocsr()
    # similarities 1 - d on the stored entries (a missing entry is d = 1, similarity 0):
    # their difference is the distances' difference over the union of the stored pairs
    se = sp.csr_matrix((1.0 - je.data.astype(np.float64), je.indices, je.indptr), je.shape)
    sa = sp.csr_matrix((1.0 - ja.data.astype(np.float64), ja.indices, ja.indptr), ja.shape)
    pattern_e = sp.csr_matrix((np.ones(je.nnz), je.indices, je.indptr), je.shape)
    pattern_a = sp.csr_matrix((np.ones(ja.nnz), ja.indices, ja.indptr), ja.shape)
    union = (pattern_e + pattern_a).nnz
    both = pattern_e.multiply(pattern_a).nnz
    diff = abs(se - sa)
    res["jaccard"] = {
        "stored_exact": int(je.nnz),
        "stored_approximate": int(ja.nnz),
        "stored_in_both": int(both),
        "union": int(union),
        "max_abs_error": float(diff.max()),
        "mean_abs_error_over_union": float(diff.sum() / union),
        "entries_off_by_more_than_0.01": int((diff > 0.01).nnz),
    }
    res["ari_dbscan_exact_vs_approximate"] = float(adjusted_rand_score(e["dbscan"], a["dbscan"]))
    res["ari_hdbscan_exact_vs_approximate"] = float(adjusted_rand_score(e["hdbscan"], a["hdbscan"]))
    res["ranking_entries_equal"] = float((e["ranked"] == a["ranked"]).mean())
    return res


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def _run(path: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", path, "--n", str(args.n)]
    cmd += ["--nlist", str(args.nlist), "--nprobe", str(args.nprobe)]
    cmd += ["--keep", str(args.keep), "--sample-rows", str(args.sample_rows)]
    cmd += ["--rank", str(args.rank), "--drop", str(args.drop), "--spill", str(args.spill)]
    cmd += ["--train-per-list", str(args.train_per_list), "--niter", str(args.niter)]
    cmd += ["--verbose"] * args.verbose
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{path} worker failed with exit code {proc.returncode}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    print(f"{path}: {json.dumps(res)}", file=sys.stderr, flush=True)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: round(4 sqrt N))")
    ap.add_argument("--nprobe", type=int, default=0, help="lists per query (0: the default)")
    ap.add_argument(
        "--rank",
        type=int,
        default=0,
        help="identity centres in a random subspace of this dimension (0: all d, the default)",
    )
    ap.add_argument("--train-per-list", type=int, default=32, help="k-means sample per list")
    ap.add_argument("--niter", type=int, default=10, help="k-means iterations")
    ap.add_argument(
        "--drop", type=int, default=-1, help="components out of the list space (-1: by the gap)"
    )
    ap.add_argument("--spill", type=int, default=2, help="lists each row belongs to")
    ap.add_argument("--no-exact", dest="exact", action="store_false", help="skip the exact path")
    ap.add_argument("--reuse-exact", action="store_true", help="the exact arrays of --keep")
    ap.add_argument("--sample-rows", type=int, default=0, help="recall on sampled rows")
    ap.add_argument("--keep", type=Path, default=None, help="folder for the arrays")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", choices=["exact", "approximate"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.keep = None if str(args.keep) == "None" else args.keep
        print(json.dumps(worker(args)))
        return

    if not args.exact and not args.sample_rows:
        args.sample_rows = 2000
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="topk_approx_")
        args.keep = Path(tmp.name)
    load = os.getloadavg()
    t0 = time.perf_counter()
    entry = {
        "n": args.n,
        "identity_rank": args.rank or "d (the generator's default)",
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": " ".join(["python"] + sys.argv),
        "load_avg_at_start": load,
        "machine": machine(),
        "memory": "peak = ru_maxrss of each path's own fresh process (features included)",
    }
    entry["approximate"] = _run("approximate", args)
    if args.exact:
        reuse = args.reuse_exact and (args.keep / f"exact_{args.n}{_tag(args)}.npz").exists()
        entry["exact"] = "reused (an earlier run's arrays)" if reuse else _run("exact", args)
        entry["comparison"] = compare(args.keep, args.n, _tag(args))
    entry["wall_s"] = time.perf_counter() - t0
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    st = entry["approximate"]["approximate"]
    key = f"{args.n}_nlist{st['nlist']}_nprobe{st['nprobe']}"
    key += (f"_rank{args.rank}" if args.rank else "") + ("" if args.exact else "_noexact")
    key += "" if args.drop == -1 else f"_drop{args.drop}"
    key += f"_spill{args.spill}"
    key += f"_train{args.train_per_list}x{args.niter}"
    results["runs"][key] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(markdown(entry))
    if tmp is not None:
        tmp.cleanup()


def markdown(r: dict) -> str:
    a = r["approximate"]
    info = a["approximate"]
    lines = [
        f"N = {r['n']:,}, nlist {info['nlist']}, nprobe {info['nprobe']}, "
        f"components dropped {info['dropped']}, largest list {info['largest_list']}, "
        f"pairs {info['pairs']:.4f} of N^2",
        "",
        "| path | Jaccard | ranking | DBSCAN | HDBSCAN | total | peak RSS | base RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    paths = [("approximate", a)] + (
        [("exact", r["exact"])] if isinstance(r.get("exact"), dict) else []
    )
    for name, p in paths:
        s = p["seconds"]
        lines.append(
            f"| {name} | {s['jaccard']:.1f} s | {s['ranking']:.1f} s | {s['dbscan']:.1f} s | "
            f"{s['hdbscan']:.1f} s | {s['total']:.1f} s | {p['peak_gb']:.2f} GB | "
            f"{p['base_gb']:.2f} GB |"
        )
    lines.append("")
    lines.append(
        "approximate breakdown: " + ", ".join(f"{k} {v:.1f} s" for k, v in info["seconds"].items())
    )
    c = r.get("comparison") or a.get("sample")
    if c:
        lines.append("comparison: " + json.dumps(c))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
