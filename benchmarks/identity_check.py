"""The same seeded run with two versions of the code: are its labels, mAP and weights identical?

    python benchmarks/identity_check.py 59ff95c      # that commit (checked out in a temporary
                                                     # worktree) against this checkout

A refactoring must not change what a run computes. This runs a seeded 2-step real-data MSPLR
adaptation (the Market-1501 source model of ../shared/checkpoints -> PKU-Reid, 3 epochs a
step, fp32) with the code of ``commit`` and with this checkout's, one after the other, and
compares every step's label figures and test metrics (``metrics.jsonl``, times left out), the
last step's pseudo-labels and every tensor of the final model. Exit 0 only if all are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "adapt",
    "--config",
    "msplr/market1501_to_pku_cpu.yaml",
    "-q",
    "adapt.init_checkpoint=../shared/checkpoints/source_market1501_mobilenet_cpu.pt",
    "adapt.max_steps=2",
    "adapt.epochs_per_step=3",
    "train.amp=none",
    "seed=7",
]


def run(code: Path, name: str) -> tuple[Path, float]:
    """Run the adaptation with the package in ``code``; returns its run folder and wall time."""
    shutil.rmtree(ROOT / "runs" / name, ignore_errors=True)  # this script's own folder
    env = {**os.environ, "PYTHONPATH": str(code)}
    where = subprocess.run(
        [sys.executable, "-c", "import adaptreid; print(adaptreid.__file__)"],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"PYTHONPATH={code} imports adaptreid from {where}, not from {code}")
    t0 = time.time()
    subprocess.run(
        [sys.executable, "-m", "adaptreid", *ARGS, f"name={name}", f"output_dir={ROOT / 'runs'}"],
        cwd=code,  # `python -m` imports the package of its working folder first
        env=env,
        check=True,
    )
    return ROOT / "runs" / name, time.time() - t0


def records(folder: Path) -> list[dict]:
    out = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") in ("labels", "step"):
            out.append({k: v for k, v in r.items() if not k.startswith("time")})
    return out


def compare(a: Path, b: Path) -> list[str]:
    """What differs between the two run folders (empty: identical)."""
    diffs = []
    ra, rb = records(a), records(b)
    if len(ra) != len(rb):
        diffs.append(f"{len(ra)} records against {len(rb)}")
    for x, y in zip(ra, rb, strict=False):
        bad = {k: (x.get(k), y.get(k)) for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)}
        if bad:
            diffs.append(f"{x['kind']} {x['step']}: {bad}")
    ca, cb = (torch.load(f / "checkpoints" / "last.pt", map_location="cpu") for f in (a, b))
    ma, mb = ca["model"], cb["model"]
    if ma.keys() != mb.keys() or not all(torch.equal(ma[k], mb[k]) for k in ma):
        diffs.append("final weights differ")
    if not torch.equal(ca["loop"]["labels"], cb["loop"]["labels"]):
        diffs.append("last step's pseudo-labels differ")
    return diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("commit", help="the code to compare with (a commit of this repository)")
    args = p.parse_args()
    # beside this checkout, so that the presets' ../shared paths hold there too
    base = ROOT.parent / f".identity-{args.commit}"
    subprocess.run(
        ["git", "worktree", "add", "-q", "--detach", str(base), args.commit], cwd=ROOT, check=True
    )
    try:
        a, ta = run(base, "identity_before")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    b, tb = run(ROOT, "identity_after")
    diffs = compare(a, b)
    print(f"before ({args.commit}): {ta:.0f} s, after: {tb:.0f} s")
    for r in records(b):
        if r["kind"] == "step":
            print(f"  step {r['step']}: mAP {r.get('mAP', float('nan')):.4f}")
    print(
        "identical: labels of every step, every step's metrics, the final weights"
        if not diffs
        else "\n".join(diffs)
    )
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
