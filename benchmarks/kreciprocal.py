"""Benchmark of the k-reciprocal engine (issue 4): time and peak memory, sparse vs dense.

Synthetic re-ID-like features: 2048-d, L2-normalised, one centre per identity (~17 images per
identity, like Market-1501), a per-camera offset (6 cameras) and isotropic noise. Cases:

* ``jaccard``: square Jaccard distance (k1 = 20, k2 = 6) at N = 12,936 (Market-1501 train),
  19,281, 100,000 and 200,000;
* ``rerank``: query x gallery re-ranking, 3,368 x 15,913 (Market-1501 test).

Each measurement runs in a fresh subprocess, so that its peak RSS (``ru_maxrss``) is its own;
the features are generated inside it (their RSS is reported separately as ``base``). "dense" is
the same algorithm written the textbook way (N x N distance, full argsort, dense V, inverted
index; see ``dense_kreciprocal``), run side by side where it fits in memory. Both
implementations' outputs on the first rows are compared (``max |sparse - dense|``).

Run (heavy: always under the shared lock)::

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/kreciprocal.py            # all
    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/kreciprocal.py --cases jaccard-12936

Writes ``benchmarks/results/kreciprocal.json`` and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "kreciprocal.json"

# name -> (kind, n_query, n_gallery or N, dense runs?, repeats)
CASES = {
    "jaccard-12936": ("jaccard", 0, 12_936, True, 5),
    "jaccard-19281": ("jaccard", 0, 19_281, True, 5),
    "rerank-3368x15913": ("rerank", 3_368, 15_913, True, 5),
    "jaccard-100000": ("jaccard", 0, 100_000, False, 1),
    "jaccard-200000": ("jaccard", 0, 200_000, False, 1),
}
K1, K2, LAMBDA = 20, 6, 0.3
CHECK_ROWS = 256  # rows of the output compared between sparse and dense


# --------------------------------------------------------------------------------------------
# synthetic features
# --------------------------------------------------------------------------------------------


def synthetic_reid(n, d=2048, seed=0, per_identity=17, n_cameras=6, chunk=8192, rank=None):
    """``(x, pid, cam)``: (n, d) float32 L2-normalised features (identity centre + camera
    offset + noise) and the identities and cameras drawn for them.

    The identity centres are independent random directions of all d dimensions (default):
    with more identities than dimensions, no identity is nearer to a given one than any
    other. ``rank``: the centres are drawn in a random ``rank``-dimensional subspace instead
    (lower intrinsic dimension: identities have nearer and farther ones, as people who look
    alike), the cameras and the noise as before."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // per_identity)
    if rank is None:
        centres = rng.standard_normal((n_ids, d), dtype=np.float32)
    else:
        basis = np.linalg.qr(rng.standard_normal((d, rank)))[0].T.astype(np.float32)
        centres = rng.standard_normal((n_ids, rank), dtype=np.float32) @ basis
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cams = rng.standard_normal((n_cameras, d), dtype=np.float32)
    cams *= 0.5 / np.linalg.norm(cams, axis=1, keepdims=True)
    pid = rng.integers(0, n_ids, n)
    cam = rng.integers(0, n_cameras, n)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        b = centres[pid[s:e]] + cams[cam[s:e]]
        b += rng.standard_normal((e - s, d), dtype=np.float32) * np.float32(0.7 / np.sqrt(d))
        x[s:e] = b / np.linalg.norm(b, axis=1, keepdims=True)
    return x, pid, cam


def synthetic_features(n, d=2048, seed=0, **kwargs):
    """The features of :func:`synthetic_reid` alone."""
    return synthetic_reid(n, d, seed, **kwargs)[0]


# --------------------------------------------------------------------------------------------
# dense textbook implementation of the same algorithm (Zhong et al. 2017), for comparison
# --------------------------------------------------------------------------------------------


