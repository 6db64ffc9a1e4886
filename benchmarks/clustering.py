"""Benchmark of the clustering step (issue 16): HDBSCAN on the sparse Jaccard graph and k-means
at k = N / 15, adaptreid against its peers, side by side in one run.

Cases (synthetic re-ID-like 2048-d features of ``benchmarks/kreciprocal.py``):

* ``hdbscan-<N>``: HDBSCAN (min_cluster_size 10, PAST's S_min) on the k-reciprocal Jaccard
  distance (k1 = 20, k2 = 6). The Jaccard CSR is computed once by the driver (not timed) and
  saved; each measurement loads it in a fresh process. Implementations: ``sparse``
  (``adaptreid.pseudo.hdbscan.hdbscan_sparse``), ``sklearn-dense`` (scikit-learn's
  ``HDBSCAN(metric="precomputed")`` on the densified float64 matrix, the old path) and, where
  installed, ``hdbscan-pkg`` (the ``hdbscan`` package on the sparse matrix: its missing
  entries mean "no edge", not 1, so its labels differ; shown for time and memory). The
  labels are compared with the dense path's (equal / adjusted Rand index).
* ``kmeans-<N>``: k-means with k = N // 15 on the features. ``torch`` (adaptreid's default,
  ``adaptreid.pseudo.kmeans.kmeans``), ``sklearn`` (``KMeans(n_init=1)``, the old path) and
  ``faiss`` (``faiss.Kmeans``, 25 iterations, its default), if faiss-cpu is installed. Every
  inertia is recomputed the same way (float64, from the differences).

Each measurement runs in a fresh subprocess; peak memory is its ``ru_maxrss`` (interpreter,
torch and the input included; ``base`` is the RSS once the input is loaded).

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/clustering.py
    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/clustering.py --cases kmeans-12936

Writes ``benchmarks/results/clustering.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from kreciprocal import machine, synthetic_features  # noqa: E402

RESULTS = HERE / "results" / "clustering.json"
CASES = {
    "hdbscan-12936": ("hdbscan", 12_936),
    "hdbscan-5000": ("hdbscan", 5_000),
    "kmeans-12936": ("kmeans", 12_936),
    # other seeds of the same case (features fixed; the k-means seed changes)
    "kmeans-12936-seed1": ("kmeans", 12_936),
    "kmeans-12936-seed2": ("kmeans", 12_936),
}
IMPLS = {
    "hdbscan": ["sparse", "sklearn-dense", "hdbscan-pkg"],
    "kmeans": ["torch", "faiss", "sklearn"],
}
REPEATS = {"sparse": 5, "sklearn-dense": 3, "hdbscan-pkg": 3, "torch": 5, "faiss": 5, "sklearn": 3}
MIN_CLUSTER_SIZE = 10


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _load_csr(path):
    import scipy.sparse as sp

    z = np.load(path)
    return sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))


def _exact_inertia(x, labels):
    x = x.astype(np.float64)
    total = 0.0
    k = labels.max() + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=k)
    centres = sums / np.maximum(counts, 1)[:, None]
    for s in range(0, len(x), 4096):
        d = x[s : s + 4096] - centres[labels[s : s + 4096]]
        total += float((d * d).sum())
    return total


def worker(case: str, impl: str, data: str, out_labels: str | None) -> dict:
    kind, n = CASES[case]
    import torch

    torch.zeros(1) @ torch.zeros(1)
    extra: dict = {}
    if kind == "hdbscan":
        jac = _load_csr(data)
        base = _peak_gb()
        t0 = time.perf_counter()
        if impl == "sparse":
            from adaptreid.pseudo.hdbscan import hdbscan_sparse

            labels = hdbscan_sparse(jac, min_cluster_size=MIN_CLUSTER_SIZE)
        elif impl == "sklearn-dense":
            from sklearn.cluster import HDBSCAN

            # the old adaptreid path: densify (missing entries 1), zero diagonal
            coo = jac.tocoo()
            dense = np.full(jac.shape, 1.0)
            dense[coo.row, coo.col] = coo.data
            del coo
            np.fill_diagonal(dense, 0.0)
            labels = HDBSCAN(
                min_cluster_size=MIN_CLUSTER_SIZE, metric="precomputed", copy=False
            ).fit_predict(dense)
        else:
            import hdbscan

            labels = hdbscan.HDBSCAN(
                min_cluster_size=MIN_CLUSTER_SIZE, metric="precomputed"
            ).fit_predict(jac)
        seconds = time.perf_counter() - t0
        labels = np.asarray(labels)
        extra["clusters"] = int(labels.max() + 1)
        extra["noise"] = int((labels < 0).sum())
    else:
        x = synthetic_features(n, seed=0)
        k = n // 15
        seed = int(case.split("-seed")[1]) if "-seed" in case else 0
        extra["seed"] = seed
        base = _peak_gb()
        t0 = time.perf_counter()
        if impl == "torch":
            from adaptreid.pseudo.kmeans import kmeans

            res = kmeans(x, k, seed=seed)
            labels, extra["n_iter"] = res.labels, res.n_iter
        elif impl == "sklearn":
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x)
            labels, extra["n_iter"] = km.labels_, int(km.n_iter_)
        else:
            import faiss

            km = faiss.Kmeans(x.shape[1], k, niter=25, seed=1234 + seed, verbose=False)
            km.train(x)
            _, idx = km.index.search(x, 1)
            labels, extra["n_iter"] = idx[:, 0], 25
        seconds = time.perf_counter() - t0
        labels = np.asarray(labels, dtype=np.int64)
        # inertia of the returned partition with its mean centres, the same way for all
        extra["inertia"] = _exact_inertia(x, labels)
        extra["clusters"] = int(len(np.unique(labels)))
    if out_labels:
        np.save(out_labels, labels)
    return {"seconds": seconds, "peak_gb": _peak_gb(), "base_gb": base, **extra}


def run_child(case, impl, data, out_labels) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, impl, "--data", data or ""]
    if out_labels:
        cmd += ["--labels", out_labels]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return {"error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _prepare_jaccard(n: int, path: str) -> dict:
    """The Jaccard CSR of the synthetic features, saved for the measurements (not timed)."""
    cmd = [sys.executable, __file__, "--prepare", str(n), path]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare(n: int, path: str) -> dict:
    from adaptreid.pseudo.kreciprocal import jaccard_distance

    t0 = time.perf_counter()
    j = jaccard_distance(synthetic_features(n, seed=0), 20, 6)
    seconds = time.perf_counter() - t0
    np.savez(path, data=j.data, indices=j.indices, indptr=j.indptr, shape=np.array(j.shape))
    return {"nnz": int(j.nnz), "jaccard_seconds": seconds, "jaccard_peak_gb": _peak_gb()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="*", default=["hdbscan-12936", "kmeans-12936"])
    ap.add_argument("--impl", nargs="*", help="only these implementations")
    ap.add_argument("--repeats", type=int, help="override the repeats of every implementation")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    ap.add_argument("--prepare", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare(int(args.prepare[0]), args.prepare[1])))
        return
    if args.worker:
        print(json.dumps(worker(*args.worker, args.data, args.labels)))
        return

    results = {"machine": machine(), "command": " ".join(["python"] + sys.argv), "cases": {}}
    if args.out.exists():
        results["cases"] = json.loads(args.out.read_text()).get("cases", {})
    tmp = tempfile.mkdtemp(prefix="clustering-bench-")
    for case in args.cases:
        kind, n = CASES[case]
        entry = {
            "kind": kind,
            "n": n,
            "date": datetime.datetime.now().isoformat(timespec="minutes"),
            "command": results["command"],
            "load_avg_at_start": os.getloadavg(),
        }
        data = None
        if kind == "hdbscan":
            data = os.path.join(tmp, f"jaccard-{n}.npz")
            entry.update(_prepare_jaccard(n, data))
        else:
            entry["k"] = n // 15
        labels_of = {}
        for impl in IMPLS[kind]:
            if args.impl and impl not in args.impl:
                continue
            peer = {"hdbscan-pkg": "hdbscan", "faiss": "faiss"}.get(impl)
            if peer and importlib.util.find_spec(peer) is None:
                print(f"{case} {impl}: skipped ({peer} is not installed)", flush=True)
                continue
            runs = []
            for r in range(args.repeats or REPEATS[impl]):
                lab = os.path.join(tmp, f"{case}-{impl}.npy") if r == 0 else None
                res = run_child(case, impl, data, lab)
                print(case, impl, res, flush=True)
                runs.append(res)
                if "error" in res:
                    break
                if lab:
                    labels_of[impl] = lab
            if "error" in runs[-1]:
                entry[impl] = runs[-1]
                continue
            entry[impl] = {
                "seconds_median": statistics.median(r["seconds"] for r in runs),
                "seconds_min": min(r["seconds"] for r in runs),
                "seconds_all": [round(r["seconds"], 2) for r in runs],
                "peak_gb": max(r["peak_gb"] for r in runs),
                "base_gb": min(r["base_gb"] for r in runs),
                **{k: v for k, v in runs[0].items() if k not in ("seconds", "peak_gb", "base_gb")},
            }
        if kind == "hdbscan" and "sklearn-dense" in labels_of:
            from sklearn.metrics import adjusted_rand_score

            ref = np.load(labels_of["sklearn-dense"])
            for impl, path in labels_of.items():
                lab = np.load(path)
                from adaptreid.pseudo.cluster_base import relabel

                entry[impl]["labels_equal_dense"] = bool(np.array_equal(relabel(lab), relabel(ref)))
                entry[impl]["ari_vs_dense"] = float(adjusted_rand_score(ref, lab))
        if kind == "kmeans" and "sklearn" in entry and "inertia" in entry["sklearn"]:
            for impl in IMPLS[kind]:
                if impl in entry and "inertia" in entry[impl]:
                    entry[impl]["inertia_vs_sklearn"] = (
                        entry[impl]["inertia"] / entry["sklearn"]["inertia"]
                    )
        results["cases"][case] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "| case | implementation | median time (s) | min (s) | runs | peak RSS (GB) | "
        "base RSS (GB) | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, e in results["cases"].items():
        for impl in IMPLS[e["kind"]]:
            r = e.get(impl)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {case} | {impl} | failed: {r['error']} | | | | | |")
                continue
            if e["kind"] == "hdbscan":
                res = f"{r['clusters']} clusters, {r['noise']} noise"
                if "labels_equal_dense" in r:
                    res += f"; labels == dense: {r['labels_equal_dense']}"
                    res += f" (ARI {r['ari_vs_dense']:.4f})"
            else:
                res = f"inertia {r['inertia']:.2f}, {r['n_iter']} iterations"
                if "inertia_vs_sklearn" in r:
                    res += f" (x{r['inertia_vs_sklearn']:.4f} of scikit-learn's)"
            lines.append(
                f"| {case} | {impl} | {r['seconds_median']:.2f} | {r['seconds_min']:.2f} | "
                f"{len(r['seconds_all'])} | {r['peak_gb']:.2f} | {r['base_gb']:.2f} | {res} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
