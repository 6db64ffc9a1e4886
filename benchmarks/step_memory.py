"""Where a pseudo-label step's memory goes, stage by stage (issue 27, "A million images").

On the synthetic N x 2048 features of ``benchmarks/kreciprocal.py`` (as ``topk_approx.py``),
in one process: the Jaccard distance with the approximate neighbours (its three parts: the
neighbour search, the k-reciprocal encoding V, the Jaccard sums), PAST's ranking table from
the same search, DBSCAN and HDBSCAN, as ``topk_approx.py``'s approximate path runs them. A
thread samples the resident set size (``/proc/self/statm``) every 20 ms; each stage reports
its RSS before, its peak and its RSS after.

``--before REV`` also runs ``ranked_neighbors`` as it was at the git revision REV (read with
``git show``), on the same Jaccard matrix and table, then today's again: the ranking stage's
peak before and after a change, side by side in one process.

Run (heavy: under the shared lock)::

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/step_memory.py --n 200000 \\
        --before d8dbc42~1

Writes ``benchmarks/results/step_memory.json`` (one entry per N) and prints the stages.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from kreciprocal import machine, synthetic_reid  # noqa: E402

RESULTS = HERE / "results" / "step_memory.json"
PAGE = os.sysconf("SC_PAGE_SIZE")
K1, K2, ETA = 20, 6, 20


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e9


class Sampler:
    """The largest RSS seen while each named stage runs (a daemon thread, every 20 ms)."""

    def __init__(self) -> None:
        self.stage = "start"
        self.peak: dict[str, float] = {}
        self.rows: list[dict] = []
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while True:
            s, r = self.stage, rss_gb()
            self.peak[s] = max(self.peak.get(s, 0.0), r)
            time.sleep(0.02)

    def run(self, name: str, f, *a, **kw):
        prev = self.stage
        time.sleep(0.1)
        before, t0 = rss_gb(), time.perf_counter()
        self.stage = name
        out = f(*a, **kw)
        time.sleep(0.1)
        self.stage = prev
        # a stage's peak counts in the stage around it (the Jaccard's three parts)
        self.peak[prev] = max(self.peak.get(prev, 0.0), self.peak.get(name, 0.0))
        row = {
            "stage": name,
            "rss_before_gb": round(before, 3),
            "peak_gb": round(max(self.peak.get(name, 0.0), rss_gb()), 3),
            "rss_after_gb": round(rss_gb(), 3),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        self.rows.append(row)
        print(
            f"{name}: RSS before {row['rss_before_gb']:.2f} GB, peak {row['peak_gb']:.2f}, "
            f"after {row['rss_after_gb']:.2f}; {row['seconds']} s",
            flush=True,
        )
        return out

    def wrap(self, name: str, f):
        return lambda *a, **kw: self.run(name, f, *a, **kw)


def ranking_at(rev: str):
    """``ranked_neighbors`` as adaptreid/pseudo/ranking.py was at git revision ``rev``."""
    src = subprocess.run(
        ["git", "show", f"{rev}:adaptreid/pseudo/ranking.py"],
        cwd=HERE.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("ranking_before", f.name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    os.unlink(f.name)
    return mod.ranked_neighbors


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--before", default="", help="git revision of ranking.py to compare")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    sampler = Sampler()
    import adaptreid.pseudo.kreciprocal as kr
    from adaptreid.pseudo.clustering import cluster
    from adaptreid.pseudo.ranking import ranked_neighbors
    from adaptreid.pseudo.settings import NeighborSettings

    before = ranking_at(args.before) if args.before else None
    entry = {
        "n": args.n,
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": " ".join(["python"] + sys.argv),
        "machine": machine(),
        "memory": "RSS of this one process, sampled every 20 ms (features included)",
    }
    x, _pid, _cam = synthetic_reid(args.n)
    entry["features_gb"] = round(x.nbytes / 1e9, 3)
    entry["rss_with_features_gb"] = round(rss_gb(), 3)
    print(f"features {entry['features_gb']} GB; RSS {entry['rss_with_features_gb']:.2f} GB")
    kr.approximate_knn = sampler.wrap("jaccard: neighbour search", kr.approximate_knn)
    kr._encoding = sampler.wrap("jaccard: encoding V", kr._encoding)
    kr._jaccard_square = sampler.wrap("jaccard: sums", kr._jaccard_square)
    jac, table = sampler.run(
        "jaccard (all three)",
        kr.jaccard_with_neighbors,
        x,
        K1,
        K2,
        num_neighbors=2 * ETA + 1,
        neighbors=NeighborSettings(mode="approximate"),
    )
    entry["stored_per_row"] = jac.nnz / args.n
    sampler.run("ranking table", ranked_neighbors, jac, 2 * ETA, neighbors=table)
    sampler.run("DBSCAN", cluster, distance=jac, method="dbscan", eps=0.6, min_samples=4)
    sampler.run("HDBSCAN", cluster, distance=jac, method="hdbscan", min_cluster_size=10)
    if before is not None:
        sampler.run(f"ranking table at {args.before}", before, jac, 2 * ETA, neighbors=table)
        sampler.run("ranking table (again)", ranked_neighbors, jac, 2 * ETA, neighbors=table)
    entry["stages"] = sampler.rows
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    results["runs"][str(args.n)] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