def _reciprocal(initial_rank, i, k):
    fwd = initial_rank[i, : k + 1]
    back = initial_rank[fwd, : k + 1]
    return fwd[np.where(back == i)[0]]


def dense_kreciprocal(x, query_num, k1=K1, k2=K2, lambda_value=LAMBDA):
    """The reference algorithm on dense (q+g) x (q+g) matrices.

    Returns the Jaccard distance of the first ``query_num`` rows against all columns (square
    case: query_num = N) and, for re-ranking, the final q x g distance (else None).
    """
    import torch

    xt = torch.from_numpy(x)
    n = len(x)
    sq = (xt * xt).sum(1)
    dist = torch.addmm(sq[None, :], xt, xt.T, alpha=-2.0)
    dist += sq[:, None]
    dist.clamp_(min=0.0).fill_diagonal_(0.0)
    dist = dist.numpy()
    dist /= dist.max(axis=0)  # the reference: transpose(dist / max(dist, axis=0))
    original = dist.T
    initial_rank = np.argsort(original, axis=1).astype(np.int32)
    half = int(np.around(k1 / 2))

    v = np.zeros((n, n), np.float32)
    for i in range(n):
        r = _reciprocal(initial_rank, i, k1)
        exp = r
        for c in r:
            rc = _reciprocal(initial_rank, c, half)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                exp = np.append(exp, rc)
        exp = np.unique(exp)
        w = np.exp(-original[i, exp])
        v[i, exp] = w / np.sum(w)
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = np.mean(v[initial_rank[i, :k2]], axis=0)
        v = v_qe
        del v_qe
    del initial_rank
    rows, cols = np.nonzero(v)
    order = np.argsort(cols, kind="stable")
    inv_index = np.split(rows[order], np.searchsorted(cols[order], np.arange(1, n)))
    jaccard = np.zeros((query_num, n), np.float32)
    for i in range(query_num):
        temp_min = np.zeros(n, np.float32)
        for j in np.flatnonzero(v[i]):
            img = inv_index[j]
            temp_min[img] += np.minimum(v[i, j], v[img, j])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    del v
    if query_num == n:
        return jaccard, None
    final = jaccard * (1 - lambda_value) + original[:query_num] * lambda_value
    return None, np.ascontiguousarray(final[:, query_num:])


# --------------------------------------------------------------------------------------------
# one measurement (child process)
# --------------------------------------------------------------------------------------------


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def worker(case: str, impl: str, check_file: str | None) -> dict:
    kind, nq, ng, _, _ = CASES[case]
    n = nq + ng
    x = synthetic_features(n, seed=0)
    import torch

    from adaptreid.pseudo.kreciprocal import (
        jaccard_distance,
        k_reciprocal_rerank,
        sparse_distance_to_dense,
    )

    torch.zeros(1) @ torch.zeros(1)  # load the BLAS before measuring
    base = _peak_gb()
    t0 = time.perf_counter()
    extra = {}
    if impl == "sparse" and kind == "jaccard":
        jac = jaccard_distance(x, K1, K2)
        out = sparse_distance_to_dense(jac[:CHECK_ROWS])  # missing entries are 1
        extra = {"nnz_per_row": jac.nnz / n}
    elif impl == "sparse":
        out = k_reciprocal_rerank(x[:nq], x[nq:], K1, K2, LAMBDA)[:CHECK_ROWS]
    elif kind == "jaccard":
        out = dense_kreciprocal(x, n)[0][:CHECK_ROWS]
    else:
        out = dense_kreciprocal(x, nq)[1][:CHECK_ROWS]
    seconds = time.perf_counter() - t0
    if check_file:
        np.save(check_file, np.asarray(out, np.float32))
    return {"seconds": seconds, "peak_gb": _peak_gb(), "base_gb": base, **extra}


