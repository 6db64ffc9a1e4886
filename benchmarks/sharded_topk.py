"""Benchmark of the exact top-k neighbour search sharded across torch.distributed ranks
(issue 16): 1 and 2 ranks under torchrun (gloo), against the plain single process and
faiss-cpu's exact ``IndexFlatL2`` search, side by side in one run.

Each rank computes every world-size-th block of the upper block triangle of the N x N
distance matrix and the N x k tables are merged on all ranks
(``adaptreid.pseudo.topk.topk_neighbors(..., distributed=None)``, what
``jaccard_distance`` does by default). On one machine the
ranks share its cores (``torch.set_num_threads(cores // world)`` per rank), so 2 ranks on 2
cores are the same compute as 1 process on 2 cores: the figure of interest here is the cost
of sharding (the merge, the all-gather, load balance); on several machines or GPUs the
O(N^2 d) part divides by the number of ranks.

Measurements (each a fresh process or torchrun launch; time = the top-k call, features
generated before; peak = the largest ``ru_maxrss`` over the ranks):

* ``single``: ``topk_neighbors(x, k)`` in a plain process, all cores;
* ``ranks-1`` / ``ranks-2``: under ``torchrun --nproc_per_node=1/2``;
* ``faiss``: ``IndexFlatL2`` search of the same k (if faiss-cpu is installed).

The index tables of every run are compared with the single process's (equal / rows
differing: faiss orders tied neighbours its own way).

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/sharded_topk.py
    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/sharded_topk.py --n 50000 \
        --repeats 1

Writes ``benchmarks/results/sharded_topk.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from kreciprocal import machine, synthetic_features  # noqa: E402

RESULTS = HERE / "results" / "sharded_topk.json"
K = 21  # k1 + 1 of the Jaccard distance (k1 = 20)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(mode: str, n: int, k: int, out_idx: str | None) -> None:
    import torch

    cores = os.cpu_count() or 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, cores // world))
    x = synthetic_features(n, seed=0)
    if mode == "faiss":
        import faiss

        faiss.omp_set_num_threads(cores)
        t0 = time.perf_counter()
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        _, idx = index.search(x, k)
        seconds = time.perf_counter() - t0
        res = {"seconds": seconds, "peak_gb": _peak_gb(), "threads": cores}
    else:
        from adaptreid.pseudo.topk import topk_neighbors

        if mode == "dist":
            import torch.distributed as dist

            dist.init_process_group("gloo")
            dist.barrier()
        torch.zeros(1) @ torch.zeros(1)
        t0 = time.perf_counter()
        _, idx = topk_neighbors(x, k, distributed=None)  # shards when world size > 1
        seconds = time.perf_counter() - t0
        res = {"seconds": seconds, "peak_gb": _peak_gb(), "threads": torch.get_num_threads()}
        if mode == "dist":
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, res)
            dist.barrier()
            if dist.get_rank() != 0:
                dist.destroy_process_group()
                return
            res = {
                "seconds": max(r["seconds"] for r in gathered),
                "peak_gb": max(r["peak_gb"] for r in gathered),
                "threads": [r["threads"] for r in gathered],
            }
            dist.destroy_process_group()
    if out_idx:
        np.save(out_idx, idx)
    print(json.dumps(res))


def run(mode: str, world: int, n: int, k: int, out_idx: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    args = [__file__, "--worker", "dist" if world else mode, str(n), str(k)]
    if out_idx:
        args += ["--idx", out_idx]
    if world:
        cores = os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // world))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}"]
        cmd += [f"--master_port={_free_port()}", *args]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return {"error": tail}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12_936)
    ap.add_argument("--k", type=int, default=K)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--idx", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        mode, n, k = args.worker
        worker(mode, int(n), int(k), args.idx)
        return

    try:
        import faiss  # noqa: F401

        has_faiss = True
    except ImportError:
        has_faiss = False
    configs = [("single", 0), ("ranks-1", 1), ("ranks-2", 2)] + [("faiss", 0)] * has_faiss
    results = {"machine": machine(), "runs": {}}
    if args.out.exists():
        results["runs"] = json.loads(args.out.read_text()).get("runs", {})
    entry = {
        "n": args.n,
        "k": args.k,
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": " ".join(["python"] + sys.argv),
        "load_avg_at_start": os.getloadavg(),
    }
    tmp = tempfile.mkdtemp(prefix="sharded-topk-")
    runs: dict[str, list] = {name: [] for name, _ in configs}
    for r in range(args.repeats):  # interleaved: every configuration sees the same load
        for name, world in configs:
            idx = os.path.join(tmp, f"{name}.npy") if r == 0 else None
            res = run(name, world, args.n, args.k, idx)
            print(name, res, flush=True)
            runs[name].append(res)
    ref = np.load(os.path.join(tmp, "single.npy"))
    for name, _ in configs:
        rs = runs[name]
        if any("error" in x for x in rs):
            entry[name] = next(x for x in rs if "error" in x)
            continue
        idx = np.load(os.path.join(tmp, f"{name}.npy"))
        entry[name] = {
            "seconds_median": statistics.median(x["seconds"] for x in rs),
            "seconds_min": min(x["seconds"] for x in rs),
            "seconds_all": [round(x["seconds"], 2) for x in rs],
            "peak_gb": max(x["peak_gb"] for x in rs),
            "threads": rs[0]["threads"],
            "equal_to_single": bool(np.array_equal(idx, ref)),
            "rows_differing": int((idx != ref).any(1).sum()),
        }
    results["runs"][str(args.n)] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(markdown(entry))


def markdown(e: dict) -> str:
    lines = [
        f"N = {e['n']:,}, k = {e['k']}",
        "",
        "| run | threads | median time (s) | min (s) | runs | peak RSS (GB) | "
        "indices == single process |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("single", "ranks-1", "ranks-2", "faiss"):
        r = e.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | |")
            continue
        eq = "yes" if r["equal_to_single"] else f"no ({r['rows_differing']} rows differ)"
        lines.append(
            f"| {name} | {r['threads']} | {r['seconds_median']:.2f} | {r['seconds_min']:.2f} | "
            f"{len(r['seconds_all'])} | {r['peak_gb']:.2f} | {eq} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
