"""Two training processes on one machine (issue 27): throughput alone and side by side.

    flock /tmp/adaptreid-heavy.lock .venv/bin/python benchmarks/shared_machine.py

Each process runs a MobileNetV2 + BNNeck training step loop (triplet + label-smoothed CE, Adam,
fp32) on synthetic ``--height`` x ``--width`` batches, as ``train_throughput.py`` does, for
``--seconds`` after ``--warmup`` steps. Per variant:

* ``today``: torch's default, one intra-op thread per core, OpenMP's default wait policy
  (its threads spin between parallel regions);
* ``passive``: the same threads, ``OMP_WAIT_POLICY=PASSIVE``;
* ``fair``: passive wait and the fair share of :mod:`adaptreid.runtime.threads` (the
  process claims its share and re-checks it every step, as the trainer does);
* ``fair-spin``: the fair share with OpenMP's default wait policy: what adaptreid does (the
  passive wait cost a process alone 24-30% in this benchmark, so the CLI no longer sets it).

"alone" is one process by itself; "side by side" starts two at once, the first running
``--tail`` seconds longer than the second: its rate while both run gives the slowdown (alone
/ side by side; 2x is a fair share of the machine), and its rate after the second ended shows
whether it took the cores back. The processes run no data loader (the real runs' loader
workers add to the contention). Results: printed, and written to
``benchmarks/results/shared_machine.json`` (``--json`` elsewhere).

    --variants today fair --seconds 30 --tail 10     # shorter (about 1 min per variant)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "shared_machine.json"
VARIANTS = ("today", "passive", "fair", "fair-spin")
DEFAULT_VARIANTS = VARIANTS
_CLEARED = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "ADAPTREID_THREADS")


# --------------------------------------------------------------------------------------------
# one process


def worker(args: argparse.Namespace) -> None:
    """The training loop of one process; prints its step end times (monotonic clock, shared
    by the processes of a machine) as JSON on stdout."""
    import contextlib

    import torch

    from adaptreid.losses.reid_loss import ReidLoss
    from adaptreid.models import build_model
    from adaptreid.runtime import threads

    fair = args.variant.startswith("fair")
    share = threads.claim() if fair else contextlib.nullcontext()
    with share:
        torch.manual_seed(0)
        ids = max(1, args.batch // 4)
        x = torch.randn(args.batch, 3, args.height, args.width)
        y = torch.arange(args.batch) // 4
        model = build_model("mobilenet_v2", num_classes=ids)
        crit = ReidLoss(ids, model.feat_dim)
        opt = torch.optim.Adam(list(model.parameters()) + list(crit.parameters()), lr=1e-4)
        model.train()

        def step() -> None:
            threads.refresh()  # a no-op outside a claim (today, passive)
            out = model(x)
            loss, _ = crit(out, {"pid": y})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(args.warmup):
            step()
        t0 = time.monotonic()
        ends, counts = [], []
        while time.monotonic() - t0 < args.seconds:
            step()
            ends.append(time.monotonic())
            counts.append(torch.get_num_threads())
    print(json.dumps({"t0": t0, "ends": ends, "threads": counts, "batch": args.batch}))


# --------------------------------------------------------------------------------------------
# the parent


def _env(variant: str, registry: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["ADAPTREID_THREADS_DIR"] = registry  # this benchmark's processes only
    if variant in ("passive", "fair"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def _launch(args, variant: str, seconds: float, registry: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant]
    cmd += ["--seconds", str(seconds), "--warmup", str(args.warmup), "--batch", str(args.batch)]
    cmd += ["--height", str(args.height), "--width", str(args.width)]
    return subprocess.Popen(
        cmd, env=_env(variant, registry), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _collect(p: subprocess.Popen) -> dict:
    out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"worker failed ({p.returncode}):\n{err}")
    return json.loads(out.strip().splitlines()[-1])


def rate(run: dict, start: float, end: float) -> float | None:
    """Images per second of ``run`` between ``start`` and ``end``: the images of the steps
    that ended inside, counted from the first such end to the last (no partial step), or
    ``None`` with fewer than two step ends inside."""
    ends = [t for t in run["ends"] if start <= t <= end]
    if len(ends) < 2:
        return None
    return run["batch"] * (len(ends) - 1) / (ends[-1] - ends[0])


def _threads_seen(run: dict) -> list[int]:
    return sorted(set(run["threads"]))


def measure(args, variant: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="adaptreid-threads-bench-") as reg:
        alone = _collect(_launch(args, variant, args.seconds, reg))
    with tempfile.TemporaryDirectory(prefix="adaptreid-threads-bench-") as reg:
        first = _launch(args, variant, args.seconds + args.tail, reg)
        second = _launch(args, variant, args.seconds, reg)
        a, b = _collect(first), _collect(second)
    alone_rate = rate(alone, alone["t0"], alone["ends"][-1])
    both_start, both_end = max(a["t0"], b["t0"]), b["ends"][-1]
    a_both, b_both = rate(a, both_start, both_end), rate(b, both_start, both_end)
    a_after = rate(a, both_end, a["ends"][-1]) if args.tail > 0 else None
    res = {
        "alone_img_s": alone_rate,
        "side_by_side_img_s": [a_both, b_both],
        "side_by_side_total_img_s": (a_both or 0) + (b_both or 0),
        "slowdown": (alone_rate / a_both) if alone_rate and a_both else None,
        "first_after_second_ended_img_s": a_after,
        "overlap_s": both_end - both_start,
        "threads_alone": _threads_seen(alone),
        "threads_side_by_side": [_threads_seen(a), _threads_seen(b)],
        "steps": {"alone": len(alone["ends"]), "first": len(a["ends"]), "second": len(b["ends"])},
    }
    return res


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _machine() -> dict:
    import torch

    from adaptreid.runtime.precision import cpu_model

    cpu = cpu_model()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), cpu
        )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_identity": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "parallel": torch.__config__.parallel_info().splitlines()[:6],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    ap.add_argument("--seconds", type=float, default=60, help="timed seconds per process")
    ap.add_argument(
        "--tail", type=float, default=20, help="the first process's extra seconds, side by side"
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--json", default=str(OUT), help="results file ('' none)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="today", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    t_start = time.perf_counter()
    record = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "command": "python benchmarks/shared_machine.py " + " ".join(sys.argv[1:]),
        "machine": _machine(),
        "load_avg_at_start": list(os.getloadavg()),
        "setup": {
            "model": "mobilenet_v2 + BNNeck, triplet + label-smoothed CE, Adam, fp32",
            "input": f"{args.height}x{args.width}",
            "batch": args.batch,
            "seconds": args.seconds,
            "tail": args.tail,
            "warmup_steps": args.warmup,
            "loader": "none (synthetic batch in memory)",
        },
        "variants": {},
    }
    print(
        f"{record['machine']['cpu']}, {record['machine']['cores']} cores, torch "
        f"{record['machine']['torch']}; MobileNetV2 train step, batch {args.batch}, "
        f"{args.height}x{args.width}, {args.seconds:g} s per process"
    )
    for v in args.variants:
        res = record["variants"][v] = measure(args, v)
        a, b = res["side_by_side_img_s"]
        print(
            f"  {v:9s} alone {_fmt(res['alone_img_s'])} img/s; side by side {_fmt(a)} + "
            f"{_fmt(b)} img/s (slowdown x{_fmt(res['slowdown'], '.2f')}); first after the "
            f"second ended {_fmt(res['first_after_second_ended_img_s'])} img/s; threads "
            f"{res['threads_alone']} alone, {res['threads_side_by_side']} side by side",
            flush=True,
        )
    record["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(f"wall time {record['wall_s']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