def run_child(case: str, impl: str, check_file: str | None, profile: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, impl]
    if check_file:
        cmd += ["--check-file", check_file]
    if profile:
        cmd += ["--profile"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    if profile:
        print(proc.stderr, file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def machine() -> dict:
    import torch

    from adaptreid.runtime.precision import cpu_model

    model = cpu_model()  # model name + family / model number + bf16 flags
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(mem, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--impl", nargs="*", default=["sparse", "dense"], choices=["sparse", "dense"])
    ap.add_argument("--repeats", type=int, default=None, help="override the per-case repeats")
    ap.add_argument("--no-dense", action="store_true", help="sparse engine only")
    ap.add_argument("--profile", action="store_true", help="cProfile the sparse runs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--check-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        case, impl = args.worker
        if args.profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            res = prof.runcall(worker, case, impl, args.check_file)
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
            print(s.getvalue(), file=sys.stderr)
        else:
            res = worker(case, impl, args.check_file)
        print(json.dumps(res))
        return

    results = {"machine": machine(), "command": " ".join(["python"] + sys.argv), "cases": {}}
    if args.out.exists():
        old = json.loads(args.out.read_text())
        results["cases"] = old.get("cases", {})
    results["machine"]["load_avg_at_start"] = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="kreciprocal-bench-")
    for case in args.cases:
        kind, nq, ng, dense_fits, repeats = CASES[case]
        repeats = args.repeats or repeats
        entry = {
            "kind": kind,
            "n_query": nq,
            "n": nq + ng,
            "repeats": repeats,
            "date": datetime.datetime.now().isoformat(timespec="minutes"),
            "command": results["command"],
            "load_avg_at_start": os.getloadavg(),
        }
        impls = [i for i in args.impl if i == "sparse" or (dense_fits and not args.no_dense)]
        for impl in impls:
            runs = []
            for r in range(repeats if impl == "sparse" else 1):
                check = os.path.join(tmp, f"{case}-{impl}.npy") if r == 0 else None
                res = run_child(case, impl, check, args.profile and impl == "sparse")
                print(case, impl, res, flush=True)
                if "error" in res:
                    runs = [res]
                    break
                runs.append(res)
            if "error" in runs[0]:
                entry[impl] = runs[0]
                continue
            entry[impl] = {
                "seconds_median": statistics.median(r["seconds"] for r in runs),
                "seconds_min": min(r["seconds"] for r in runs),
                "seconds_all": [round(r["seconds"], 2) for r in runs],
                "peak_gb": max(r["peak_gb"] for r in runs),
                "base_gb": min(r["base_gb"] for r in runs),
                **{k: v for k, v in runs[0].items() if k not in ("seconds", "peak_gb", "base_gb")},
            }
        files = [os.path.join(tmp, f"{case}-{i}.npy") for i in ("sparse", "dense")]
        if all(os.path.exists(f) for f in files):
            a, b = (np.load(f) for f in files)
            entry["max_abs_diff_first_rows"] = float(np.abs(a - b).max())
        results["cases"][case] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [
        "| case | N (q x g) | sparse time (s) | sparse peak RSS (GB) | dense time (s) "
        "| dense peak RSS (GB) | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, e in results["cases"].items():
        size = f"{e['n_query']:,} x {e['n'] - e['n_query']:,}" if e["n_query"] else f"{e['n']:,}"
        cells = [case, size]
        for impl in ("sparse", "dense"):
            r = e.get(impl)
            if r is None:
                cells += ["-", "-"]
            elif "error" in r:
                cells += [f"failed: {r['error']}", "-"]
            else:
                runs = len(r["seconds_all"])
                t = f"{r['seconds_median']:.1f}"
                if runs > 1:
                    t += f" (median of {runs}; min {r['seconds_min']:.1f})"
                else:
                    t += " (1 run)"
                cells += [t, f"{r['peak_gb']:.2f}"]
        diff = e.get("max_abs_diff_first_rows")
        cells.append("-" if diff is None else f"{diff:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
